"""Heart rate and HRV from recent beats (R indices), as pure functions."""

from __future__ import annotations

import itertools
import statistics
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
    recent = [r for r in r_peaks if now - r <= HRV_WINDOW_S * fs]
    rr = [(b - a) / fs for a, b in itertools.pairwise(recent)]
    last10 = [(b - a) / fs for a, b in itertools.pairwise(recent)
              if now - b <= HR_WINDOW_S * fs]
    beats10 = sum(1 for r in recent if now - r <= HR_WINDOW_S * fs)
    hr_inst = round(60.0 / rr[-1], 1) if rr else None
    hr = round(60.0 / statistics.median(last10), 1) if last10 else None
    good = [x * 1000 for x in rr if RR_RANGE_S[0] <= x <= RR_RANGE_S[1]]
    sdnn = round(statistics.pstdev(good), 1) if len(good) >= 2 else None
    diffs = [(b - a) ** 2 for a, b in itertools.pairwise(good)]
    rmssd = round((sum(diffs) / len(diffs)) ** 0.5, 1) if diffs else None
    return Rhythm(hr_inst, hr, sdnn, rmssd, beats10)
