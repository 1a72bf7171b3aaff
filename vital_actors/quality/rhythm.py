"""Heart rate and HRV from recent beats (R indices).

:func:`rhythm` is the definition (a pure function of the beats); :class:`RhythmState`
keeps the same figures up to date beat by beat with running sums, so a quality step
costs a few operations instead of a pass over the last minute of beats.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["HRV_WINDOW_S", "Rhythm", "RhythmState", "median", "remembered_round", "rhythm",
           "round1", "round4", "sorted_median"]

HR_WINDOW_S = 10.0  # the median heart rate is over the RR intervals of the last 10 s
HRV_WINDOW_S = 60.0  # SDNN and RMSSD over the last 60 s
RR_RANGE_S = (0.25, 2.5)  # RR outside this (a missed or extra beat) is left out of HRV


def remembered_round(digits: int) -> Callable[[float], float]:
    """``round(x, digits)`` as a function that remembers its answers, for values that
    come from a small set (rates from RR intervals, times from whole samples, shares of
    a few counts): ``round`` with digits costs a correctly rounded decimal conversion
    (~0.3 us), a look-up a tenth of that. Only for values that are never -0.0: it and
    0.0 are one key."""
    table: dict[float, float] = {}

    def rounded(x: float) -> float:
        try:
            return table[x]
        except KeyError:
            if len(table) > 100_000:
                table.clear()
            value = table[x] = round(x, digits)
            return value

    return rounded


round1 = remembered_round(1)
round4 = remembered_round(4)


@dataclass(slots=True)
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
    hr = round(60.0 / median(rr10), 1) if rr10 else None
    lo, hi = RR_RANGE_S
    good = [x * 1000 for x in rr if lo <= x <= hi]
    sdnn = rmssd = None
    if len(good) >= 2:
        mean = sum(good) / len(good)
        sdnn = round(math.sqrt(max(sum(x * x for x in good) / len(good) - mean * mean, 0.0)), 1)
        diffs = [b - a for a, b in itertools.pairwise(good)]
        rmssd = round(math.sqrt(sum(d * d for d in diffs) / len(diffs)), 1)
    return Rhythm(hr_inst, hr, sdnn, rmssd, beats10)


def median(xs: Sequence[float]) -> float:
    """The median of a non-empty *xs* (plain Python: a dozen values, once a second)."""
    return sorted_median(sorted(xs))


@dataclass(slots=True)
class RhythmState:
    """:func:`rhythm` kept up to date: :meth:`push` each beat (in order), :meth:`at` a
    step. The same figures as ``rhythm(beats, now, fs)`` over the pushed beats
    (test), from running sums over the beats of the last ``HRV_WINDOW_S`` and a sorted
    list of the RR intervals of the last ``HR_WINDOW_S`` (the median by index: a step
    costs a few operations, not a pass over the window's beats and a sort)."""

    fs: float
    beats: deque[tuple[int, float | None]] = field(default_factory=deque)  # R, RR (s)
    good: deque[float] = field(default_factory=deque)  # RR in range (ms), in order
    total: float = 0.0  # sum of ``good`` ...
    squares: float = 0.0  # ... of its squares ...
    diffs: float = 0.0  # ... and of its successive differences squared
    # The beats of ``beats`` from the last step's 10-s window on (a suffix of it) ...
    recent: deque[tuple[int, float | None]] = field(default_factory=deque)
    rr10: list[float] = field(default_factory=list)  # ... and their RRs, sorted

    def push(self, r: int) -> None:
        rr = (r - self.beats[-1][0]) / self.fs if self.beats else None
        self.beats.append((r, rr))
        self.recent.append((r, rr))
        if rr is not None:
            insort(self.rr10, rr)
            if RR_RANGE_S[0] <= rr <= RR_RANGE_S[1]:
                ms = rr * 1000
                if self.good:
                    self.diffs += (ms - self.good[-1]) ** 2
                self.good.append(ms)
                self.total += ms
                self.squares += ms * ms

    def _expire(self, lo: float) -> None:
        beats = self.beats
        while beats and beats[0][0] < lo:
            beats.popleft()
            r, rr = beats[0] if beats else (0, None)
            if rr is not None:
                # The new first beat's RR reaches out of the window: it no longer counts.
                beats[0] = (r, None)
                if self.recent and self.recent[0][0] == r:  # ``recent`` is a suffix
                    self.recent[0] = (r, None)
                    self._drop(rr)
                if RR_RANGE_S[0] <= rr <= RR_RANGE_S[1]:
                    ms = self.good.popleft()
                    self.total -= ms
                    self.squares -= ms * ms
                    if self.good:
                        self.diffs -= (self.good[0] - ms) ** 2
        if not self.good:  # no drift left over from the running sums
            self.total = self.squares = self.diffs = 0.0

    def _drop(self, rr: float) -> None:
        del self.rr10[bisect_left(self.rr10, rr)]

    def at(self, now: int) -> Rhythm:
        """The rates at sample index *now* (not before the last push's)."""
        fs = self.fs
        lo10 = now - HR_WINDOW_S * fs
        recent = self.recent
        while recent and recent[0][0] < lo10:  # first: then _expire finds in ``recent``
            rr = recent.popleft()[1]           # only beats it keeps
            if rr is not None:
                self._drop(rr)
        lo60 = now - HRV_WINDOW_S * fs
        beats = self.beats
        if beats and beats[0][0] < lo60:  # (with none to expire, _expire changes nothing)
            self._expire(lo60)
        # only the first beat kept has no RR (see _expire)
        last = beats[-1][1] if beats else None
        hr_inst = round1(60.0 / last) if last is not None else None
        s = self.rr10
        hr = round1(60.0 / sorted_median(s)) if s else None
        sdnn = rmssd = None
        n = len(self.good)
        if n >= 2:
            mean = self.total / n
            sdnn = round(math.sqrt(max(self.squares / n - mean * mean, 0.0)), 1)
            rmssd = round(math.sqrt(max(self.diffs, 0.0) / (n - 1)), 1)
        return Rhythm(hr_inst, hr, sdnn, rmssd, len(recent))


def sorted_median(s: Sequence[float]) -> float:
    """:func:`median` of an already sorted non-empty *s*."""
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
