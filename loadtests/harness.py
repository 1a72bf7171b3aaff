"""One scenario run: a target under N devices and their subscribers, measured.

    start the server process ─▶ idle subscribers (RSS before/after) ─▶ subscribers
      confirm ─▶ devices say hello ─▶ t0: frames every frame_s, staggered, ramped
           [ warm-up | measuring window: CPU, RSS, latency, msg/s | tail ] + grace
      ─▶ server stats (drops, loop lag) ─▶ clients close ─▶ SIGINT the server

A progress line is printed every second while it runs.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import trio

from vital_actors.lag import steady_collector
from vital_actors.settings import ServerSettings
from vital_actors.sources import Recording, data_dir, list_records, load_record, synthetic_ecg

from .clients import Book, Plan, connect_idle, make_plan, run_load
from .report import Row, series, summarize
from .scenario import Scenario
from .targets import HOST, Meter, Target, TargetError, get_json, http, running

__all__ = ["Outcome", "load_recordings", "run_scenario"]

#: Slack on top of a run's planned length before it is declared stuck.
STUCK_AFTER_S = 60.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """A run's figures, its per-second series and the server's own stats at the end."""

    row: Row
    series: dict[str, list[float]]  # per second of the run: latency and delivery
    server_series: dict[str, list[float]]  # per second: the server's CPU and RSS
    server_stats: dict[str, Any] | None
    errors: list[str]


def load_recordings(count: int, *, seconds: float, source: str = "mitdb", fs: float = 360.0,
                    channels: int = 2) -> tuple[list[Recording], str]:
    """Up to *count* MIT-BIH records (their first *seconds*), or synthetic ECG if asked
    for or if the data folder is absent; and a line saying which."""
    folder = (data_dir() or Path("/nonexistent")) / "mitdb"
    paths = list_records(folder)[:count] if source == "mitdb" and folder.is_dir() else []
    stop = round(seconds * 360)
    if paths:
        recs = [load_record(p, stop=stop) for p in paths]
        return recs, f"MIT-BIH {', '.join(r.name for r in recs)} from {folder}"
    recs = [synthetic_ecg(seconds=seconds, heart_rate=60 + 7 * i, seed=i, name=f"syn{i}",
                          fs=fs, channels=channels)
            for i in range(count)]
    why = "as asked" if source == "synthetic" else "no MIT-BIH data folder found"
    return recs, f"synthetic ECG ({why})"


async def _progress(book: Book, plan: Plan, meter: Meter, stop: float, label: str) -> None:
    """Print a line a second: time, frames sent, copies received, p99 of the last second."""
    await book.go.wait()
    tty = sys.stderr.isatty()  # a line rewritten in place, else one line every 5 s
    tick = 0
    while trio.current_time() < stop:
        await trio.sleep(1.0)
        tick += 1
        if not tty and tick % 5:
            continue
        now = time.perf_counter()
        sent = int(np.count_nonzero(~np.isnan(book.sent)))
        got = book.received[~np.isnan(book.received)]
        recent = book.received >= now - 1.0
        lat = (book.received - book.sent)[recent] * 1e3
        p99 = f"{np.percentile(lat, 99):6.1f}" if lat.size else "     -"
        cpu = meter.series["server_cpu"][-1] if meter.series["server_cpu"] else float("nan")
        print(f"{chr(13) if tty else ''}  {label}: t={now - book.t0_perf:5.1f}s sent {sent:>7} "
              f"received {got.size:>8}  p99(1 s) {p99} ms  server CPU {cpu:5.1f}%   ",
              end="" if tty else "\n", file=sys.stderr, flush=True)
    if tty:
        print(file=sys.stderr)


async def _idle_kb_each(target: Target, port: int, meter: Meter, count: int,
                        nursery: trio.Nursery, done: trio.Event, clients: str) -> float:
    """Connect *count* idle subscribers; the server's RSS growth per connection (KB)."""
    if count == 0:
        return float("nan")
    server = meter.processes["server"]
    before = server.memory_info().rss
    await nursery.start(partial(connect_idle, f"ws://{HOST}:{port}", count, done=done,
                                clients=clients))
    await trio.sleep(1.0)  # let the server settle its buffers
    return float(server.memory_info().rss - before) / count / 1024


async def _server_stats(target: Target, port: int) -> dict[str, Any] | None:
    if not target.has_api:
        return None
    try:
        stats: dict[str, Any] = await get_json(port, "/api/v1/stats")
    except (OSError, TargetError, ValueError) as exc:
        return {"error": str(exc)}
    return stats


