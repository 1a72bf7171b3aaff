"""Counters the actors bump, and per-second rates derived from them.

One :class:`Stats` per server; the HTTP API and the Prometheus collector read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import trio

__all__ = ["RATE_FIELDS", "Counters", "Stats", "run_rates"]

#: Counters that also get a per-second rate.
RATE_FIELDS = ("messages_in", "samples_in", "bytes_in", "messages_out", "samples_out",
               "bytes_out")


@dataclass(slots=True)
class Counters:
    messages_in: int = 0
    samples_in: int = 0
    bytes_in: int = 0
    messages_out: int = 0  # deliveries: one message to one subscriber
    samples_out: int = 0
    bytes_out: int = 0
    encoded: int = 0  # messages encoded and framed (once each, whatever the fan-out)
    gaps: int = 0
    duplicates: int = 0
    evicted_subscribers: int = 0
    recoveries: int = 0  # topics subscribed with since (issue 6)
    recovered: int = 0  # of those, with nothing lost
    replayed: int = 0  # messages replayed to subscribers, from the ring or the archive
    replayed_archive: int = 0  # of those, read back from the live archive
    api_restarts: int = 0  # the HTTP API's hypercorn died and was started again
    archive_runs_pruned: int = 0  # finished archive runs deleted (retention, free space)
    archive_bytes_pruned: int = 0
    archive_bytes_trimmed: int = 0  # freed from the start of runs kept (retention, space)
    rejected: dict[str, int] = field(default_factory=dict)  # by error reason


@dataclass(slots=True)
class Stats:
    totals: Counters = field(default_factory=Counters)
    rates: dict[str, float] = field(default_factory=lambda: dict.fromkeys(RATE_FIELDS, 0.0))
    devices: int = 0
    subscribers: int = 0

    def reject(self, reason: str) -> None:
        self.totals.rejected[reason] = self.totals.rejected.get(reason, 0) + 1

    def snapshot(self) -> dict[str, int]:
        return {f.name: getattr(self.totals, f.name) for f in fields(Counters)
                if f.name != "rejected"}


async def run_rates(stats: Stats, *, interval: float,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Every *interval* seconds, set ``stats.rates`` from the change in the counters."""
    last = stats.snapshot()
    last_t = trio.current_time()
    task_status.started()
    while True:
        await trio.sleep(interval)
        now, now_t = stats.snapshot(), trio.current_time()
        dt = max(now_t - last_t, 1e-9)
        stats.rates = {k: (now[k] - last[k]) / dt for k in RATE_FIELDS}
        last, last_t = now, now_t
