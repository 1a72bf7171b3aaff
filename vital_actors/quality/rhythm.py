"""Heart rate and HRV from recent beats (R indices), as pure functions."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["HRV_WINDOW_S", "Rhythm", "rhythm"]

HR_WINDOW_S = 10.0  # the median heart rate is over the RR intervals of the last 10 s
HRV_WINDOW_S = 60.0  # SDNN and RMSSD over the last 60 s
RR_RANGE_S = (0.25, 2.5)  # RR outside this (a missed or extra beat) is left out of HRV


@dataclass(frozen=True, slots=True)
class Rhythm:
    """Rates in bpm and HRV in ms; None when there are too few beats."""

    hr_inst: float | None
    hr: float | None  # from the median RR of the last 10 s
    sdnn_ms: float | None
    rmssd_ms: float | None
    beats: int  # beats in the last 10 s


def rhythm(r_peaks: Sequence[int], now: int, fs: float) -> Rhythm:
    """Rates at sample index *now* from the R indices *r_peaks* (sorted, before *now*)."""
    lo60, lo10 = now - HRV_WINDOW_S * fs, now - HR_WINDOW_S * fs
    rr: list[float] = []  # seconds, last 60 s
    rr10: list[float] = []
    beats10 = 0
    prev = None
    for r in r_peaks:  # one pass: this runs once a second for every stream
        if r < lo60:
            continue
        if r >= lo10:
            beats10 += 1
        if prev is not None:
            rr.append((r - prev) / fs)
            if r >= lo10:
                rr10.append(rr[-1])
        prev = r
    hr_inst = round(60.0 / rr[-1], 1) if rr else None
    hr = round(60.0 / _median(rr10), 1) if rr10 else None
    lo, hi = RR_RANGE_S
    good = [x * 1000 for x in rr if lo <= x <= hi]
    sdnn = rmssd = None
    if len(good) >= 2:
        mean = sum(good) / len(good)
        sdnn = round(math.sqrt(max(sum(x * x for x in good) / len(good) - mean * mean, 0.0)), 1)
        diffs = [b - a for a, b in itertools.pairwise(good)]
        rmssd = round(math.sqrt(sum(d * d for d in diffs) / len(diffs)), 1)
    return Rhythm(hr_inst, hr, sdnn, rmssd, beats10)


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