async def _upload_for_jobs(target: Target, port: int, minutes: float) -> str | None:
    """Upload a synthetic recording for the jobs that run alongside; its id."""
    if not target.has_api:
        return None
    rec = synthetic_ecg(seconds=minutes * 60, seed=99, name="jobs")
    buf = io.BytesIO()
    np.save(buf, rec.samples)
    status, body = await http(port, "POST", "/api/v1/recordings?fs=360&gain=200"
                              "&baseline=1024&channels=MLII,V1&name=jobs.npy",
                              buf.getvalue(), "application/octet-stream")
    if status != 201:
        raise TargetError(f"upload for jobs: HTTP {status} {body}")
    return str(body["id"])


async def _start_jobs(port: int, recording: str, count: int) -> None:
    for _ in range(count):
        status, body = await http(port, "POST", "/api/v1/jobs", json.dumps(
            {"recording": recording, "priority": "low"}).encode())
        if status != 201:
            raise TargetError(f"starting a job: HTTP {status} {body}")


def _dropped(stats: dict[str, Any] | None) -> int:
    """Messages the server dropped for slow subscribers (all priorities), from its
    ``lanes.dropped`` figures in /api/v1/stats."""
    dropped = ((stats or {}).get("lanes") or {}).get("dropped") or {}
    return sum(v for v in dropped.values() if isinstance(v, int))


async def run_scenario(target: Target, devices: int, recordings: Sequence[Recording],
                       scenario: Scenario, *, log: Path, clients: str = "lean") -> Outcome:
    """Run *target* under *devices* devices and their subscribers, played by the
    *clients* stack; its figures."""
    load, timing = scenario.load, scenario.timing
    async with running(target, log) as (server, port):
        plan = make_plan(f"ws://{HOST}:{port}", recordings, devices=devices, kind=target.kind,
                         load=load, seconds=timing.sending_s, clients=clients)
        book = Book.for_plan(plan)
        meter = Meter(server)
        stats = None
        planned = timing.sending_s + load.ramp_s + timing.grace_s
        recording = (await _upload_for_jobs(target, port, load.job_minutes) if load.jobs
                     else None)
        with steady_collector(ServerSettings().gc_thresholds):  # as the server's
            async with trio.open_nursery() as idle:
                done = trio.Event()
                idle_kb = await _idle_kb_each(target, port, meter, load.idle_subscribers,
                                              idle, done, clients)
                with trio.fail_after(planned + STUCK_AFTER_S + 0.05 * load.idle_subscribers):
                    async with trio.open_nursery() as nursery:
                        started = trio.Event()
                        nursery.start_soon(partial(run_load, plan, book, grace_s=timing.grace_s,
                                                   churn_recording=recordings[0],
                                                   on_start=started))
                        await started.wait()
                        if recording is not None:
                            await _start_jobs(port, recording, load.jobs)
                        start = book.t0 + timing.warmup_s + load.ramp_s
                        nursery.start_soon(meter.measure, start, start + timing.measure_s)
                        nursery.start_soon(meter.track, book.t0, book.deadline)
                        nursery.start_soon(_progress, book, plan, meter, book.deadline,
                                           f"{target.name} N={devices}")
                        await trio.sleep_until(start + timing.measure_s + timing.tail_s)
                        stats = await _server_stats(target, port)
                        if stats is not None and recording is not None:
                            stats["jobs"] = (await get_json(port, "/api/v1/jobs"))["jobs"]
                done.set()
    return _outcome(target, plan, book, meter, scenario, stats, idle_kb)


def _outcome(target: Target, plan: Plan, book: Book, meter: Meter, scenario: Scenario,
             stats: dict[str, Any] | None, idle_kb: float) -> Outcome:
    for error in book.errors[:5]:
        print(f"  {target.name} N={plan.devices}: {error}", file=sys.stderr)
    start = book.t0_perf + scenario.timing.warmup_s + scenario.load.ramp_s
    lag = (stats or {}).get("loop_lag", {}).get("p99_ms", float("nan"))
    bits = 8 * book.wire_bytes / book.wire_samples if book.wire_samples else float("nan")
    row = summarize(
        target.name, book.sent, book.received, window=(start, start + scenario.timing.measure_s),
        samples_per_message=plan.samples_per_frame * plan.channels,
        server_cpu=meter.usage["server"].cpu_percent, rss_mb=meter.usage["server"].rss_mb,
        harness_cpu=meter.usage["harness"].cpu_percent,
        machine_cpu=meter.usage["machine"].cpu_percent,
        other_cpu_peak=meter.usage["other_peak"].cpu_percent,
        bits_per_sample=bits, loop_lag_p99_ms=float(lag), dropped=_dropped(stats),
        idle_kb_each=idle_kb, clients=plan.clients,
    )
    seconds = int(np.ceil(book.deadline - book.t0))
    per_s = series(book.sent, book.received, t0=book.t0_perf, seconds=seconds)
    return Outcome(row, per_s, meter.series, stats, book.errors[:50])
