"""What crosses nodes: bundles, one per batch of the bus publisher, and the lease renewer's
one round trip; on a real redis-server of the test's own (see ``test_bus.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgpack
import pytest
import trio
import trio.testing
from redisserver import Redis, redis_server

import protocol as P
from vital_actors.bus import BusHub, RedisBus
from vital_actors.bus.bundle import BundleError, pack_bundle, unpack_bundle
from vital_actors.bus.redis import client_for
from vital_actors.settings import BusSettings, FilterSettings, LaneSettings
from vital_actors.stats import Stats
from vital_actors.streams import StreamRegistry

pytestmark = [
    pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning"),
    pytest.mark.filterwarnings("ignore:Exception ignored in. <function MemoryObject"
                               ":pytest.PytestUnraisableExceptionWarning"),
]

HELLO = P.Hello("bed1", 360.0, ("MLII", "V1"), "int16", (200.0, 200.0), (1024.0, 1024.0))


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    yield from redis_server(tmp_path)


# --- the bundle itself (pure) ------------------------------------------------------------


def test_a_bundle_keeps_its_entries_and_their_order() -> None:
    entries = [("stream/a/raw", b"\x81\xa1x\x01"), ("job/7", b""), ("stream/a/raw", b"\x00")]
    assert unpack_bundle(pack_bundle(entries)) == entries


@pytest.mark.parametrize("data", [
    b"\xc1",  # not msgpack
    msgpack.packb({"topic": "x"}),  # not an array
    msgpack.packb([["stream/a/raw"]]),  # a pair without its payload
    msgpack.packb([[1, b"x"]]),  # a topic that is not a string
    msgpack.packb([["stream/a/raw", "text"]]),  # a payload that is not binary
    pack_bundle([("t", b"x")]) + b"\x00",  # trailing bytes
])
def test_what_is_not_a_bundle_is_refused_with_a_reason(data: bytes) -> None:
    with pytest.raises(BundleError, match="not a bundle"):
        unpack_bundle(data)


async def test_a_topic_forgotten_by_the_ring_is_forgotten_by_the_recorder_too() -> None:
    hub = BusHub(buffer=1000, settings=LaneSettings(), stats=Stats())
    sub = hub.add()
    hub.subscribe(sub, ["job/kept"])
    hub.publish(P.Event("progress", "job/kept", P.Priority.BULK, {"progress": 0.5}))
    assert "job/kept" in hub.ring.logs
    hub._recorded.update({"job/kept": ("a", 1), "job/gone": ("a", 7)})
    hub.forget_idle()
    assert hub._recorded == {"job/kept": ("a", 1)}


# --- across nodes ------------------------------------------------------------------------


@asynccontextmanager
async def bus_node(redis: Redis, name: str, nursery: trio.Nursery, **bus: Any
                   ) -> AsyncIterator[tuple[RedisBus, BusHub, StreamRegistry]]:
    """A node's bus and hub without the rest of a server."""
    settings = BusSettings(url=redis.url, node=name, interest_s=0.1, lease_s=1.0,
                           retry_s=0.1, **bus)
    node = RedisBus(settings)
    hub = BusHub(buffer=1000, settings=LaneSettings(), stats=Stats())
    hub.bus = node
    registry = StreamRegistry(FilterSettings())
    with trio.CancelScope() as scope:
        await nursery.start(node.run, hub, registry)
        yield node, hub, registry
        scope.cancel()


def samples(stream: str, seq: int) -> P.StreamSamples:
    return P.StreamSamples(f"stream/{stream}/raw", stream, seq, seq * 36, 360.0,
                           ("MLII", "V1"), "int16", (200.0, 200.0), (1024.0, 1024.0),
                           bytes([seq % 256]) * 144, extra={"epoch": "t.0", "offset": seq})


@asynccontextmanager
async def bundles_seen(redis: Redis, nursery: trio.Nursery
                       ) -> AsyncIterator[trio.MemoryReceiveChannel[bytes]]:
    """Every pub/sub message on the nodes' live channels, as a raw client sees them."""
    seen_tx, seen_rx = trio.open_memory_channel[bytes](1000)
    client = client_for(redis.url)
    ready = trio.Event()

    async def listen() -> None:
        try:
            async with client, client.pubsub(patterns=["vital:live:*"],
                                              ignore_subscribe_messages=True) as pubsub:
                ready.set()
                async for message in pubsub:
                    data = message["data"]
                    assert isinstance(data, bytes)
                    seen_tx.send_nowait(data)
        except* anyio.ClosedResourceError:
            pass  # coredis, cancelled, unsubscribes on a connection it already closed

    with trio.CancelScope() as scope:
        nursery.start_soon(listen)
        await ready.wait()
        yield seen_rx
        scope.cancel()


async def published_until_now(redis: Redis, seen: trio.MemoryReceiveChannel[bytes]
                              ) -> list[bytes]:
    """What *seen* got before a marker published now (Redis keeps pub/sub in order)."""
    marker = pack_bundle([("marker", b"")])
    async with client_for(redis.url) as client:
        await client.publish("vital:live:marker", marker)
    got = []
    with trio.fail_after(5):
        while (data := await seen.receive()) != marker:
            got.append(data)
    return got


