"""take_batch: what is waiting goes as one batch; lingering lets more join it."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from protocol import Event, Priority
from vital_actors.messages import Item, Publication, take_batch


def item(k: int) -> Publication:
    return Publication(Event("status", "streams", Priority.NORMAL, {"k": k}))


async def test_what_waits_is_one_batch_up_to_the_limit() -> None:
    tx, rx = trio.open_memory_channel[Item](10)
    for k in range(5):
        tx.send_nowait(item(k))
    assert len(await take_batch(rx, max_batch=3)) == 3
    assert len(await take_batch(rx, max_batch=3)) == 2


async def test_lingering_lets_later_items_join(autojump_clock: trio.testing.MockClock
                                               ) -> None:
    tx, rx = trio.open_memory_channel[Item](10)

    async def trickle() -> None:
        for k in range(4):
            tx.send_nowait(item(k))
            await trio.sleep(0.001)  # one every millisecond

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        await trio.testing.wait_all_tasks_blocked()
        alone = await take_batch(rx, max_batch=10)  # no lingering: the first one alone
        lingered = await take_batch(rx, max_batch=10, linger=0.005)
    assert len(alone) == 1 and len(lingered) == 3


async def test_a_closed_empty_inbox_ends() -> None:
    tx, rx = trio.open_memory_channel[Item](1)
    tx.close()
    with pytest.raises(trio.EndOfChannel):
        await take_batch(rx, max_batch=4, linger=0.01)
