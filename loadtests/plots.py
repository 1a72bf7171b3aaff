"""PNG plots of a load-test report: latency over time, throughput, server RSS and CPU.

One figure per plot, one line per (target, N) run, so the targets compare at a glance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # after choosing the backend

__all__ = ["PLOTS", "write_plots"]

#: file name -> (title, y label, which series, which key)
PLOTS: dict[str, tuple[str, str, str, str]] = {
    "latency-p99.png": ("p99 latency of frames sent each second", "ms", "series", "p99_ms"),
    "latency-p50.png": ("p50 latency of frames sent each second", "ms", "series", "p50_ms"),
    "throughput.png": ("messages delivered per second", "messages/s", "series", "delivered"),
    "server-rss.png": ("server resident memory", "MB", "server_series", "rss_mb"),
    "server-cpu.png": ("server CPU", "% of one core", "server_series", "server_cpu"),
}


def write_plots(runs: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """Write every plot of :data:`PLOTS` for *runs* (report run dicts) into *out*."""
    written = []
    for name, (title, ylabel, which, key) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
        for run in runs:
            data = run[which]
            row = run["row"]
            stack = "" if row.get("clients", "lean") == "lean" else f" [{row['clients']}]"
            label = f"{row['target']}{stack} N={row['devices']}"
            ax.plot(data["t"], data[key], label=label, linewidth=1.2)
        ax.set_title(title)
        ax.set_xlabel("seconds since the first frame")
        ax.set_ylabel(ylabel)
        if key.endswith("_ms"):
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / name
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
