"""Ingest when the archive fails while a device says hello: the device is closed with
1013 ``storage-unavailable`` (not 1011, as a bug would be) and resumes after what is on
disk."""

from __future__ import annotations

from functools import partial

import trio
import trio.testing
from trio.testing import MockClock
from wsclient import Closed, open_pair

from protocol import CloseCode, Error, Hello, Samples, Welcome
from vital_actors.archive import Append, ArchiveItem, Close
from vital_actors.ingest import STORAGE_REASON, run_ingest
from vital_actors.messages import Item
from vital_actors.settings import FilterSettings
from vital_actors.stats import Stats
from vital_actors.streams import StreamRegistry


def _hello(resume: int | None = None) -> Hello:
    return Hello("dev", 250.0, ("I",), "int16", (200.0,), (0.0,), resume=resume)


async def test_an_archive_failure_while_a_resumed_hello_waits_closes_1013(
        autojump_clock: MockClock) -> None:
    registry, stats = StreamRegistry(FilterSettings()), Stats()
    arch_tx, arch_rx = trio.open_memory_channel[ArchiveItem](64)
    pipe_tx, pipe_rx = trio.open_memory_channel[Item](64)
    with trio.fail_after(60), arch_tx, pipe_tx, arch_rx, pipe_rx:
        async with trio.open_nursery() as nursery:
            serve = partial(run_ingest, registry=registry, stats=stats)
            # A first connection sends two frames, still on their way to disk when it goes.
            ws, first = await open_pair()
            nursery.start_soon(partial(serve, ws, pipe_tx.clone(), archive=arch_tx.clone()))
            await first.send(_hello())
            assert await first.receive() == Welcome("dev", 0)
            appends = []
            for seq in (0, 1):
                await first.send(Samples(seq, 1, b"\x01\x00"))
                append = await arch_rx.receive()
                assert isinstance(append, Append)
                appends.append(append)
            await first.close()
            assert isinstance(await arch_rx.receive(), Close)
            # The device is back at once: its hello waits for those frames to be durable,
            # and the disk fills up meanwhile.
            ws, second = await open_pair()
            nursery.start_soon(partial(serve, ws, pipe_tx.clone(), archive=arch_tx.clone()))
            await second.send(_hello(resume=1))
            await trio.testing.wait_all_tasks_blocked()
            appends[0].durable.fail("No space left on device", -1, 0)
            error = await second.receive()
            assert isinstance(error, Error) and error.code == STORAGE_REASON, error
            closed = await second.receive()
            assert isinstance(closed, Closed), closed
            assert closed.code == CloseCode.TRY_AGAIN_LATER
    assert stats.totals.rejected == {STORAGE_REASON: 1}
    info = registry.get("dev")
    assert info is not None and not info.connected
    assert info.next_seq == 0  # the device resumes after what is on disk: nothing


async def test_a_device_whose_archive_is_gone_when_it_leaves_ends_cleanly(
        autojump_clock: MockClock) -> None:
    # A server cancelled whole: its archive writer has ended (its channel is broken)
    # by the time a device's connection finishes. That is no bug (no 1011, nothing
    # logged as one): the device leaves, disconnected.
    registry, stats = StreamRegistry(FilterSettings()), Stats()
    arch_tx, arch_rx = trio.open_memory_channel[ArchiveItem](64)
    pipe_tx, pipe_rx = trio.open_memory_channel[Item](64)
    with trio.fail_after(60), arch_tx, pipe_tx, pipe_rx:
        ws, device = await open_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(run_ingest, ws, pipe_tx.clone(), registry=registry,
                                       stats=stats, archive=arch_tx.clone()))
            await device.send(_hello())
            assert await device.receive() == Welcome("dev", 0)
            arch_rx.close()  # the writer is gone
            await device.close()
    assert stats.totals.rejected == {}
    info = registry.get("dev")
    assert info is not None and not info.connected
