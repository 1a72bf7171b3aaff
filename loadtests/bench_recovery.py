"""Subscriber recovery (issue 6): what the ring costs on the live path, and how fast a
replay goes.

1. Live path: ``sample_messages`` + ``Hub.publish`` for the blocks of a real record over
   S streams, one live subscriber per topic (its lanes drained), CPU time per published
   message with recovery off, positions without a ring, the ring (default bound), and a
   ring kept at 1 MiB (trimming on every message); the modes alternate in rounds within
   one run, so a busy machine weighs on all alike.
2. Replay: a real server on loopback, a device sends N frames (acked: durable), then a
   subscriber subscribes with ``since`` at the start of the run and reads to the last
   frame, once from the ring and once from the archive (ring off); wall time, CPU time
   of the process (server and client share it), messages/s.

    python -m loadtests.bench_recovery [--streams 50] [--blocks 200] [--frames 5000]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import trio

import protocol as P
from vital_actors.broadcast import Hub, sample_messages
from vital_actors.graph import Server
from vital_actors.messages import Block, Filtered
from vital_actors.sdk import DeviceClient, open_connection
from vital_actors.sdk._connection import receive
from vital_actors.settings import FilterSettings, LaneSettings, RecoverySettings, load_settings
from vital_actors.sources import data_dir, load_record
from vital_actors.stats import Stats
from vital_actors.streams import StreamRegistry

MODES = {
    "off": RecoverySettings(enabled=False),
    "positions, no ring": RecoverySettings(seconds=0),
    "ring (30 s, 64 MiB)": RecoverySettings(),
    "ring at 1 MiB (trims)": RecoverySettings(max_bytes=1 << 20),
}


def _record() -> np.ndarray:
    root = data_dir()
    assert root is not None, "../shared/data is needed"
    return np.ascontiguousarray(load_record(root / "mitdb" / "101", stop=360 * 120).samples)


def _items(samples: np.ndarray, streams: int) -> list[Filtered]:
    registry = StreamRegistry(FilterSettings())
    infos = [registry.attach(P.Hello(f"s{i}", 360.0, ("MLII", "V1"), "int16", (200.0, 200.0),
                                     (1024.0, 1024.0))) for i in range(streams)]
    items = []
    for k in range(len(samples) // 72):
        raw = samples[k * 72:(k + 1) * 72]
        mv = raw.astype(np.float64) / 200
        for info in infos:
            items.append(Filtered(Block(info, 0, k, k * 72, raw, 0.0), mv, mv, 1))
    return items


def _live_round(settings: RecoverySettings, items: list[Filtered]) -> tuple[float, int]:
    hub = Hub(buffer=1 << 20, settings=LaneSettings(), stats=Stats(),
              rng=random.Random(1), recovery=settings)
    streams = {item.block.stream.id for item in items}
    subs = []
    for stream in streams:
        sub = hub.add()
        hub.subscribe(sub, [f"stream/{stream}/raw", f"stream/{stream}/filtered"])
        subs.append(sub)
    t = time.process_time()
    for item in items:
        for message in sample_messages(item, hub, filtered_dtype="float32"):
            hub.publish(message)
    cpu = time.process_time() - t
    for sub in subs:
        hub.remove(sub)
    return cpu, hub.stats.totals.encoded


async def live_path(streams: int, blocks: int, rounds: int) -> None:
    items = _items(_record()[:72 * blocks], streams)
    per: dict[str, list[float]] = {name: [] for name in MODES}
    names = list(MODES)
    _live_round(MODES["ring (30 s, 64 MiB)"], items)  # warm-up, not counted
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order
            gc.collect()
            cpu, n = _live_round(MODES[name], items)
            per[name].append(cpu / n)
    base = statistics.median(per["off"])
    print(f"live path: {streams} streams x {blocks} blocks, raw + filtered, {rounds} rounds "
          f"of {len(items) * 2} messages each; median of the rounds")
    for name in MODES:
        med = statistics.median(per[name])
        print(f"  {name:24s} {med * 1e6:6.2f} us CPU per published message "
              f"({(med - base) * 1e6:+5.2f} us, {med / base:4.2f}x off)")


async def _send(url: str, frames: int) -> P.Hello:
    hello = P.Hello("rb", 360.0, ("MLII", "V1"), "int16", (200.0, 200.0), (1024.0, 1024.0))
    samples = _record()
    client = DeviceClient(url, hello, max_unacked=frames)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        for k in range(frames):
            start = (k * 72) % (len(samples) - 72)
            await client.send(samples[start:start + 72])
        await client.drain()
        nursery.cancel_scope.cancel()
    return hello


async def replay(frames: int, source: str) -> None:
    recovery = {} if source == "ring" else {"max_bytes": 0}
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(load_settings(server={"port": 0}, archive={"dir": Path(tmp)},
                                      recovery={"max_bytes": 256 << 20, **recovery}))
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            url = f"ws://127.0.0.1:{server.port}"
            topic = "stream/rb/raw"
            async with open_connection(url, P.SUBSCRIBE_PATH) as keeper:  # keeps the ring
                await keeper.send_message(P.encode(P.Subscribe((topic,))))
                await _send(url, frames)
                await trio.sleep(0.5)  # the last frames through the pipeline
                epoch = server.hub.stream_epoch(0)
                async with open_connection(url, P.SUBSCRIBE_PATH) as ws:
                    wall, cpu = time.perf_counter(), time.process_time()
                    await ws.send_message(P.encode(P.Subscribe((topic,), {topic: (epoch, -1)})))
                    got, size = 0, 0
                    while got < frames:
                        message = await receive(ws)
                        if isinstance(message, P.StreamSamples):
                            got += 1
                            size += len(message.data)
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            server.shutdown()
    print(f"replay from the {source}: {frames} frames ({size / 1e6:.1f} MB of samples) in "
          f"{wall * 1e3:.0f} ms wall, {cpu * 1e3:.0f} ms CPU: {frames / wall:,.0f} msg/s")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--blocks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=5000)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    await live_path(args.streams, args.blocks, args.rounds)
    await replay(args.frames, "ring")
    await replay(args.frames, "archive")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    trio.run(main)
