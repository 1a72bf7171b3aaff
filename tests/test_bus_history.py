"""Topic history in Redis Streams (the bus's ``History`` source): what a node records,
another reads back, exactly, or knows that it cannot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from redisserver import Redis, redis_server
from test_bus import frame, hello, node, pytestmark, samples, subscribe, url

import protocol as P
from vital_actors.bus import RedisBus
from vital_actors.clients import connect, receive
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


async def test_a_subscriber_cut_from_one_node_recovers_on_another_exactly(
        redis: Redis, nursery: trio.Nursery) -> None:
    """The device is on p; the subscriber was on a; it comes back on b with ``since``."""
    topic = "stream/bed1/raw"
    async with node(redis, "p", nursery) as p, node(redis, "a", nursery) as a, \
            node(redis, "b", nursery) as b, connect(url(p), P.INGEST_PATH) as dev:
        assert isinstance(await hello(dev), P.Welcome)
        async with connect(url(a), P.SUBSCRIBE_PATH) as sub:
            await subscribe(sub, topic, seen_by=p)
            for seq in range(5):
                await dev.send_message(frame(seq))
            seen = await samples(sub, 5)
        since = P.position(seen[-1])
        assert since is not None and since[1] == 4
        for seq in range(5, 10):  # missed: a keeps the topic for its subscriber's return
            await dev.send_message(frame(seq))
        assert p.bus is not None and b.bus is not None
        with trio.fail_after(10):
            await p.bus.recorded(10)
        async with connect(url(b), P.SUBSCRIBE_PATH) as sub:
            await sub.send_message(P.encode(P.Subscribe((topic,), {topic: since})))
            with trio.fail_after(10):
                while not isinstance(m := await receive(sub), P.Event) or \
                        m.topic != "subscriptions":
                    pass
            assert m.body["recovered"] == {topic: True}
            replayed = await samples(sub, 5)
            for seq in range(10, 13):
                await dev.send_message(frame(seq))
            live = await samples(sub, 3)
    assert [m.seq for m in replayed + live] == list(range(5, 13))


async def test_a_subscriber_cut_from_the_producing_node_recovers_on_another_exactly(
        redis: Redis, nursery: trio.Nursery) -> None:
    """No other node wanted the topic, so its producer publishes it only once it learns
    that the new node does: what it produced meanwhile is neither lost nor doubled."""
    topic = "stream/bed1/raw"
    async with node(redis, "p", nursery) as p, node(redis, "b", nursery) as b, \
            connect(url(p), P.INGEST_PATH) as dev:
        assert isinstance(await hello(dev), P.Welcome)
        async with connect(url(p), P.SUBSCRIBE_PATH) as sub:
            await subscribe(sub, topic)
            for seq in range(5):
                await dev.send_message(frame(seq))
            since = P.position((await samples(sub, 5))[-1])
        for seq in range(5, 10):  # missed; p keeps the topic in its ring and records it
            await dev.send_message(frame(seq))
        assert p.bus is not None and since is not None
        with trio.fail_after(10):
            await p.bus.recorded(10)
        async with connect(url(b), P.SUBSCRIBE_PATH) as sub:
            await sub.send_message(P.encode(P.Subscribe((topic,), {topic: since})))
            for seq in range(10, 15):  # at once: p may not know yet that b wants them
                await dev.send_message(frame(seq))
            with trio.fail_after(10):
                while not isinstance(m := await receive(sub), P.Event) or \
                        m.topic != "subscriptions":
                    pass
            assert m.body["recovered"] == {topic: True}
            # Frames 10-14 may be recorded by p before it learns that b wants the
            # topic (then they are not published): b takes them from the stream when
            # a later frame arrives live, before that frame.
            got: list[P.StreamSamples] = []
            seq = 15
            with trio.fail_after(10):
                while not got or got[-1].seq < 15:
                    with trio.move_on_after(0.2):
                        while True:
                            got += await samples(sub, 1)
                    await dev.send_message(frame(seq))
                    seq += 1
    assert [m.seq for m in got] == list(range(5, 5 + len(got)))
    assert b.bus is not None and b.bus.counters.received >= 1


async def test_without_history_topics_go_live_only(redis: Redis,
                                                   nursery: trio.Nursery) -> None:
    async with node(redis, "p", nursery, bus={"history": False}) as p, \
            node(redis, "b", nursery) as b, connect(url(b), P.SUBSCRIBE_PATH) as sub, \
            connect(url(p), P.INGEST_PATH) as dev:
        await subscribe(sub, "stream/bed1/raw", seen_by=p)
        assert isinstance(await hello(dev), P.Welcome)
        for seq in range(3):
            await dev.send_message(frame(seq))
        assert [m.seq for m in await samples(sub, 3)] == [0, 1, 2]
        assert p.bus is not None and p.bus.counters.recorded == 0
