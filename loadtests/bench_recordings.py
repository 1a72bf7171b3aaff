"""Recordings benchmark: upload MB/s, processing jobs vs in-memory scipy, peak RSS of the
server (psutil, from outside), event-loop lag during a job, view latency.

    python -m loadtests.bench_recordings --gb 2 --ratio-mb 256 --views 400

Runs a real server (``vital-actors serve``) in a subprocess with its store under
``--tmp`` (big files: mind ``df -h``); everything written there is deleted at the end.
Phases, each on the same server:

1. upload a synthetic ECG-like NPY (int16, 2 channels, 360 Hz) of ``--gb`` GB;
2. a filter-only job on it while a second copy uploads: peak RSS, job wall time and
   the server's own event-loop lag probe (p99 over the last minute, polled);
3. ratio: a filter-only job on a ``--ratio-mb`` recording vs scipy's ``sosfilt`` over
   the same samples in memory in this process (mV conversion included), side by side;
   the same for a job with screening (issue 4's quality chain) on ``--screen-mb``;
4. ``--views`` random windows at random zoom levels: GET .../view latency as the
   client sees it (a fresh connection each, through the front door) and the view's
   own cost from the ``server-timing`` header; /healthz on the same path for scale.

Also: the big file again through the resumable protocol (``upload_resumable_mb_s``),
the loop's lag p99 after ``--idle-s`` with nothing to do (the baseline of the
machine), up to ``--views / 2`` views while the second big job and the second upload
run, the load average at each phase and the commit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h11
import numpy as np
import numpy.typing as npt
import psutil  # type: ignore[import-untyped]  # no stubs in the project's deps
import scipy.signal
import trio

from vital_actors.filtering import design
from vital_actors.settings import FilterSettings
from vital_actors.uploader import upload_file

FS = 360.0
GAIN, BASE = 200.0, 1024.0


def write_npy(path: Path, frames: int, *, seed: int = 0) -> None:
    """An ECG-like int16 (frames, 2) NPY written piece by piece (never whole in memory)."""
    header = {"descr": "<i2", "fortran_order": False, "shape": (frames, 2)}
    rng = np.random.default_rng(seed)
    t = np.arange(int(FS) * 60) / FS  # one minute, 72 bpm, tiled
    beat = (np.sin(np.pi * 1.2 * t) ** 64) * 300
    minute = np.stack([beat, 0.5 * beat], axis=1) + BASE
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        done = 0
        while done < frames:
            n = min(frames - done, 1 << 23)
            reps = -(-n // len(minute))
            piece = np.tile(minute, (reps, 1))[:n] + rng.normal(0, 8, (n, 2))
            f.write(piece.astype("<i2").tobytes())
            done += n


def write_mitbih_npy(path: Path, frames: int) -> None:
    """MIT-BIH (the DS1 records in ../shared/data/mitdb: 2 channels, 360 Hz, gain 200,
    baseline 1024, as the synthetic file) one after another, repeated to *frames*, as
    an int16 NPY."""
    from vital_actors.sources import data_dir, list_records, load_record

    root = data_dir()
    if root is None or not (root / "mitdb").is_dir():
        raise SystemExit("--source mitbih needs ../shared/data/mitdb")
    records = [load_record(p) for p in list_records(root / "mitdb")]
    header = {"descr": "<i2", "fortran_order": False, "shape": (frames, 2)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        done, k = 0, 0
        while done < frames:
            x = np.ascontiguousarray(records[k % len(records)].samples[:, :2], "<i2")
            piece = x[:frames - done]
            f.write(piece.tobytes())
            done, k = done + len(piece), k + 1


class RssWatch:
    """Peak RSS of a process tree, sampled every 20 ms in a thread of ours."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0

    def sample(self) -> int:
        procs = [self.proc, *self.proc.children(recursive=True)]
        rss = int(sum(p.memory_info().rss for p in procs))
        self.peak = max(self.peak, rss)
        return rss

    async def run(self) -> None:
        while True:
            await trio.to_thread.run_sync(self.sample)
            await trio.sleep(0.02)


