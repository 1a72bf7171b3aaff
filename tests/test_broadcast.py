"""Tests for vital_actors.broadcast: encode once, fan out without waiting, evict the
hopelessly behind."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import numpy as np
import pytest
import trio
import trio.testing
from trio.testing import MockClock

from protocol import Event, Hello, Priority, ServerMessage, StreamSamples, decode_server, position
from vital_actors.broadcast import Hub, run_broadcast, run_hub_rates
from vital_actors.edge.codecs import PLAIN, Outgoing
from vital_actors.history import stamp
from vital_actors.lanes import Lanes
from vital_actors.messages import Block, Filtered, Item, Publication
from vital_actors.settings import FilterSettings, LaneSettings
from vital_actors.stats import Stats
from vital_actors.streams import StreamRegistry


def make_hub(buffer: int = 100) -> Hub:
    """Lanes of (30, 40, 20, 8, 2) messages for the default buffer of 100."""
    return Hub(buffer=buffer, settings=LaneSettings(), stats=Stats(), rng=random.Random(7))


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


def drain(lanes: Lanes) -> tuple[list[Outgoing], bool]:
    """What *lanes* hold now (most urgent first), and whether they have ended."""
    out = []
    while True:
        try:
            out.append(lanes.take_nowait())
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



async def test_one_message_object_goes_to_every_subscriber_encoded_once(
        autojump_clock: MockClock) -> None:
    hub = make_hub()
    subs = [hub.add() for _ in range(3)]
    for sub in subs:
        hub.subscribe(sub, ["alerts"])
    other = hub.add()
    hub.subscribe(other, ["streams"])
    message = alert()
    async with broadcasting(hub) as inbox:
        await inbox.send(message)
        await trio.testing.wait_all_tasks_blocked()
        outs = [sub.lanes.take_nowait() for sub in subs]
        assert outs[0] is outs[1] is outs[2]
        assert outs[0].priority is Priority.CRITICAL
        assert outs[0].frame_for(PLAIN) is outs[1].frame_for(PLAIN)  # framed once
        got = unframe(outs[0].frame_for(PLAIN))
        assert isinstance(got, Event) and isinstance(message.message, Event)
        assert {k: v for k, v in got.body.items() if k not in ("epoch", "offset")} == \
            message.message.body  # the message, with its position on the topic (issue 6)
        assert position(got) == (hub.ring.logs["alerts"].epoch, 0)
        assert hub.stats.totals.encoded == 1
        assert [sub.lanes.counts.queued for sub in subs] == [[1, 0, 0, 0, 0]] * 3
        assert drain(other.lanes) == ([], False)  # not its topic


async def test_topics_without_subscribers_are_not_encoded(autojump_clock: MockClock) -> None:
    hub = make_hub()
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

        sub = hub.add()
        hub.subscribe(sub, ["stream/s1/raw"])
        await inbox.send(item)
        await trio.testing.wait_all_tasks_blocked()
        assert hub.stats.totals.encoded == 1  # the raw message only
        (out,), _ = drain(sub.lanes)
        message = unframe(out.frame_for(PLAIN))
        assert isinstance(message, StreamSamples)
        assert out.priority is Priority.HIGH
        assert (message.topic, message.seq, message.t0, message.dtype) == (
            "stream/s1/raw", 7, 70, "int16")
        assert message.data == raw.tobytes()

        hub.subscribe(sub, ["stream/s1/filtered"])
        await inbox.send(item)
        await trio.testing.wait_all_tasks_blocked()
        assert hub.stats.totals.encoded == 3
        outs, _ = drain(sub.lanes)
        filtered_message = unframe(outs[1].frame_for(PLAIN))
        assert isinstance(filtered_message, StreamSamples)
        assert filtered_message.topic == "stream/s1/filtered"
        assert filtered_message.extra == {"filter_version": 3, "epoch": hub.stream_epoch(0),
                                          "offset": 7}  # positioned by its frame's seq
        np.testing.assert_array_equal(
            np.frombuffer(filtered_message.data, "<f4").reshape(10, 2),
            filtered.astype(np.float32))


async def test_a_subscriber_whose_critical_lane_is_full_is_evicted_the_others_keep_all(
        ) -> None:
    hub = make_hub(10)  # lanes (3, 4, 2, 1, 1)
    slow, fast = hub.add(), hub.add()
    hub.subscribe(slow, ["alerts"])
    hub.subscribe(fast, ["alerts"])
    fast_got = []
    for k in range(5):
        hub.publish(alert(k).message)
        fast_got += [out.message for out in drain(fast.lanes)[0]]
    assert [m.body["t"] for m in fast_got if isinstance(m, Event)] == [0, 1, 2, 3, 4]
    assert slow.evicted is not None and slow.evicted.startswith("too slow")
    assert fast.evicted is None
    assert hub.stats.totals.evicted_subscribers == 1
    assert not slow.topics and hub.subscribers == {slow, fast}  # until its connection ends
    assert slow.lanes.counts.queued[0] == 3 and slow.lanes.counts.dropped[0] == 0
    assert drain(slow.lanes) == ([], True)  # stale now: its sender sends the error at once
    hub.remove(slow)
    assert hub.subscribers == {fast} and hub.stats.subscribers == 1
    assert hub.totals().queued[0] == 3 + 5  # the departed one's counters are kept


async def test_a_full_high_lane_drops_high_messages_without_evicting() -> None:
    hub = make_hub(10)
    sub = hub.add()
    hub.subscribe(sub, ["stream/s1/raw"])
    samples = StreamSamples("stream/s1/raw", "s1", 0, 0, 360.0, ("MLII",), "int16",
                            (200.0,), (0.0,), b"\0\0")
    for _ in range(6):
        hub.publish(samples)
    assert sub.evicted is None
    assert (sub.lanes.counts.queued[1], sub.lanes.counts.dropped[1]) == (4, 2)
    assert sub.lanes._rx[1].statistics().current_buffer_used == 4


async def test_a_subscriber_that_closed_its_end_does_not_break_the_broadcast(
        autojump_clock: MockClock) -> None:
    # Its connection stops receiving first and leaves the hub a moment later.
    hub = make_hub()
    gone, live = hub.add(), hub.add()
    hub.subscribe(gone, ["alerts"])
    hub.subscribe(live, ["alerts"])
    gone.lanes.close_receiving()
    message = alert()
    async with broadcasting(hub) as inbox:
        await inbox.send(message)
        await trio.testing.wait_all_tasks_blocked()
        (out,), _ = drain(live.lanes)
        assert out.message == stamp(message.message, hub.ring.logs["alerts"].epoch or "", 0)
        assert gone.evicted is None and hub.stats.totals.evicted_subscribers == 0


async def test_run_broadcast_never_waits_for_a_stalled_subscriber(
        autojump_clock: MockClock) -> None:
    hub = make_hub(10)
    stalled, fast = hub.add(), hub.add()  # stalled never takes
    hub.subscribe(stalled, ["alerts"])
    hub.subscribe(fast, ["alerts"])
    received: list[ServerMessage] = []

    async def read_fast() -> None:
        while True:
            received.append((await fast.lanes.take()).message)

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
                    assert len(received) == k + 1
                    await trio.sleep(1)
            nursery.cancel_scope.cancel()
    assert trio.current_time() == pytest.approx(10.0)  # never waited on anyone
    assert [m.body["t"] for m in received if isinstance(m, Event)] == list(range(10))
    assert stalled.lanes.counts.queued[0] == 3  # it got messages until it fell behind
    assert stalled.evicted is not None


async def test_closing_the_inbox_ends_every_subscriber_after_its_lanes(
        autojump_clock: MockClock) -> None:
    hub = make_hub()
    subs = [hub.add() for _ in range(2)]
    hub.subscribe(subs[0], ["alerts"])
    async with broadcasting(hub) as inbox:
        await inbox.send(alert())
        await trio.testing.wait_all_tasks_blocked()
        inbox.close()  # run_broadcast returns, so the nursery can exit
    outs, ended = drain(subs[0].lanes)
    assert len(outs) == 1 and ended
    assert drain(subs[1].lanes) == ([], True)
    assert all(sub.evicted is None for sub in subs)


async def test_a_message_that_does_not_encode_is_dropped_alone(
        autojump_clock: MockClock, caplog: pytest.LogCaptureFixture) -> None:
    """A bug upstream (a body msgpack cannot encode) loses that message, logged; the
    broadcaster, and every message after it, go on."""
    hub = make_hub()
    sub = hub.add()
    hub.subscribe(sub, ["alerts"])
    broken = Publication(Event("alert", "alerts", Priority.CRITICAL, {"t": object()}))
    async with broadcasting(hub) as inbox:
        for item in (alert(1), broken, alert(2)):
            await inbox.send(item)
        await trio.testing.wait_all_tasks_blocked()
        inbox.close()
    outs, ended = drain(sub.lanes)
    assert [o.message.body["t"] for o in outs if isinstance(o.message, Event)] == [1, 2]
    assert ended and "could not publish" in caplog.text


async def test_unsubscribing_the_last_member_forgets_the_topic() -> None:
    hub = make_hub()
    a, b = hub.add(), hub.add()
    hub.subscribe(a, ["alerts", "streams"])
    hub.subscribe(b, ["alerts"])
    hub.unsubscribe(a, ["alerts"])
    assert hub.has_subscribers("alerts") and a.topics == {"streams"}
    hub.remove(b)
    assert not hub.has_subscribers("alerts")
    assert hub.has_subscribers("streams")
    assert hub.stats.subscribers == 1


async def test_run_hub_rates_sets_each_subscribers_messages_per_second(
        autojump_clock: MockClock) -> None:
    hub = make_hub()
    busy, idle = hub.add(), hub.add()
    hub.subscribe(busy, ["alerts"])
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_hub_rates, hub, interval=2.0))
        for k in range(10):
            hub.publish(alert(k).message)
            busy.lanes.mark_sent(busy.lanes.take_nowait())
        await trio.sleep(2.5)
        assert (busy.rate, idle.rate) == (5.0, 0.0)  # 10 messages in 2 s
        await trio.sleep(2)
        assert busy.rate == 0.0  # nothing in the last interval
        nursery.cancel_scope.cancel()