async def test_messages_of_one_tick_cross_in_one_bundle_each_topic_in_order(
        redis: Redis, nursery: trio.Nursery) -> None:
    # A long linger: what arrives while the publisher waits joins its batch.
    async with bus_node(redis, "a", nursery, publish_linger_s=0.5) as (a, hub_a, _), \
            bus_node(redis, "b", nursery) as (_, hub_b, _), \
            bundles_seen(redis, nursery) as seen:
        sub = hub_b.add()
        topics = [f"stream/s{i}/raw" for i in range(3)]
        hub_b.subscribe(sub, topics)
        with trio.fail_after(5):
            for topic in topics:
                await a.learned(topic)
        for seq in range(10):
            for i in range(3):
                hub_a.publish(samples(f"s{i}", seq))
            await trio.testing.wait_all_tasks_blocked()  # the publisher lingers
        got: dict[str, list[int]] = {topic: [] for topic in topics}
        with trio.fail_after(5):
            while sum(map(len, got.values())) < 30:
                out = await sub.lanes.take()
                assert isinstance(out.message, P.StreamSamples)
                got[out.message.topic].append(out.message.seq)
                assert out.payload == P.encode(samples(out.message.stream, out.message.seq))
            await a.flushed()
        bundles = await published_until_now(redis, seen)
    assert got == {topic: list(range(10)) for topic in topics}
    assert len(bundles) == 1 and len(unpack_bundle(bundles[0])) == 30
    assert a.counters.published == 30 and a.counters.recorded == 30


async def test_garbage_on_a_node_channel_is_ignored_and_delivery_goes_on(
        redis: Redis, nursery: trio.Nursery) -> None:
    async with bus_node(redis, "a", nursery) as (a, hub_a, _), \
            bus_node(redis, "b", nursery) as (b, hub_b, _):
        sub = hub_b.add()
        hub_b.subscribe(sub, ["stream/s0/raw"])
        with trio.fail_after(5):
            await a.learned("stream/s0/raw")
        async with client_for(redis.url) as client:
            await client.publish("vital:live:x", b"\xc1 not a bundle")
            await client.publish("vital:live:x", pack_bundle([("stream/s0/raw", b"\xc1")]))
            # An entry that decodes, but to another topic than its bundle names.
            await client.publish("vital:live:x", pack_bundle(
                [("stream/s0/raw", P.encode(samples("s9", 0)))]))
        hub_a.publish(samples("s0", 0))
        with trio.fail_after(5):
            out = await sub.lanes.take()
    assert isinstance(out.message, P.StreamSamples) and out.message.topic == "stream/s0/raw"
    assert b.counters.received == 1


async def test_the_renewer_takes_back_a_lease_a_restarted_redis_forgot(
        redis: Redis, nursery: trio.Nursery) -> None:
    async with bus_node(redis, "a", nursery) as (a, _, registry), \
            client_for(redis.url) as client:
        info = registry.attach(HELLO)
        assert await a.claim(HELLO, registry)
        info.next_seq = 7
        await client.flushall()  # what a restart without persistence leaves
        with trio.fail_after(5):
            for _ in range(2):  # a round may have been under way during the flush
                await a.renewed()
        assert await client.get("vital:lease:bed1") == b"a"
        saved = await client.hgetall("vital:stream:bed1")
    assert saved[b"next_seq"] == b"7" and saved[b"node"] == b"a"


async def test_a_claim_cancelled_after_the_lease_is_taken_does_not_keep_it(
        redis: Redis, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    # The device's connection ends while the claim asks who follows the stream: the
    # caller never learns that it holds the lease, so it must not stay renewed.
    async with bus_node(redis, "a", nursery) as (a, _, registry):
        async def stuck() -> None:
            await trio.sleep_forever()

        monkeypatch.setattr(a, "_learn", stuck)
        with trio.move_on_after(1) as scope:
            await a.claim(HELLO, registry)
        assert scope.cancelled_caught
        assert "bed1" not in a.counters.leases
        with trio.fail_after(1):
            await a.released("bed1")


async def test_a_node_that_lost_a_lease_leaves_the_new_owners_position_alone(
        redis: Redis, nursery: trio.Nursery) -> None:
    async with bus_node(redis, "a", nursery) as (a, _, registry), \
            client_for(redis.url) as client:
        registry.attach(HELLO)
        assert await a.claim(HELLO, registry)
        # Node a stalled past its lease; node b took the stream and saved its position.
        await client.set("vital:lease:bed1", "b", px=60_000)
        await client.hset("vital:stream:bed1", {"run": 3, "next_seq": 99, "t0": 0,
                                                "node": "b"})
        with trio.fail_after(5):
            for _ in range(2):
                await a.renewed()
        assert await client.get("vital:lease:bed1") == b"b"
        saved = await client.hgetall("vital:stream:bed1")
    assert saved[b"next_seq"] == b"99" and saved[b"node"] == b"b"


async def test_a_redis_error_in_a_batch_is_not_a_crash(redis: Redis,
                                                       nursery: trio.Nursery) -> None:
    # A history stream key that holds another type: its XADD fails inside the script
    # (pcall), the rest of the batch is recorded and published.
    async with bus_node(redis, "a", nursery) as (a, hub_a, _), \
            bus_node(redis, "b", nursery) as (_, hub_b, _), \
            client_for(redis.url) as client:
        sub = hub_b.add()
        hub_b.subscribe(sub, ["stream/s0/raw", "stream/s1/raw"])
        with trio.fail_after(5):
            await a.learned("stream/s1/raw")
        await client.set("vital:h:t.0:stream/s0/raw", "not a stream")
        hub_a.publish(samples("s0", 0))
        hub_a.publish(samples("s1", 0))
        with trio.fail_after(5):
            topics: set[str] = set()
            for _ in range(2):
                message = (await sub.lanes.take()).message
                assert isinstance(message, P.StreamSamples)
                topics.add(message.topic)
            await a.flushed()
        assert topics == {"stream/s0/raw", "stream/s1/raw"}
        assert await client.xlen("vital:h:t.0:stream/s1/raw") == 1
