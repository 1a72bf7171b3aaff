"""Topic history in Redis Streams (the bus's ``History`` source): what a node records,
another reads back, exactly, or knows that it cannot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from redisserver import Redis, redis_server
from test_bus import node, pytestmark

import protocol as P
from vital_actors.bus import RedisBus
from vital_actors.edge.codecs import Outgoing

__all__ = ["pytestmark"]  # test_bus's warning filters apply here too

TOPIC = "stream/bed1/quality"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    yield from redis_server(tmp_path)


def _event(offset: int) -> Outgoing:
    body = {"sqi": offset / 100, "epoch": "e1", "offset": offset}
    return Outgoing.of(P.Event("quality", TOPIC, P.Priority.NORMAL, body), P.Priority.NORMAL)


async def _record(bus: RedisBus, offsets: range, *, first_prev: int | None) -> list[Outgoing]:
    outs = []
    prev: int | None = first_prev
    for offset in offsets:
        out = _event(offset)
        bus.record(TOPIC, out, epoch="e1", offset=offset, prev=prev, publish=False)
        outs.append(out)
        prev = offset
    with trio.fail_after(10):
        await bus.flushed()
    return outs


async def test_another_node_reads_back_exactly_what_was_missed(
        redis: Redis, nursery: trio.Nursery) -> None:
    async with node(redis, "a", nursery) as a, node(redis, "b", nursery) as b:
        assert a.bus is not None and b.bus is not None
        sent = await _record(a.bus, range(10), first_prev=None)
        history = b.bus.history
        assert await history.covers(TOPIC, "e1", 3)
        got = await history.read(TOPIC, "e1", 3, 9, 100)
        assert [o for o, _ in got] == list(range(4, 10))
        assert [out.payload for _, out in got] == [out.payload for out in sent[4:]]
        assert [o for o, _ in await history.read(TOPIC, "e1", 3, 6, 2)] == [4, 5]
        assert await history.head(TOPIC, "e1") == 9
        # Nothing is known before the first message recorded, nor in another epoch.
        assert not await history.covers(TOPIC, "e1", -1)
        assert not await history.covers(TOPIC, "e2", 3)
        # The producer stopped recording and started again (prev unknown): a break.
        await _record(a.bus, range(20, 25), first_prev=None)
        assert not await history.covers(TOPIC, "e1", 9)
        assert [o for o, _ in await history.read(TOPIC, "e1", 7, 30, 100)] == [8, 9]
        assert await history.read(TOPIC, "e1", 9, 30, 100) == []
        assert [o for o, _ in await history.read(TOPIC, "e1", 21, 30, 100)] == [22, 23, 24]


async def test_history_is_bounded_and_what_was_trimmed_is_not_covered(
        redis: Redis, nursery: trio.Nursery) -> None:
    async with node(redis, "a", nursery, bus={"history_maxlen": 10}) as a:
        assert a.bus is not None
        await _record(a.bus, range(2000), first_prev=None)
        assert a.bus.counters.recorded == 2000
        history = a.bus.history
        assert not await history.covers(TOPIC, "e1", 0)  # trimmed (in whole macro nodes)
        assert await history.covers(TOPIC, "e1", 1990)
        got = await history.read(TOPIC, "e1", 1990, 1999, 100)
        assert [o for o, _ in got] == list(range(1991, 2000))