async def http_json(port: int, method: str, path: str, body: Any = None,
                    timing: list[float] | None = None) -> Any:
    """One request on a fresh connection (through the front door, as a client would);
    appends the server-timing duration (ms) to *timing* when given."""
    data = b"" if body is None else json.dumps(body).encode()
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(conn.send(h11.Request(method=method, target=path, headers=[
            ("host", "x"), ("content-type", "application/json"),
            ("content-length", str(len(data)))])) + conn.send(h11.Data(data=data))
            + conn.send(h11.EndOfMessage()))
        status, payload = 0, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(1 << 16))
            elif isinstance(event, h11.Response):
                status = event.status_code
                for k, v in event.headers:
                    if k == b"server-timing" and timing is not None:
                        timing.append(float(v.decode().split("dur=")[1]))
            elif isinstance(event, h11.Data):
                payload += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
    if status >= 300:
        raise RuntimeError(f"{method} {path}: {status} {payload[:300]!r}")
    return json.loads(payload) if payload else None


async def upload(port: int, path: Path, *, resumable: bool = False
                 ) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    status, answer = await upload_file(f"http://127.0.0.1:{port}", path,
                                       query={"fs": str(FS), "gain": str(GAIN),
                                              "baseline": str(BASE)}, resumable=resumable)
    if status != 201:
        raise RuntimeError(f"upload: {status} {answer}")
    return answer, time.perf_counter() - t0


async def run_job(port: int, rec: str, *, screen: bool,
                  lags: list[float] | None = None) -> tuple[dict[str, Any], float]:
    job = await http_json(port, "POST", "/api/v1/jobs", {"recording": rec, "screen": screen,
                                                        "priority": "urgent"})
    while job["state"] in ("queued", "running"):
        await trio.sleep(0.25)
        job = await http_json(port, "GET", f"/api/v1/jobs/{job['id']}")
        if lags is not None:
            stats = await http_json(port, "GET", "/api/v1/stats")
            lags.append(stats["loop_lag"]["p99_ms"])
    if job["state"] != "done":
        raise RuntimeError(f"job {job}")
    # The server's own start/finish stamps, free of our polling interval:
    return job, job["finished"] - job["started"]


def scipy_in_memory(path: Path) -> float:
    """Seconds for mV conversion + sosfilt over the whole file, loaded in memory first."""
    x = np.load(path)
    sos = design(FilterSettings(), FS).sos
    t0 = time.perf_counter()
    mv: npt.NDArray[np.float64] = (x.astype(np.float64) - BASE) / GAIN
    scipy.signal.sosfilt(sos, mv, axis=0)
    return time.perf_counter() - t0


