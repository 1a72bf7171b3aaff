"""The Redis bus: two nodes that share nothing but a real redis-server on loopback.

Each test starts its own redis-server (Debian's package, installed by .ci/run) on a free
port. Outside CI the tests skip without it; under CI=true they fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from redisserver import Redis, redis_server
from trio_websocket import WebSocketConnection

import protocol as P
from vital_actors.clients import connect, receive
from vital_actors.graph import Server
from vital_actors.settings import load_settings


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    yield from redis_server(tmp_path)


# coredis (on anyio) leaves some of its internal memory streams to the garbage collector
# when a connection is dropped or cancelled; that is its business, not a failure here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning"),
    pytest.mark.filterwarnings("ignore:Exception ignored in. <function MemoryObject"
                               ":pytest.PytestUnraisableExceptionWarning"),
]

HELLO = P.Hello("bed1", 360.0, ("MLII", "V1"), "int16", (200.0, 200.0), (1024.0, 1024.0))


@asynccontextmanager
async def node(redis: Redis, name: str, nursery: trio.Nursery, **sections: Any
               ) -> AsyncIterator[Server]:
    """A whole server on the bus, with *sections* of settings besides its own."""
    bus = {"url": redis.url, "node": name, "lease_s": 1.0, "retry_s": 0.1,
           "interest_s": 0.1, "job_poll_s": 0.05, **sections.pop("bus", {})}
    srv = Server(load_settings(server={"port": 0}, archive={"enabled": False}, bus=bus,
                               **sections))
    await nursery.start(srv.run)
    try:
        yield srv
    finally:
        srv.shutdown()


def url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def subscribe(ws: WebSocketConnection, *topics: str, seen_by: Server | None = None
                    ) -> None:
    """Subscribe; with *seen_by*, also wait until that (other) node knows of it."""
    await ws.send_message(P.encode(P.Subscribe(topics)))
    while not isinstance(msg := await receive(ws), P.Event) or msg.topic != "subscriptions":
        pass
    if seen_by is not None:
        assert seen_by.bus is not None
        with trio.fail_after(5):
            for topic in topics:
                await seen_by.bus.learned(topic)


async def hello(ws: WebSocketConnection, h: P.Hello = HELLO) -> P.ServerMessage:
    await ws.send_message(P.encode(h))
    return await receive(ws)


def frame(seq: int, n: int = 36) -> bytes:
    return P.encode(P.Samples(seq, n, bytes(n * 2 * 2)))


async def samples(ws: WebSocketConnection, count: int) -> list[P.StreamSamples]:
    got: list[P.StreamSamples] = []
    with trio.fail_after(10):
        while len(got) < count:
            msg = await receive(ws)
            if isinstance(msg, P.StreamSamples):
                got.append(msg)
    return got


async def test_a_subscriber_on_one_node_receives_a_device_on_another(
        redis: Redis, nursery: trio.Nursery) -> None:
    async with node(redis, "a", nursery) as a, node(redis, "b", nursery) as b, \
            connect(url(b), P.SUBSCRIBE_PATH) as sub, connect(url(a), P.INGEST_PATH) as dev:
            await subscribe(sub, "stream/bed1/raw", seen_by=a)
            assert isinstance(await hello(dev), P.Welcome)
            for seq in range(5):
                await dev.send_message(frame(seq))
            got = await samples(sub, 5)
    assert [m.seq for m in got] == [0, 1, 2, 3, 4]
    assert a.bus is not None and b.bus is not None
    assert a.bus.counters.published >= 5 and b.bus.counters.received >= 5


async def test_a_device_that_connects_elsewhere_just_after_a_subscribe_loses_no_frame(
        redis: Redis, nursery: trio.Nursery) -> None:
    # Interest rounds 60 s apart: only advertising a new topic at once (on b) and
    # learning it when a device's stream is claimed (on a) get frame 0 to b.
    slow = {"bus": {"interest_s": 60.0}}
    async with node(redis, "a", nursery, **slow) as a, node(redis, "b", nursery, **slow) as b, \
            connect(url(b), P.SUBSCRIBE_PATH) as sub, connect(url(a), P.INGEST_PATH) as dev:
        assert a.bus is not None and b.bus is not None
        await subscribe(sub, "stream/bed1/raw")
        with trio.fail_after(5):
            await b.bus.advertised("stream/bed1/raw")
        assert isinstance(await hello(dev), P.Welcome)
        for seq in range(3):
            await dev.send_message(frame(seq))
        got = await samples(sub, 3)
    assert [m.seq for m in got] == [0, 1, 2]


async def test_a_stream_belongs_to_one_node_at_a_time(redis: Redis,
                                                      nursery: trio.Nursery) -> None:
    async with node(redis, "a", nursery) as a, node(redis, "b", nursery) as b:
        async with connect(url(a), P.INGEST_PATH) as first:
            assert isinstance(await hello(first), P.Welcome)
            async with connect(url(b), P.INGEST_PATH) as second:
                refused = await hello(second)
                assert isinstance(refused, P.Error) and refused.code == "stream-busy"
        # The first device left cleanly: once its node has released the lease, the
        # stream may move to b at once (no waiting for the lease to expire).
        assert a.bus is not None
        with trio.fail_after(5):
            await a.bus.released("bed1")
        async with connect(url(b), P.INGEST_PATH) as again:
            assert isinstance(await hello(again), P.Welcome)


def _fields(h: P.Hello) -> dict[str, object]:
    return {k: getattr(h, k) for k in h.__slots__}


async def test_a_device_moves_to_another_node_and_resumes_its_numbering(
        redis: Redis, nursery: trio.Nursery) -> None:
    async with node(redis, "a", nursery) as a, node(redis, "b", nursery) as b:
        async with connect(url(a), P.INGEST_PATH) as dev:
            assert isinstance(await hello(dev), P.Welcome)
            for seq in range(3):
                await dev.send_message(frame(seq))
            with trio.fail_after(5):
                while not isinstance(m := await receive(dev), P.Ack) or m.seq < 2:
                    pass
        assert a.bus is not None
        with trio.fail_after(5):
            await a.bus.released("bed1")
        resumed = P.Hello(**{**_fields(HELLO), "resume": 2})  # type: ignore[arg-type]
        async with connect(url(b), P.SUBSCRIBE_PATH) as sub, \
                connect(url(b), P.INGEST_PATH) as dev:
            await subscribe(sub, "stream/bed1/raw")
            welcome = await hello(dev, resumed)
            assert isinstance(welcome, P.Welcome) and welcome.next_seq == 3
            await dev.send_message(frame(3))
            (got,) = await samples(sub, 1)
    assert (got.seq, got.t0) == (3, 3 * 36)


async def test_delivery_recovers_after_redis_restarts(redis: Redis,
                                                      nursery: trio.Nursery) -> None:
    async with node(redis, "a", nursery) as a, node(redis, "b", nursery) as b, \
            connect(url(b), P.SUBSCRIBE_PATH) as sub, connect(url(a), P.INGEST_PATH) as dev:
            await subscribe(sub, "stream/bed1/raw", seen_by=a)
            assert isinstance(await hello(dev), P.Welcome)
            await dev.send_message(frame(0))
            await samples(sub, 1)
            redis.stop()
            redis.start()  # same port, empty: the nodes reconnect by themselves
            assert b.bus is not None
            seq = 1
            with trio.fail_after(10):
                while True:  # frames sent while b is still reconnecting may be lost
                    await dev.send_message(frame(seq))
                    seq += 1
                    with trio.move_on_after(0.2):
                        (got,) = await samples(sub, 1)
                        break
            assert got.seq >= 1
