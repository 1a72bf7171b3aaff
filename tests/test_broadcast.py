"""Tests for vital_actors.broadcast: encode once, fan out without waiting, evict the slow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import numpy as np
import pytest
import trio
import trio.testing
from trio.testing import MockClock

from protocol import Event, Hello, Priority, ServerMessage, StreamSamples, decode_server
from vital_actors.broadcast import Hub, run_broadcast
from vital_actors.messages import Block, Filtered, Item, Publication
from vital_actors.settings import FilterSettings
from vital_actors.stats import Stats
from vital_actors.streams import StreamRegistry


def unframe(frame: bytes) -> ServerMessage:
    """Decode one unmasked binary server frame (RFC 6455 5.2)."""
    assert frame[0] == 0x82  # FIN, binary
    n, at = frame[1], 2
    if n == 126:
        n, at = int.from_bytes(frame[2:4], "big"), 4
    elif n == 127:
        n, at = int.from_bytes(frame[2:10], "big"), 10
    assert len(frame) == at + n
    return decode_server(frame[at:])


def alert(k: int = 0, topic: str = "alerts") -> Publication:
    return Publication(Event("alert", topic, Priority.CRITICAL,
                             {"stream": "s1", "alert": "flatline", "state": "start", "t": k,
                              "channel": 0}))


def drain(rx: trio.MemoryReceiveChannel[bytes]) -> tuple[list[bytes], bool]:
    """What *rx* holds now, and whether its channel has ended."""
    out = []
    while True:
        try:
            out.append(rx.receive_nowait())
        except trio.WouldBlock:
            return out, False
        except trio.EndOfChannel:
            return out, True


@asynccontextmanager
async def broadcasting(hub: Hub) -> AsyncIterator[trio.MemorySendChannel[Item]]:
    """A running ``run_broadcast`` on *hub*; yields its inbox. Closing it ends the actor."""
    tx, rx = trio.open_memory_channel[Item](1)
    with trio.fail_after(60):  # instant on the autojump clock, if run_broadcast never ends
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_broadcast, rx, hub=hub, filtered_dtype="float32"))
            with tx:
                yield tx


async def test_one_frame_object_goes_to_every_subscriber_encoded_once(
        autojump_clock: MockClock) -> None:
    hub = Hub(capacity=8, stats=Stats())
    subs = [hub.add() for _ in range(3)]
    for sub, _ in subs:
        hub.subscribe(sub, ["alerts"])
    other, other_rx = hub.add()
    hub.subscribe(other, ["streams"])
    message = alert()
    async with broadcasting(hub) as inbox:
        await inbox.send(message)
        await trio.testing.wait_all_tasks_blocked()
        frames = [rx.receive_nowait() for _, rx in subs]
        assert frames[0] is frames[1] is frames[2]
        assert unframe(frames[0]) == message.message
        totals = hub.stats.totals
        assert totals.encoded == 1
        assert (totals.messages_out, totals.bytes_out) == (3, 3 * len(frames[0]))
        assert [sub.sent for sub, _ in subs] == [1, 1, 1]
        assert drain(other_rx) == ([], False)  # not its topic


async def test_topics_without_subscribers_are_not_encoded(autojump_clock: MockClock) -> None:
    hub = Hub(capacity=8, stats=Stats())
    hello = Hello("s1", 360.0, ("MLII", "V1"), "int16", (200.0, 200.0), (1024.0, 1024.0))
    info = StreamRegistry(FilterSettings()).attach(hello)
    raw = np.arange(20, dtype=np.int16).reshape(10, 2)
    filtered = np.linspace(-1, 1, 20).reshape(10, 2)
    item = Filtered(Block(info, 0, 7, 70, raw, 0.0), filtered, filtered, 3)
    async with broadcasting(hub) as inbox:
        await inbox.send(alert(topic="stream/s1/quality"))
        await inbox.send(item)
        await trio.testing.wait_all_tasks_blocked()
        assert hub.stats.totals.encoded == 0

        sub, rx = hub.add()
        hub.subscribe(sub, ["stream/s1/raw"])
        await inbox.send(item)
        await trio.testing.wait_all_tasks_blocked()
        assert hub.stats.totals.encoded == 1  # the raw message only
        (frame,), _ = drain(rx)
        message = unframe(frame)
        assert isinstance(message, StreamSamples)
        assert (message.topic, message.seq, message.t0, message.dtype) == (
            "stream/s1/raw", 7, 70, "int16")
        assert message.data == raw.tobytes()
        assert hub.stats.totals.samples_out == 10

        hub.subscribe(sub, ["stream/s1/filtered"])
        await inbox.send(item)
        await trio.testing.wait_all_tasks_blocked()
        assert hub.stats.totals.encoded == 3
        frames, _ = drain(rx)
        filtered_message = unframe(frames[1])
        assert isinstance(filtered_message, StreamSamples)
        assert filtered_message.topic == "stream/s1/filtered"
        assert filtered_message.extra == {"filter_version": 3}
        np.testing.assert_array_equal(
            np.frombuffer(filtered_message.data, "<f4").reshape(10, 2),
            filtered.astype(np.float32))


async def test_a_full_subscriber_is_evicted_and_the_others_keep_receiving() -> None:
    hub = Hub(capacity=2, stats=Stats())
    slow, slow_rx = hub.add()
    fast, fast_rx = hub.add()
    hub.subscribe(slow, ["alerts"])
    hub.subscribe(fast, ["alerts"])
    fast_got = []
    for k in range(4):
        hub.deliver("alerts", b"frame %d" % k)
        fast_got += drain(fast_rx)[0]
    assert fast_got == [b"frame 0", b"frame 1", b"frame 2", b"frame 3"]
    assert slow.evicted is not None and slow.evicted.startswith("too slow")
    assert fast.evicted is None
    assert hub.stats.totals.evicted_subscribers == 1
    assert hub.subscribers == {fast}
    assert hub.stats.subscribers == 1
    assert (slow.sent, fast.sent) == (2, 4)
    assert drain(slow_rx) == ([b"frame 0", b"frame 1"], True)  # what it held, then the end


async def test_a_subscriber_that_closed_its_end_does_not_break_the_broadcast(
        autojump_clock: MockClock) -> None:
    # Its connection closes its buffer first and leaves the hub a moment later.
    hub = Hub(capacity=8, stats=Stats())
    gone, gone_rx = hub.add()
    live, live_rx = hub.add()
    hub.subscribe(gone, ["alerts"])
    hub.subscribe(live, ["alerts"])
    gone_rx.close()
    message = alert()
    async with broadcasting(hub) as inbox:
        await inbox.send(message)
        await trio.testing.wait_all_tasks_blocked()
        (frame,), _ = drain(live_rx)
        assert unframe(frame) == message.message
        assert gone.evicted is None and hub.stats.totals.messages_out == 1


async def test_run_broadcast_never_waits_for_a_stalled_subscriber(
        autojump_clock: MockClock) -> None:
    hub = Hub(capacity=2, stats=Stats())
    stalled, stalled_rx = hub.add()  # never reads
    fast, fast_rx = hub.add()
    hub.subscribe(stalled, ["alerts"])
    hub.subscribe(fast, ["alerts"])
    received: list[ServerMessage] = []

    async def read_fast() -> None:
        async for frame in fast_rx:
            received.append(unframe(frame))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_fast)
            inbox, inbox_rx = trio.open_memory_channel[Item](1)
            nursery.start_soon(partial(run_broadcast, inbox_rx, hub=hub,
                                       filtered_dtype="float32"))
            with inbox:
                for k in range(10):
                    await inbox.send(alert(k))
                    await trio.testing.wait_all_tasks_blocked()
                    # Back waiting for input: not parked on any subscriber.
                    assert inbox_rx.statistics().tasks_waiting_receive == 1
                    assert stalled.outbox.statistics().tasks_waiting_send == 0
                    assert len(received) == k + 1
                    await trio.sleep(1)
    assert trio.current_time() == pytest.approx(10.0)  # never waited on anyone
    assert [m.body["t"] for m in received if isinstance(m, Event)] == list(range(10))
    frames, ended = drain(stalled_rx)
    assert len(frames) == 2 and ended  # it got messages until it fell behind
    assert stalled.evicted is not None


async def test_closing_the_inbox_ends_every_subscriber_after_its_buffer(
        autojump_clock: MockClock) -> None:
    hub = Hub(capacity=8, stats=Stats())
    subs = [hub.add() for _ in range(2)]
    hub.subscribe(subs[0][0], ["alerts"])
    async with broadcasting(hub) as inbox:
        await inbox.send(alert())
        await trio.testing.wait_all_tasks_blocked()
        assert hub.subscribers == {sub for sub, _ in subs}
        inbox.close()  # run_broadcast returns, so the nursery can exit
    frames, ended = drain(subs[0][1])
    assert len(frames) == 1 and ended
    assert drain(subs[1][1]) == ([], True)
    assert hub.subscribers == set() and hub.stats.subscribers == 0
    assert all(sub.evicted is None for sub, _ in subs)


async def test_unsubscribing_the_last_member_forgets_the_topic() -> None:
    hub = Hub(capacity=8, stats=Stats())
    a, _ = hub.add()
    b, _ = hub.add()
    hub.subscribe(a, ["alerts", "streams"])
    hub.subscribe(b, ["alerts"])
    hub.unsubscribe(a, ["alerts"])
    assert hub.has_subscribers("alerts") and a.topics == {"streams"}
    hub.remove(b)
    assert not hub.has_subscribers("alerts")
    assert hub.has_subscribers("streams")
    assert hub.stats.subscribers == 1