async def views(port: int, meta: dict[str, Any], count: int,
                server_ms: list[float], out: list[float] | None = None) -> list[float]:
    """Latencies (ms) of *count* random views, appended to *out* as they come."""
    rng = np.random.default_rng(5)
    frames, out = meta["frames"], [] if out is None else out
    for _ in range(count):
        n = int(np.exp(rng.uniform(np.log(200), np.log(frames))))
        start = int(rng.integers(0, frames - n + 1))
        path = (f"/api/v1/recordings/{meta['id']}/view?start={start}&end={start + n}"
                f"&points=2000&channel={int(rng.integers(0, 2))}")
        t0 = time.perf_counter()
        await http_json(port, "GET", path, timing=server_ms)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    frames = int(args.gb * 1e9) // 4
    big, ratio_file, screen_file = work / "big.npy", work / "ratio.npy", work / "screen.npy"
    if args.source == "mitbih":  # the big file; the ratio and screening files stay synthetic
        write_mitbih_npy(big, frames)
    else:
        write_npy(big, frames)
    write_npy(ratio_file, int(args.ratio_mb * 1e6) // 4, seed=1)
    write_npy(screen_file, int(args.screen_mb * 1e6) // 4, seed=2)
    port = free_port()
    env = {**os.environ, "VITAL_STORE__DIR": str(work / "store")}
    proc = subprocess.Popen([sys.executable, "-m", "vital_actors.cli", "serve",  # noqa: ASYNC220
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
    out: dict[str, Any] = {"gb": args.gb, "frames": frames, "source": args.source,
                           "commit": _commit(),
                           "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                           "loadavg_start": os.getloadavg()}
    try:
        await _wait_ready(port)
        watch = RssWatch(proc.pid)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch.run)
            out["rss_idle_mb"] = watch.sample() / 1e6
            meta, dt = await upload(port, big)
            out["upload_s"], out["upload_mb_s"] = dt, meta["bytes"] / 1e6 / dt
            out["rss_upload_peak_mb"] = watch.peak / 1e6
            if args.resumable:  # the same file through PATCH /api/v1/uploads/{id}
                resumed, dt = await upload(port, big, resumable=True)
                out["upload_resumable_mb_s"] = resumed["bytes"] / 1e6 / dt
                await http_json(port, "DELETE", f"/api/v1/recordings/{resumed['id']}")
            out["rss_upload_resumable_peak_mb"] = watch.peak / 1e6
            if args.idle_s:  # the probe's window (60 s) with nothing to do: the baseline
                await trio.sleep(args.idle_s)
                idle = (await http_json(port, "GET", "/api/v1/stats"))["loop_lag"]
                out["lag_p99_ms_idle"] = idle["p99_ms"]
            lags: list[float] = []
            _, dt = await run_job(port, meta["id"], screen=False, lags=lags)
            out["big_job_s"], out["big_job_mb_s"] = dt, meta["bytes"] / 1e6 / dt
            out["lag_p99_ms_end_of_job"] = lags[-1] if lags else None
            out["lag_p99_ms_max_during_job"] = max(lags, default=0.0)
            out["loadavg_job"] = os.getloadavg()
            during: list[float] = []
            async with trio.open_nursery() as both:  # a job, an upload and views at once
                both.start_soon(_second_upload, port, big, out)
                lags = []
                out["big_job_during_upload_s"] = await _job_with_views(
                    port, meta, args.views // 2, during, lags)
            out["lag_p99_ms_end_of_job_with_upload_and_views"] = lags[-1] if lags else None
            if during:
                out["view_during_job_and_upload_p50_ms"], \
                    out["view_during_job_and_upload_p99_ms"] = \
                    np.percentile(during, [50, 99]).tolist()
            out["rss_peak_mb"] = watch.peak / 1e6
            small, _ = await upload(port, ratio_file)
            out["ratio_mb"] = args.ratio_mb
            jobs, scipys = [], []
            for _ in range(args.reps):  # alternating, so both see the same machine
                jobs.append((await run_job(port, small["id"], screen=False))[1])
                scipys.append(await trio.to_thread.run_sync(scipy_in_memory, ratio_file))
            out["job_filter_runs_s"], out["scipy_runs_s"] = jobs, scipys
            out["job_filter_s"], out["scipy_s"] = min(jobs), min(scipys)
            screened, _ = await upload(port, screen_file)
            out["screen_mb"] = args.screen_mb
            out["job_screen_s"] = (await run_job(port, screened["id"], screen=True))[1]
            out["scipy_screen_file_s"] = await trio.to_thread.run_sync(scipy_in_memory,
                                                                       screen_file)
            if args.views:
                await _view_figures(port, meta, args.views, out)
            out["loadavg_end"] = os.getloadavg()
            nursery.cancel_scope.cancel()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out["job_vs_scipy"] = out["job_filter_s"] / out["scipy_s"]
    out["job_screen_vs_scipy"] = out["job_screen_s"] / out["scipy_screen_file_s"]
    return out


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


async def _view_figures(port: int, meta: dict[str, Any], count: int,
                        out: dict[str, Any]) -> None:
    """*count* random views, their latency client and server side, and /healthz on the
    same path for scale."""
    server_ms: list[float] = []
    lat = await views(port, meta, count, server_ms)
    out["view_p50_ms"], out["view_p99_ms"] = np.percentile(lat, [50, 99]).tolist()
    out["view_server_p50_ms"], out["view_server_p99_ms"] = np.percentile(
        server_ms, [50, 99]).tolist()
    base = []
    for _ in range(count):  # the same request path without the view's work
        t0 = time.perf_counter()
        await http_json(port, "GET", "/healthz")
        base.append((time.perf_counter() - t0) * 1000)
    out["healthz_p50_ms"], out["healthz_p99_ms"] = np.percentile(base, [50, 99]).tolist()


async def _job_with_views(port: int, meta: dict[str, Any], count: int,
                          latencies: list[float], lags: list[float]) -> float:
    """A job on *meta* while up to *count* views of it are asked, one after another;
    the job's wall time (the views stop with it)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(views, port, meta, count, [], latencies)
        _, took = await run_job(port, meta["id"], screen=False, lags=lags)
        nursery.cancel_scope.cancel()
    return took


async def _second_upload(port: int, path: Path, out: dict[str, Any]) -> None:
    answer, dt = await upload(port, path)
    out["upload2_mb_s"] = answer["bytes"] / 1e6 / dt


async def _wait_ready(port: int) -> None:
    with trio.fail_after(30):
        while True:
            try:
                await http_json(port, "GET", "/healthz")
                return
            except OSError:
                await trio.sleep(0.1)


def inprocess(frames: int, reps: int) -> dict[str, Any]:
    """No server: a filter-only JobRunner job vs in-memory sosfilt, alternating, with a
    10 ms trio sleep probe measuring the loop's lag during each job."""
    from vital_actors.jobs import JobRunner, JobSpec
    from vital_actors.settings import JobSettings, ScreenSettings
    from vital_actors.store import RecordingStore

    work = Path(tempfile.mkdtemp(prefix="bench-recordings-", dir="/tmp"))
    try:
        store = RecordingStore(work)
        x = (np.random.default_rng(0).normal(0, 100, (frames, 2)) + BASE).astype(np.int16)
        rec, writer = store.writer(fs=FS, channels=["a", "b"], dtype="int16",
                                   gain=[GAIN] * 2, baseline=[BASE] * 2)
        writer.append(x)
        store.commit(rec, writer, source_format="npy")
        sos = design(FilterSettings(), FS).sos

        async def job() -> tuple[float, float, float]:
            lags: list[float] = []
            runner = JobRunner(store, JobSettings(), ScreenSettings())

            async def probe() -> None:
                while True:
                    t = trio.current_time()
                    await trio.sleep(0.01)
                    lags.append(trio.current_time() - t - 0.01)

            async with trio.open_nursery() as nursery:
                await nursery.start(runner.run)
                nursery.start_soon(probe)
                await trio.sleep(1.0)  # the loop's lag with no job: the machine's share
                idle, lags[:] = list(lags), []
                j = runner.submit(JobSpec(recording=rec, screen=False))
                await runner.wait(j.id, lambda j: not j.active)
                nursery.cancel_scope.cancel()
            assert j.started is not None and j.finished is not None
            return (j.finished - j.started, float(np.percentile(lags, 99)) * 1000,
                    float(np.percentile(idle, 99)) * 1000)

        jobs, lags, idles, scipys = [], [], [], []
        for _ in range(reps):
            took, lag, idle = trio.run(job)
            jobs.append(took)
            lags.append(lag)
            idles.append(idle)
            t0 = time.perf_counter()
            scipy.signal.sosfilt(sos, (x.astype(np.float64) - BASE) / GAIN, axis=0)
            scipys.append(time.perf_counter() - t0)
        ratios = np.array(jobs) / np.array(scipys)
        return {"frames": frames, "job_s": jobs, "scipy_s": scipys, "lag_p99_ms": lags,
                "lag_p99_ms_idle_before": idles, "loadavg": os.getloadavg(),
                "min_over_min": min(jobs) / min(scipys),
                "median_of_pairs": float(np.median(ratios))}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=2.0)
    p.add_argument("--ratio-mb", type=float, default=256.0)
    p.add_argument("--screen-mb", type=float, default=32.0)
    p.add_argument("--reps", type=int, default=3, help="alternating job/scipy pairs (min)")
    p.add_argument("--views", type=int, default=400)
    p.add_argument("--tmp", type=Path, default=Path("/tmp"))
    p.add_argument("--idle-s", type=float, default=60.0,
                   help="idle wait before the big job: the server's lag probe (a 60 s "
                        "window) then gives the loop's lag with no job, 0: skip")
    p.add_argument("--source", choices=("synthetic", "mitbih"), default="synthetic",
                   help="the big file: synthetic ECG-like, or MIT-BIH DS1 records "
                        "repeated to --gb")
    p.add_argument("--no-resumable", dest="resumable", action="store_false",
                   help="skip the resumable upload of the big file")
    p.add_argument("--inprocess-frames", type=int, default=0,
                   help="only the in-process job vs sosfilt comparison over this many frames")
    args = p.parse_args()
    if args.inprocess_frames:
        result = inprocess(args.inprocess_frames, args.reps)
        print(json.dumps({k: _round(v) for k, v in result.items()}, indent=1))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-recordings-", dir=args.tmp))
    try:
        result = trio.run(bench, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: _round(v) for k, v in result.items()}, indent=1))


def _round(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 3)
    return [_round(x) for x in v] if isinstance(v, list) else v


if __name__ == "__main__":
    main()
