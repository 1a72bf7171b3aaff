"""One scenario run: a target under N devices x 1 subscriber each, measured.

    start the server process ─▶ N subscribers confirm ─▶ N devices say hello
      ─▶ t0: frames every frame_s, staggered over one period
           [ warm-up | measuring window: CPU, RSS, latency, msg/s | tail ] + grace
      ─▶ clients close ─▶ SIGINT the server
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from vital_actors.sources import Recording, data_dir, list_records, load_record, synthetic_ecg

from .clients import Book, Plan, make_plan, run_load
from .report import Row, summarize
from .targets import HOST, Meter, Target, running

__all__ = ["Scenario", "load_recordings", "run_scenario"]

#: Slack on top of a run's planned length before it is declared stuck.
STUCK_AFTER_S = 60.0


@dataclass(frozen=True, slots=True)
class Scenario:
    """The load: frames of *frame_s* seconds for *warmup_s* + *measure_s* + *tail_s*,
    then up to *grace_s* for stragglers. The tail keeps the first devices' goodbyes
    (close handshakes, ``disconnected`` events) out of the measuring window."""

    frame_s: float = 0.1
    warmup_s: float = 4.0
    measure_s: float = 20.0
    tail_s: float = 1.0
    grace_s: float = 5.0

    @property
    def sending_s(self) -> float:
        return self.warmup_s + self.measure_s + self.tail_s


def load_recordings(count: int, *, seconds: float) -> tuple[list[Recording], str]:
    """Up to *count* MIT-BIH records (their first *seconds*), or synthetic ECG if the
    data folder is absent; and a line saying which."""
    folder = (data_dir() or Path("/nonexistent")) / "mitdb"
    paths = list_records(folder)[:count] if folder.is_dir() else []
    stop = round(seconds * 360)
    if paths:
        recs = [load_record(p, stop=stop) for p in paths]
        return recs, f"MIT-BIH {', '.join(r.name for r in recs)} from {folder}"
    recs = [synthetic_ecg(seconds=seconds, heart_rate=60 + 7 * i, seed=i, name=f"syn{i}")
            for i in range(count)]
    return recs, "synthetic ECG (no MIT-BIH data folder found)"


async def run_scenario(target: Target, devices: int, recordings: Sequence[Recording],
                       scenario: Scenario, *, log: Path) -> Row:
    """Run *target* under *devices* devices and subscribers; its figures."""
    async with running(target, log) as (server, port):
        plan = make_plan(f"ws://{HOST}:{port}", recordings, devices=devices, kind=target.kind,
                         frame_s=scenario.frame_s, seconds=scenario.sending_s)
        book = Book.for_plan(plan)
        meter = Meter(server)
        with trio.fail_after(scenario.sending_s + scenario.grace_s + STUCK_AFTER_S):
            async with trio.open_nursery() as nursery:
                started = trio.Event()
                nursery.start_soon(partial(run_load, plan, book, grace_s=scenario.grace_s,
                                           on_start=started))
                await started.wait()
                start = book.t0 + scenario.warmup_s
                window = (start, start + scenario.measure_s)
                nursery.start_soon(meter.measure, *window)
    return _row(target, plan, book, meter, scenario)


def _row(target: Target, plan: Plan, book: Book, meter: Meter, scenario: Scenario) -> Row:
    for error in book.errors[:5]:
        print(f"  {target.name} N={plan.devices}: {error}", file=sys.stderr)
    start = book.t0_perf + scenario.warmup_s
    return summarize(
        target.name, book.sent, book.received, window=(start, start + scenario.measure_s),
        server_cpu=meter.usage["server"].cpu_percent, rss_mb=meter.usage["server"].rss_mb,
        harness_cpu=meter.usage["harness"].cpu_percent,
        machine_cpu=meter.usage["machine"].cpu_percent,
        other_cpu_peak=meter.usage["other_peak"].cpu_percent,
    )
