"""The Redis bus (issue 9): the CPU a message costs when its subscriber is on another node.

Two nodes (``RedisBus`` + ``BusHub`` each, the rest of a server left out) in this one
process, on a redis-server of their own (loopback, no persistence). Node *a* produces
``samples`` messages of S streams at the live pace: every ``--tick`` seconds one message
per stream, in ``--groups`` bursts spread over the tick (as the ingest tasks hand them to
the hub), each followed by a checkpoint. One subscriber follows every stream, either on
node *a* ("local": the message is encoded, recorded in its topic's Redis Stream and
delivered there) or on node *b* ("cross": the same, plus publishing it to *b*, which
decodes it, rings it and delivers it). The CPU of this process (both nodes) and of the
redis-server per message, local against cross, in alternating rounds (fresh streams each
round) so that a busy machine weighs on both alike; medians over the rounds.

    python -m loadtests.bench_bus_cross [--streams 75] [--ticks 50] [--rounds 3] [--linger S]

``--per-call`` measures coredis instead: the CPU of one publisher script call (EVALSHA
of a 4-message bundle, one round trip at a time), then of the same with each bundle
also received through coredis's pub/sub reader in this process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import psutil  # type: ignore[import-untyped]
import trio

import protocol as P
from vital_actors.broadcast import Subscriber
from vital_actors.bus import BusHub, RedisBus
from vital_actors.bus.bundle import pack_bundle
from vital_actors.bus.redis import _PUBLISH, _SHA, client_for
from vital_actors.settings import BusSettings, FilterSettings, LaneSettings
from vital_actors.stats import Stats
from vital_actors.streams import StreamRegistry

from .bench_bus_history import redis_server


@dataclass(slots=True)
class Node:
    bus: RedisBus
    hub: BusHub


def _message(stream: str, seq: int) -> P.StreamSamples:
    """A device's 100-ms frame at 360 Hz: 36 frames x 2 int16 channels, positioned."""
    return P.StreamSamples(f"stream/{stream}/raw", stream, seq, seq * 36, 360.0,
                           ("MLII", "V1"), "int16", (200.0, 200.0), (1024.0, 1024.0),
                           os.urandom(36 * 2 * 2), extra={"epoch": f"{stream}.0", "offset": seq})


async def _drain(sub: Subscriber, total: int, done: trio.Event) -> None:
    """Take what *sub*'s lanes get, as its sender would; *done* once *total* came."""
    for _ in range(total):
        sub.lanes.mark_sent(await sub.lanes.take())
    done.set()


async def _round(args: argparse.Namespace, a: Node, where: Node, name: str,
                 redis: psutil.Process, nursery: trio.Nursery) -> tuple[float, float]:
    """(this process's, redis-server's) CPU µs per message, subscriber on *where*."""
    streams = [f"{name}-{i}" for i in range(args.streams)]
    topics = [f"stream/{s}/raw" for s in streams]
    sub = where.hub.add()
    where.hub.subscribe(sub, topics)
    if where is not a:
        with trio.fail_after(5):
            for topic in topics:
                await a.bus.learned(topic)
    total, done = args.streams * args.ticks, trio.Event()
    nursery.start_soon(_drain, sub, total, done)
    ticks = [[_message(s, seq) for s in streams] for seq in range(args.ticks)]
    per = max(1, args.streams // args.groups)
    r0, c0 = sum(redis.cpu_times()[:2]), time.process_time()
    for messages in ticks:
        start = trio.current_time()
        for g in range(0, len(messages), per):
            for message in messages[g:g + per]:
                a.hub.publish(message)
                await trio.lowlevel.checkpoint()
            await trio.sleep_until(start + args.tick * (g + per) / len(messages))
    with trio.fail_after(10):
        await done.wait()
    cpu, rcpu = time.process_time() - c0, sum(redis.cpu_times()[:2]) - r0
    where.hub.remove(sub)
    return cpu / total * 1e6, rcpu / total * 1e6


async def _run(args: argparse.Namespace, url: str, redis: psutil.Process) -> None:
    registry = StreamRegistry(FilterSettings())
    async with trio.open_nursery() as nursery:
        nodes = []
        for name in "ab":
            linger = {} if args.linger is None else {"publish_linger_s": args.linger}
            bus = RedisBus(BusSettings(url=url, node=name, interest_s=0.2, **linger))
            hub = BusHub(buffer=10_000, settings=LaneSettings(), stats=Stats())
            hub.bus = bus
            await nursery.start(bus.run, hub, registry)
            nodes.append(Node(bus, hub))
        a, b = nodes
        results: dict[str, list[tuple[float, float]]] = {"local": [], "cross": []}
        for r in range(args.rounds):
            for mode, where in (("local", a), ("cross", b)):
                row = await _round(args, a, where, f"r{r}{mode}", redis, nursery)
                results[mode].append(row)
                print(f"round {r + 1} {mode:5}: {row[0]:6.1f} µs/msg here, "
                      f"{row[1]:5.1f} µs/msg redis-server", flush=True)
        nursery.cancel_scope.cancel()
    rate = args.streams / args.tick
    print(f"{args.streams} streams, {rate:.0f} msg/s; medians of {args.rounds} rounds:")
    for mode, rows in results.items():
        print(f"{mode:5}: {statistics.median(r[0] for r in rows):6.1f} µs/msg here (both "
              f"nodes), {statistics.median(r[1] for r in rows):5.1f} µs/msg redis-server")
    print(f"load average {os.getloadavg()}")


async def _per_call(url: str, calls: int) -> None:
    """CPU µs per publisher script call, and per call with its bundle received."""
    args: list[Any] = [10_000, 60_000, "vital:live:x",
                       pack_bundle([("stream/a/raw", bytes(300))] * 4)]
    async with client_for(url) as client, client_for(url) as reader:
        await client.script_load(_PUBLISH)

        async def publish() -> None:
            for _ in range(calls):
                await client.evalsha(_SHA[_PUBLISH], keys=[], args=args)

        c0 = time.process_time()
        await publish()
        alone = (time.process_time() - c0) / calls * 1e6
        async with reader.pubsub(patterns=["vital:live:*"],
                                 ignore_subscribe_messages=True) as pubsub:
            c0, got = time.process_time(), 0
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish)
                async for _ in pubsub:
                    got += 1
                    if got == calls:
                        break
            both = (time.process_time() - c0) / calls * 1e6
    print(f"EVALSHA, one round trip at a time: {alone:.0f} µs CPU per call; with each "
          f"bundle received through coredis pub/sub: {both:.0f} µs per call "
          f"(receiving: {both - alone:.0f})")
    print(f"load average {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=75)
    parser.add_argument("--ticks", type=int, default=50, help="frames per stream per round")
    parser.add_argument("--tick", type=float, default=0.1, help="seconds between frames")
    parser.add_argument("--groups", type=int, default=20, help="bursts per tick")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--linger", type=float, help="bus.publish_linger_s (s)")
    parser.add_argument("--per-call", action="store_true", help="coredis's cost per call")
    args = parser.parse_args()
    with redis_server() as (url, redis):
        if args.per_call:
            trio.run(_per_call, url, 3000)
        else:
            trio.run(_run, args, url, redis)


if __name__ == "__main__":
    main()
