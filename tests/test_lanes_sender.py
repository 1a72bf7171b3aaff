"""Tests for the subscriber's sender (vital_actors.subscribers): most urgent first, framed
with the connection's codec, error + 1013 on eviction, flush + 1001 on shutdown."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Hashable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock
from wsclient import Client, Closed, open_pair

from protocol import (
    SUBSCRIBE_PATH,
    CloseCode,
    Error,
    Event,
    Priority,
    ServerMessage,
    server_frame,
)
from vital_actors.broadcast import Hub, Subscriber, run_hub_rates
from vital_actors.edge.websocket import WebSocket
from vital_actors.settings import FilterSettings, LaneSettings
from vital_actors.stats import Stats
from vital_actors.streams import StreamRegistry
from vital_actors.subscribers import run_subscriber


@dataclass(slots=True)
class CountingCodec:
    """Plain frames, counting how often it is asked to frame."""

    name: str
    calls: list[bytes] = field(default_factory=list)

    @property
    def key(self) -> Hashable:
        return self.name

    def frame(self, message: ServerMessage, payload: bytes,
              shared: MutableMapping[Hashable, Any] | None = None) -> bytes:
        self.calls.append(payload)
        return server_frame(payload)


def event(priority: Priority, k: int, topic: str = "t") -> Event:
    kind = {Priority.CRITICAL: "alert", Priority.HIGH: "beat"}.get(priority, "status")
    return Event(kind, topic, priority, {"k": k})


@asynccontextmanager
async def serving(hub: Hub, count: int = 1) -> AsyncIterator[list[tuple[WebSocket, Client,
                                                                       Subscriber]]]:
    """*count* subscriber connections served by ``run_subscriber``, each on topic "t"."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            out: list[tuple[WebSocket, Client, Subscriber]] = []
            for _ in range(count):
                ws, client = await open_pair(path=SUBSCRIBE_PATH)
                nursery.start_soon(partial(run_subscriber, ws, hub=hub, stats=hub.stats,
                                           registry=StreamRegistry(FilterSettings())))
                await trio.testing.wait_all_tasks_blocked()
                (sub,) = hub.subscribers - {s for _, _, s in out}
                hub.subscribe(sub, ["t"])
                out.append((ws, client, sub))
            yield out


def make_hub() -> Hub:
    return Hub(buffer=100, settings=LaneSettings(), stats=Stats(), rng=random.Random(1))


async def test_the_sender_writes_the_most_urgent_first_framed_once_per_codec(
        autojump_clock: MockClock) -> None:
    hub = make_hub()
    codec = CountingCodec("counting")
    async with serving(hub, 2) as conns:
        for ws, _, _ in conns:
            ws.codec = codec  # both connections negotiated the same codec
        for k, p in enumerate([Priority.BULK, Priority.LOW, Priority.NORMAL, Priority.HIGH,
                               Priority.CRITICAL]):
            hub.publish(event(p, k))  # all waiting before the senders run
        for _, client, _ in conns:
            got = [await client.receive() for _ in range(5)]
            assert [m.priority for m in got if isinstance(m, Event)] == [
                Priority.CRITICAL, Priority.HIGH, Priority.NORMAL, Priority.LOW, Priority.BULK]
        assert len(codec.calls) == 5  # five messages, two connections: framed once each
        totals = hub.stats.totals
        assert (totals.encoded, totals.messages_out) == (5, 10)
        assert totals.bytes_out == 2 * sum(len(server_frame(p)) for p in codec.calls)
        for _, _, sub in conns:
            assert sub.lanes.counts.sent == [1, 1, 1, 1, 1]
        hub.close_all()


async def test_what_waits_goes_out_in_one_write(autojump_clock: MockClock) -> None:
    hub = make_hub()
    async with serving(hub) as [(ws, client, _)]:
        writes: list[int] = []
        send_all = ws.stream.send_all

        async def counting(data: bytes | bytearray | memoryview) -> None:
            writes.append(len(data))
            await send_all(data)

        ws.stream.send_all = counting  # type: ignore[method-assign]
        for k in range(10):
            hub.publish(event(Priority.HIGH, k))  # all waiting before the sender runs
        got = [await client.receive() for _ in range(10)]
        assert [m.body["k"] for m in got if isinstance(m, Event)] == list(range(10))
        assert len(writes) == 1  # ten messages, one socket write
        assert hub.stats.totals.messages_out == 10
        hub.close_all()


