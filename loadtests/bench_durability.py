"""What durable acks cost, and a whole DS1 record through connections cut at random.

    python -m loadtests.bench_durability [--devices 50] [--frames 600] [--kill-record 101]

Part 1, side by side in one run: a server process per archive setting (off, fsync
never, interval = the default group commit, always), D SDK devices each sending F
frames of 100 ms of MIT-BIH 101 (36 samples x 2 channels), first at real time (10
frames/s each: the ack latency is what matters), then as fast as acks allow
(``max_unacked`` 200: frames/s is what matters; latency is then mostly queueing).
Reports frames/s until all are acked and the ack latency (``send()`` returns to the
ack) p50 / p99 / max, on one ``perf_counter`` clock.

Part 2: one device replays a whole MIT-BIH record through a TCP proxy that cuts every
live connection at random (every 50-500 ms), then checks the archive against the
source: frames lost, duplicated, bytes equal.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import trio

from protocol import Hello
from vital_actors.archive import read_frames
from vital_actors.sdk import Backoff, DeviceClient
from vital_actors.sources import Recording, data_dir, load_record

from .proxy import killing_proxy

CONFIGS = {"off": {"VITAL_ARCHIVE__ENABLED": "false"},
           "never": {"VITAL_ARCHIVE__FSYNC": "never"},
           "interval": {"VITAL_ARCHIVE__FSYNC": "interval"},
           "always": {"VITAL_ARCHIVE__FSYNC": "always"}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def server(env: dict[str, str], archive: Path) -> AsyncIterator[str]:
    port = _free_port()
    full = {**os.environ, **env, "VITAL_ARCHIVE__DIR": str(archive),
            "VITAL_SERVER__PORT": str(port)}
    proc = await trio.lowlevel.open_process([sys.executable, "-m", "vital_actors.cli", "serve"],
                                            env=full, stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    with trio.fail_after(60):
        await proc.stdout.receive_some(4096)
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        proc.terminate()
        with trio.move_on_after(20):
            await proc.wait()
        proc.kill()


def _hello(rec: Recording, stream: str) -> Hello:
    return Hello(stream, rec.fs, rec.channels, "int16", rec.gain,
                 tuple(float(b) for b in rec.baseline))


async def _device(url: str, rec: Recording, stream: str, frames: int,
                  latencies: list[float], paced: bool) -> None:
    sent: dict[int, float] = {}
    client = DeviceClient(url, _hello(rec, stream), max_unacked=200)

    def acked(seq: int) -> None:
        now = time.perf_counter()
        for s in [s for s in sent if s <= seq]:
            latencies.append(now - sent.pop(s))

    client.on_ack = acked
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        t0 = trio.current_time()
        for k in range(frames):
            start = (k * 36) % (len(rec.samples) - 36)
            seq = await client.send(rec.samples[start:start + 36])
            sent[seq] = time.perf_counter()
            if paced:  # real time: 10 frames/s
                await trio.sleep_until(t0 + (k + 1) * 0.1)
        await client.drain()
        nursery.cancel_scope.cancel()


async def throughput(rec: Recording, devices: int, frames: int, paced: bool) -> None:
    mode = "real time, 10 frames/s each" if paced else "as fast as acks allow"
    print(f"\n{devices} devices x {frames} frames, {mode}:\n")
    print("| archive | frames/s acked | ack p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for name, env in CONFIGS.items():
        with tempfile.TemporaryDirectory(prefix="bench-durability-") as tmp:
            async with server(env, Path(tmp)) as url:
                latencies: list[float] = []
                start = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for d in range(devices):
                        nursery.start_soon(_device, url, rec, f"b{d}", frames, latencies,
                                           paced)
                elapsed = time.perf_counter() - start
        ms = np.array(latencies) * 1000
        print(f"| {name} | {devices * frames / elapsed:,.0f} | "
              f"{np.percentile(ms, 50):.1f} | {np.percentile(ms, 99):.1f} | "
              f"{ms.max():.1f} |", flush=True)


async def killed_replay(rec: Recording, seed: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-kill-") as tmp:
        async with server(CONFIGS["interval"], Path(tmp)) as url:
            upstream = int(url.rsplit(":", 1)[1])
            start = time.perf_counter()
            async with killing_proxy(upstream, rng=random.Random(seed),
                                     every_s=(0.05, 0.5)) as (port, cuts), \
                    trio.open_nursery() as nursery:
                client = DeviceClient(f"ws://127.0.0.1:{port}", _hello(rec, "kill"),
                                      max_unacked=500, backoff=Backoff(0.01, 0.2))
                await nursery.start(client.run)
                for s in range(0, len(rec.samples), 36):
                    await client.send(rec.samples[s:s + 36])
                await client.drain()
                nursery.cancel_scope.cancel()
            elapsed = time.perf_counter() - start
        runs = sorted((Path(tmp) / "kill").glob("run-*"))
        seqs = [s for run in runs for s, _, _ in read_frames(run)]
        data = b"".join((run / "samples.bin").read_bytes() for run in runs)
    expected = client.next_seq
    lost = len(set(range(expected)) - set(seqs))
    duplicated = len(seqs) - len(set(seqs))
    same = data == np.ascontiguousarray(rec.samples, "<i2").tobytes()
    print(f"killed replay of {rec.name} ({len(rec.samples)} samples, {expected} frames): "
          f"{len(cuts)} connections cut, {client.counters.connections} connections, "
          f"{client.counters.resent} frames resent, {len(runs)} run(s); "
          f"lost {lost}, duplicated {duplicated}, archive == source: {same}; "
          f"{elapsed:.1f} s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--kill-record", default="101", help="MIT-BIH record for part 2")
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--skip-throughput", action="store_true")
    args = p.parse_args()
    folder = (data_dir() or Path("../shared/data")) / "mitdb"
    if not args.skip_throughput:
        rec = load_record(folder / "101")
        trio.run(throughput, rec, args.devices, args.frames, True)
        trio.run(throughput, rec, args.devices, args.frames, False)
    trio.run(killed_replay, load_record(folder / args.kill_record), args.seed)


if __name__ == "__main__":
    main()
