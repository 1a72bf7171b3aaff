"""From stamps to figures: one :class:`Row` per run, and the markdown tables.

Pure functions of numpy arrays and rows: no I/O, no trio.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import numpy.typing as npt

__all__ = ["Row", "generator_table", "median_rows", "ratio_table", "series", "summarize",
           "table"]

Stamps = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Row:
    """The figures of one target at one N (or the median of several runs)."""

    target: str
    devices: int
    delivered_per_s: float
    samples_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    server_cpu: float
    cpu_us_per_msg: float
    rss_mb: float
    harness_cpu: float
    other_cpu: float
    other_cpu_peak: float
    sent: int
    lost: int
    bits_per_sample: float = float("nan")
    loop_lag_p99_ms: float = float("nan")
    dropped: int = 0
    idle_kb_each: float = float("nan")
    runs: int = 1
    clients: str = "lean"  # the load generator's client stack (loadtests.clients.CLIENTS)
    harness_us_per_msg: float = float("nan")  # the generator's CPU per delivered message

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def label(self) -> str:
        """The target, and the client stack when it is not the default (lean) one."""
        return self.target if self.clients == "lean" else f"{self.target} [{self.clients}]"


def summarize(target: str, sent: Stamps, received: Stamps, *, window: tuple[float, float],
              samples_per_message: int, server_cpu: float, rss_mb: float, harness_cpu: float,
              machine_cpu: float, other_cpu_peak: float, bits_per_sample: float = np.nan,
              loop_lag_p99_ms: float = np.nan, dropped: int = 0,
              idle_kb_each: float = np.nan, clients: str = "lean") -> Row:
    """Figures of one run. *window* is (start, stop) on the stamps' clock.

    *sent* is (devices, seq); *received* is (listeners, devices, seq): every measured
    subscriber's copy counts. Latency covers frames sent in the window; delivered counts
    messages received in it; lost counts copies of frames sent at any time and never
    received. CPU figures are % of one core over the window; *machine_cpu* is all
    processes', so the other tenants' load is what the server and the harness do not
    account for; *other_cpu_peak* is that load in its busiest second. The per-message
    CPU figures divide by the messages delivered in the window.
    """
    start, stop = window
    sent_b = np.broadcast_to(sent, received.shape)
    in_window = (sent_b >= start) & (sent_b < stop) & ~np.isnan(received)
    latency_ms = (received[in_window] - sent_b[in_window]) * 1e3
    p50, p95, p99, top = (np.percentile(latency_ms, [50, 95, 99, 100]) if latency_ms.size
                          else (np.nan,) * 4)
    delivered = int(np.count_nonzero((received >= start) & (received < stop)))
    rate = delivered / (stop - start)
    was_sent = ~np.isnan(sent_b)
    return Row(
        target=target, devices=sent.shape[0], delivered_per_s=rate,
        samples_per_s=rate * samples_per_message,
        p50_ms=float(p50), p95_ms=float(p95), p99_ms=float(p99), max_ms=float(top),
        server_cpu=server_cpu, cpu_us_per_msg=server_cpu / 100 / rate * 1e6 if rate else np.nan,
        rss_mb=rss_mb, harness_cpu=harness_cpu, clients=clients,
        harness_us_per_msg=harness_cpu / 100 / rate * 1e6 if rate else np.nan,
        other_cpu=max(0.0, machine_cpu - server_cpu - harness_cpu),
        other_cpu_peak=max(0.0, other_cpu_peak),
        sent=int(np.count_nonzero(was_sent)),
        lost=int(np.count_nonzero(was_sent & np.isnan(received))),
        bits_per_sample=bits_per_sample, loop_lag_p99_ms=loop_lag_p99_ms, dropped=dropped,
        idle_kb_each=idle_kb_each,
    )


def series(sent: Stamps, received: Stamps, *, t0: float, seconds: int) -> dict[str, list[float]]:
    """Per second since *t0*: latency p50/p99 of frames sent in that second, and
    messages delivered in it (for the plots and the JSON report)."""
    sent_b = np.broadcast_to(sent, received.shape)
    ok = ~np.isnan(received)
    lat = (received[ok] - sent_b[ok]) * 1e3
    sec = np.floor(sent_b[ok] - t0).astype(np.int64)
    got = np.floor(received[ok] - t0).astype(np.int64)
    out: dict[str, list[float]] = {"t": [], "p50_ms": [], "p99_ms": [], "delivered": []}
    for t in range(seconds):
        mine = lat[sec == t]
        out["t"].append(float(t))
        out["p50_ms"].append(float(np.percentile(mine, 50)) if mine.size else float("nan"))
        out["p99_ms"].append(float(np.percentile(mine, 99)) if mine.size else float("nan"))
        out["delivered"].append(float(np.count_nonzero(got == t)))
    return out


def median_rows(rows: Iterable[Row]) -> list[Row]:
    """One row per (target, devices, clients): the median of each figure over its runs
    (lost and sent are summed), in first-seen order."""
    groups: dict[tuple[str, int, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.target, row.devices, row.clients), []).append(row)
    out = []
    for (target, devices, clients), group in groups.items():
        values: dict[str, object] = {"target": target, "devices": devices, "runs": len(group),
                                     "clients": clients}
        for f in fields(Row):
            if f.name in values:
                continue
            column = [getattr(r, f.name) for r in group]
            values[f.name] = sum(column) if f.name in ("sent", "lost", "dropped") else (
                statistics.median(column))
        out.append(Row(**values))  # type: ignore[arg-type]
    return out


_COLUMNS = (
    ("target", "label", "{}"), ("N", "devices", "{}"),
    ("delivered msg/s", "delivered_per_s", "{:.0f}"), ("samples/s", "samples_per_s", "{:.0f}"),
    ("p50 ms", "p50_ms", "{:.2f}"), ("p95 ms", "p95_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"), ("max ms", "max_ms", "{:.1f}"),
    ("bits/sample", "bits_per_sample", "{:.1f}"), ("loop lag p99 ms", "loop_lag_p99_ms", "{:.1f}"),
    ("server CPU %", "server_cpu", "{:.1f}"), ("CPU µs/msg", "cpu_us_per_msg", "{:.0f}"),
    ("RSS MB", "rss_mb", "{:.1f}"), ("harness CPU %", "harness_cpu", "{:.0f}"),
    ("harness µs/msg", "harness_us_per_msg", "{:.0f}"),
    ("other CPU % (peak 1 s)", "other_cpu", "{:.0f}"),
    ("dropped", "dropped", "{}"), ("idle KB each", "idle_kb_each", "{:.1f}"),
    ("lost / sent", "lost", "{}"),
)


_OTHER = [attr for _, attr, _ in _COLUMNS].index("other_cpu")


def _markdown(header: Sequence[str], lines: Iterable[Sequence[str]]) -> str:
    head = "| " + " | ".join(header) + " |"
    rule = "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"
    return "\n".join([head, rule, *("| " + " | ".join(cells) + " |" for cells in lines)])


def table(rows: Sequence[Row]) -> str:
    """The measured figures, one line per row."""
    def cells(row: Row) -> list[str]:
        out = [fmt.format(getattr(row, attr)) for _, attr, fmt in _COLUMNS]
        out[_OTHER] += f" ({row.other_cpu_peak:.0f})"
        out[-1] = f"{row.lost} / {row.sent}"
        return [c.replace("nan", "-") for c in out]
    return _markdown([name for name, _, _ in _COLUMNS], (cells(r) for r in rows))


_RATIOS = (("delivered msg/s", "delivered_per_s"), ("p50", "p50_ms"), ("p99", "p99_ms"),
           ("max", "max_ms"), ("server CPU", "server_cpu"), ("CPU/msg", "cpu_us_per_msg"),
           ("RSS", "rss_mb"))


def _pairs(rows: Sequence[Row], key: Callable[[Row], object],
           is_base: Callable[[Row], bool]) -> list[tuple[Row, Row]]:
    """(row, its baseline row): every row that is not a baseline and has one of its *key*."""
    base = {key(r): r for r in rows if is_base(r)}
    return [(row, base[key(row)]) for row in rows if not is_base(row) and key(row) in base]


def ratio_table(rows: Sequence[Row], *, baseline: str = "relay") -> str:
    """Each non-baseline row divided by the baseline row of the same N and client stack
    (x times)."""
    lines = [[f"{row.label} / {ref.label}", str(row.devices),
              *(_ratio(getattr(row, attr), getattr(ref, attr)) for _, attr in _RATIOS)]
             for row, ref in _pairs(rows, lambda r: (r.devices, r.clients),
                                    lambda r: r.target == baseline)]
    if not lines:
        return f"(no ratios: the run has no {baseline!r} row beside another target)"
    return _markdown(["ratio", "N", *(name for name, _ in _RATIOS)], lines)


def generator_table(rows: Sequence[Row], *, baseline: str = "lean") -> str:
    """The load generator's own cost: each row of another client stack beside the
    *baseline* stack's row of the same target and N (empty when there is none)."""
    lines = [[row.target, str(row.devices), f"{row.clients} / {baseline}",
              f"{row.harness_cpu:.0f} / {ref.harness_cpu:.0f}",
              f"{row.harness_us_per_msg:.0f} / {ref.harness_us_per_msg:.0f}",
              _ratio(row.harness_us_per_msg, ref.harness_us_per_msg)]
             for row, ref in _pairs(rows, lambda r: (r.target, r.devices),
                                    lambda r: r.clients == baseline)]
    if not lines:
        return ""
    return _markdown(["target", "N", "clients", "harness CPU %", "harness µs/msg",
                      "µs/msg ratio"], lines)


def _ratio(value: float, ref: float) -> str:
    return f"{value / ref:.2f}x" if ref and np.isfinite(ref) and np.isfinite(value) else "-"