async def test_a_busy_subscriber_lingers_so_one_write_carries_several_messages(
        autojump_clock: MockClock) -> None:
    """Over 200 messages/s (a wall on every stream): the sender waits 2 ms after the
    message that woke it, so writes carry several; a quiet one, and CRITICAL, do not wait."""
    hub = make_hub()
    async with serving(hub) as [(ws, client, _)], trio.open_nursery() as nursery:
        writes: list[float] = []
        send_all = ws.stream.send_all

        async def counting(data: bytes | bytearray | memoryview) -> None:
            writes.append(trio.current_time())
            await send_all(data)

        ws.stream.send_all = counting  # type: ignore[method-assign]
        got: list[ServerMessage | Closed] = []

        async def read() -> None:
            while True:
                got.append(await client.receive())

        nursery.start_soon(read)
        await nursery.start(partial(run_hub_rates, hub, interval=1.0))  # as the server
        start = trio.current_time()
        for k in range(2000):  # 1 kHz for two seconds
            await trio.sleep_until(start + k / 1000)
            hub.publish(event(Priority.HIGH, k))
        await trio.sleep(0.1)
        first = sum(1 for t in writes if t < start + 1)
        second = sum(1 for t in writes if start + 1 <= t < start + 2)
        assert first >= 950  # not busy before: a write per message
        assert second <= 500  # busy: a write per 2 ms at most, 2+ messages each
        assert [m.body["k"] for m in got if isinstance(m, Event)] == list(range(2000))
        before = len(writes)
        now = trio.current_time()
        hub.publish(event(Priority.CRITICAL, -1))
        await trio.testing.wait_all_tasks_blocked()
        assert len(writes) == before + 1 and trio.current_time() == now  # no wait
        nursery.cancel_scope.cancel()
        hub.close_all()


async def test_an_evicted_subscriber_gets_the_error_and_1013_not_the_stale_messages(
        autojump_clock: MockClock) -> None:
    hub = make_hub()  # CRITICAL lane: 30
    async with serving(hub) as [(_, client, sub)]:
        for k in range(31):
            hub.publish(event(Priority.CRITICAL, k))
        assert sub.evicted is not None
        reply = await client.receive()
        assert isinstance(reply, Error) and reply.code == "too-slow"
        assert "30 critical messages waiting" in reply.message
        closed = await client.receive()
        assert isinstance(closed, Closed) and closed.code == CloseCode.TRY_AGAIN_LATER
    assert hub.subscribers == set() and hub.stats.totals.evicted_subscribers == 1
    assert sub.lanes.counts.sent[0] == 0 and sub.lanes.counts.queued[0] == 30


async def test_shutdown_flushes_what_waits_then_closes_with_1001(
        autojump_clock: MockClock) -> None:
    hub = make_hub()
    async with serving(hub) as [(_, client, _)]:
        for k in range(3):
            hub.publish(event(Priority.NORMAL, k))
        hub.close_all()
        got = [await client.receive() for _ in range(4)]
        assert [m.body["k"] for m in got[:3] if isinstance(m, Event)] == [0, 1, 2]
        assert got[3] == Closed(CloseCode.GOING_AWAY, "server shutting down")
    assert hub.subscribers == set()


async def test_a_subscriber_that_leaves_is_forgotten_with_its_counters_kept(
        autojump_clock: MockClock) -> None:
    hub = make_hub()
    async with serving(hub) as [(_, client, sub)]:
        hub.publish(event(Priority.HIGH, 0))
        assert isinstance(await client.receive(), Event)
        assert await client.close() == Closed(CloseCode.NORMAL)
    assert hub.subscribers == set() and not hub.has_subscribers("t")
    assert hub.totals().sent == [0, 1, 0, 0, 0]
    with pytest.raises(trio.EndOfChannel):
        sub.lanes.take_nowait()
