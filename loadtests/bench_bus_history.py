"""The Redis bus (issue 9): what recording live topics in Redis Streams costs.

One ``RedisBus`` on a redis-server of its own (loopback, no persistence) gets N encoded
``samples`` messages (one topic per stream, positioned like the hub positions them),
either published only (``bus.history = false``: PUBLISH) or recorded and published
(XADD and PUBLISH in one script call per batch), as fast as its publisher drains them. It
reports CPU time per message of this process (the bus publisher; nothing else runs
in it) and of the redis-server (psutil), and the messages/s drained. The two modes
alternate in rounds within one run, so a busy machine weighs on both alike.

    python -m loadtests.bench_bus_history [--messages 20000] [--streams 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil  # type: ignore[import-untyped]
import trio

import protocol as P
from vital_actors.bus import BusHub, RedisBus
from vital_actors.edge.codecs import Outgoing
from vital_actors.settings import BusSettings, FilterSettings, LaneSettings
from vital_actors.stats import Stats
from vital_actors.streams import StreamRegistry


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _messages(count: int, streams: int) -> list[tuple[str, Outgoing, int]]:
    """(topic, encoded message, offset): 36 frames x 2 int16 channels each, like a
    device's 100-ms frame at 360 Hz."""
    data = bytes(36 * 2 * 2)
    out = []
    for i in range(count):
        s, seq = i % streams, i // streams
        topic = f"stream/s{s}/raw"
        msg = P.StreamSamples(topic, f"s{s}", seq, seq * 36, 360.0, ("MLII", "V1"), "int16",
                              (200.0, 200.0), (1024.0, 1024.0), data,
                              extra={"epoch": "bench.1", "offset": seq})
        out.append((topic, Outgoing.of(msg, P.Priority.HIGH), seq))
    return out


async def _drain(bus: RedisBus, batch: list[tuple[str, Outgoing, int]], record: bool,
                 redis: psutil.Process) -> tuple[float, float, float]:
    """(wall s, this process's CPU s, redis-server CPU s) to get *batch* to Redis."""
    r0, c0, t0 = sum(redis.cpu_times()[:2]), time.process_time(), time.perf_counter()
    for topic, out, seq in batch:
        if record:
            bus.record(topic, out, epoch="bench.1", offset=seq,
                       prev=seq - 1 if seq else None, publish=True)
        else:
            bus.publish(topic, out)
        if bus._outbox_tx.statistics().current_buffer_used > bus.settings.outbox // 2:
            await bus.flushed()  # never drop: the bench measures the publisher, not drops
    await bus.flushed()
    return (time.perf_counter() - t0, time.process_time() - c0,
            sum(redis.cpu_times()[:2]) - r0)


async def _run(args: argparse.Namespace, url: str, redis: psutil.Process) -> None:
    settings = BusSettings(url=url, node="bench", history_maxlen=10_000)
    bus = RedisBus(settings)
    hub = BusHub(buffer=1000, settings=LaneSettings(), stats=Stats())
    messages = _messages(args.messages, args.streams)
    results: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run, hub, StreamRegistry(FilterSettings()))
        for _ in range(args.rounds):
            for record in (False, True):
                # Fresh offsets per round: a stream's entry ids must keep increasing.
                results[record].append(await _drain(bus, messages, record, redis))
                messages = [(t, o, s + args.messages) for t, o, s in messages]
        nursery.cancel_scope.cancel()
    n = args.messages
    for record, rows in results.items():
        wall = statistics.median(r[0] for r in rows)
        cpu = statistics.median(r[1] for r in rows)
        rcpu = statistics.median(r[2] for r in rows)
        print(f"{'record+publish' if record else 'publish only  '}: {n / wall:9.0f} msg/s, "
              f"node CPU {cpu / n * 1e6:6.1f} us/msg, redis-server CPU {rcpu / n * 1e6:6.1f} "
              f"us/msg (median of {len(rows)})")
    print(f"load average {os.getloadavg()}")


@contextmanager
def redis_server() -> Iterator[tuple[str, psutil.Process]]:
    """A redis-server of our own on a free loopback port (no persistence): its URL and
    process (for its CPU time)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not installed")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", tmp],
                                stdout=subprocess.DEVNULL)
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}", psutil.Process(proc.pid)
        finally:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with redis_server() as (url, redis):
        trio.run(_run, args, url, redis)


if __name__ == "__main__":
    main()
