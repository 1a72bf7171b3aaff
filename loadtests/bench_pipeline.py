"""The live pipeline at the live goal's frame rate, without the network: N replays.

    python -m loadtests.bench_pipeline --replays 200 1000 --seconds 30
    python -m loadtests.bench_pipeline --replays 1000 --seconds 30 --probe /tmp/pp

Issue 4 asks for per-frame work small enough for the live goals; issue 7's goal is
1,000 devices sending 100-ms frames (10,000 frames a second). A real server
(``vital-actors serve``, one per N, archive as configured) gets the first
``--minutes`` of each DS1 record (../shared/data/mitdb) uploaded as a recording, then N
looping replays of them at real time (100-ms frames, what a device of the goal sends),
started over one second so their frames do not all fall on the same tick. Replays go
through everything a device's frame goes through after its WebSocket (the raw topic's
admission, the filter, the screen, the broadcaster), so what this measures is the
processing a frame costs without the connection that carries it in. After
``--warmup`` s it measures for ``--seconds``:

- frames the replays sent against real time (a pipeline that cannot keep up parks
  the replays on its full inlet: backpressure, so they fall behind, nothing is lost);
- the server's CPU (psutil), whole and per thread (the event loop's and the rest);
- the deepest the pipeline's channels got (``/api/v1/stats``, polled every 0.5 s),
  and the loop's lag p99;
- with ``--probe DIR`` the server runs with ``loadtests/probe`` (each task's share of
  the loop, the screen's frames per call and CPU per frame), written to DIR when it
  stops and printed here. The probe costs a few µs per task step.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil  # type: ignore[import-untyped]  # no stubs in the project's deps
import trio

from vital_actors.sources import data_dir, list_records, load_record

from .bench_recordings import _commit, _wait_ready, free_port, http_json, upload
from .threadcpu import snapshot

__all__ = ["main"]

FRAMES_PER_S = 10  # 100-ms frames
BLOCK = 36  # time points in a 100-ms frame of DS1 (360 Hz)
PROBE = Path(__file__).parent / "probe"


def write_records(folder: Path, minutes: float) -> list[Path]:
    """The first *minutes* of each DS1 record, 2 leads, as int16 NPY files."""
    root = data_dir()
    if root is None or not (root / "mitdb").is_dir():
        raise SystemExit("bench_pipeline needs ../shared/data/mitdb (MIT-BIH DS1)")
    out = []
    for path in list_records(root / "mitdb"):
        rec = load_record(path, stop=round(minutes * 60 * 360))
        dest = folder / f"{path.name}.npy"
        np.save(dest, np.ascontiguousarray(rec.samples[:, :2], "<i2"))
        out.append(dest)
    return out


def thread_ticks(pid: int) -> tuple[int, int]:
    """(ticks of the process's main thread, ticks of all its other threads)."""
    main_ticks = other = 0
    for tid, (_, user, system) in snapshot(pid).items():
        if int(tid) == pid:
            main_ticks += user + system
        else:
            other += user + system
    return main_ticks, other


async def measure(n: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "VITAL_STORE__DIR": str(work / f"store-{n}")}
    if args.probe:
        env["PYTHONPATH"] = os.pathsep.join([str(PROBE), env.get("PYTHONPATH", "")])
        env["VITAL_PROBE_OUT"] = str(Path(args.probe) / f"n{n}")
    proc = subprocess.Popen([sys.executable, "-m", "vital_actors.cli", "serve",  # noqa: ASYNC220
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
    out: dict[str, Any] = {"replays": n, "offered_frames_s": n * FRAMES_PER_S,
                           "loadavg_start": os.getloadavg()[0]}
    try:
        await _wait_ready(port)
        recordings = [(await upload(port, p))[0]["id"] for p in args.files]
        for k in range(n):
            rec = recordings[k % len(recordings)]
            await http_json(port, "POST", f"/api/v1/recordings/{rec}/replay",
                            {"speed": 1.0, "loop": True, "stream": f"p{k:04d}"})
            await trio.sleep(1.0 / n)  # n starts spread over one second
        await trio.sleep(args.warmup)
        out.update(await window(port, proc.pid, args.seconds))
    finally:
        proc.send_signal(signal.SIGINT)  # the probe writes at exit
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if args.probe:
        for f in sorted((Path(args.probe) / f"n{n}").glob("probe-*.txt")):
            out["probe"] = f.read_text()
    return out


async def sent(port: int) -> int:
    replays = (await http_json(port, "GET", "/api/v1/replays"))["replays"]
    failed = [r for r in replays if r["state"] != "playing"]
    if failed:
        raise RuntimeError(f"replays not playing: {failed[:3]}")
    return sum(int(r["frames_sent"]) for r in replays)


async def window(port: int, pid: int, seconds: float) -> dict[str, Any]:
    """The figures of one measuring window of *seconds*."""
    ps = psutil.Process(pid)
    hz = os.sysconf("SC_CLK_TCK")
    depth: dict[str, int] = {}

    async def poll() -> None:
        while True:
            stats = await http_json(port, "GET", "/api/v1/stats")
            for name, ch in stats["channels"].items():
                depth[name] = max(depth.get(name, 0), ch["depth"])
            await trio.sleep(0.5)

    frames0, cpu0, threads0 = await sent(port), ps.cpu_times(), thread_ticks(pid)
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    dt = time.perf_counter() - t0
    frames1, cpu1, threads1 = await sent(port), ps.cpu_times(), thread_ticks(pid)
    stats = await http_json(port, "GET", "/api/v1/stats")
    blocks = (frames1 - frames0) / BLOCK  # the replays count sample frames
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / dt
    return {
        "seconds": dt, "frames_s": blocks / dt,
        "server_cpu_pct": 100 * cpu,
        "loop_thread_cpu_pct": 100 * (threads1[0] - threads0[0]) / hz / dt,
        "other_threads_cpu_pct": 100 * (threads1[1] - threads0[1]) / hz / dt,
        "cpu_us_per_frame": 1e6 * cpu * dt / max(blocks, 1),
        "deepest": depth, "loop_lag_p99_ms": stats["loop_lag"]["p99_ms"],
        "loadavg_end": os.getloadavg()[0],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replays", type=int, nargs="+", default=[200, 1000])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--minutes", type=float, default=5.0,
                   help="of each DS1 record to upload (replays loop over it)")
    p.add_argument("--probe", help="run the server with loadtests/probe, writing here")
    p.add_argument("--out", help="also write the figures here as JSON")
    args = p.parse_args()
    results: dict[str, Any] = {"commit": _commit(), "started_utc": time.strftime(
        "%Y-%m-%d %H:%M:%S", time.gmtime()), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work = Path(tmp)
        args.files = write_records(work, args.minutes)
        for n in args.replays:
            run = trio.run(measure, n, args, work)
            results["runs"].append(run)
            probe = run.pop("probe", None)
            print(json.dumps(run, default=float))
            if probe:
                print(probe)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
