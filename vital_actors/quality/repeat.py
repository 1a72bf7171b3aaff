"""Beat-to-beat SNR: how much of the signal around the beats does not repeat.

An ECG repeats from beat to beat; noise does not. For each of detector A's beats, the
filtered detection channel from ``SEG_S[0]`` before to ``SEG_S[1]`` after the R peak is
compared with the same stretch of each of the ``LAG`` beats before it, outside the QRS
(``QRS_S`` around R, where a sample of jitter in R would dominate). Half the variance of
the difference estimates the noise variance (noise in both beats adds up), the smaller
of the ``LAG`` comparisons is kept (an ectopic beat differs from its neighbour, but in a
bigeminy it repeats the beat before that). Over a window, with the medians of the beats'
noise variances and of their QRS peak-to-peak amplitudes::

    snr_db = 10 log10((ptp^2 / 8) / noise)

which is how the MIT-BIH noise stress test defines the SNR of the noise it adds, here
measured without a clean reference. The medians let a few odd beats (PVCs, aberrant
beats) pass without lowering the estimate.

Framing: a beat is measured once its segment and its decision are both in, in R order,
from a history of the last ``HISTORY_S`` of the channel; a beat is measured only if its
segment starts within ``HISTORY_S`` of that moment (late search-back beats are left
out), so which beats count and when depends on the samples alone.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from .rhythm import median, sorted_median

__all__ = ["LAG", "MIN_BEATS", "QRS_S", "SEG_S", "BeatNoise", "history_kept", "measure"]

F64 = npt.NDArray[np.float64]
SEG_S = (0.25, 0.45)  # the stretch compared: before and after R
QRS_S = (0.07, 0.10)  # left out of the comparison, and where the QRS ptp is taken
LAG = 2  # compared with each of this many beats before, keeping the smaller noise
HISTORY_S = 1.5  # samples of the channel kept; a beat must be measured within this
MIN_BEATS = 3  # measured beats a window needs for an estimate
MAX_DB = 60.0  # estimates are capped here (a noiseless synthetic signal)


def history_kept(fs: float) -> int:
    """Samples of the channel kept before a block (the front end keeps them)."""
    return max(round(HISTORY_S * fs), round(SEG_S[0] * fs) + round(SEG_S[1] * fs))


@dataclass(slots=True)
class BeatNoise:
    """One stream's beat-to-beat noise estimator (detection channel, filtered).

    :meth:`beat` queues a beat, :meth:`advance` cuts the segments of the beats that
    are ready, :func:`measure` measures the cut segments of many streams in one numpy
    pass and :meth:`snr_db` gives a window's estimate. Each cut beat gets a number
    (``cut``); a step asks for the beats cut before it, so the estimate does not
    depend on when the measuring pass runs."""

    fs: float
    start: int  # first sample index of the run
    pre: int = 0
    post: int = 0
    keep: int = 0
    outside: npt.NDArray[np.intp] = field(default_factory=lambda: np.zeros(0, np.intp))
    qrs: slice = field(default_factory=lambda: slice(0))
    waiting: deque[tuple[int, int]] = field(default_factory=deque)  # (R, ready at)
    cut: int = 0  # beats cut so far
    fresh: list[tuple[int, F64]] = field(default_factory=list)  # cut, not measured: R, seg
    previous: deque[F64] = field(default_factory=lambda: deque(maxlen=LAG))
    # (number, R, noise variance, QRS ptp) of the measured beats, in order
    measured: deque[tuple[int, int, float, float]] = field(default_factory=deque)
    counted: int = 0  # the first of ``measured`` in the last step's window ...
    by_noise: list[float] = field(default_factory=list)  # ... their noise, sorted ...
    by_ptp: list[float] = field(default_factory=list)  # ... their heights, sorted
    nans: int = 0  # ... and how many of them have a NaN (then left out of the lists)

    def __post_init__(self) -> None:
        fs = self.fs
        self.pre, self.post = round(SEG_S[0] * fs), round(SEG_S[1] * fs)
        self.keep = history_kept(fs)
        q0, q1 = self.pre - round(QRS_S[0] * fs), self.pre + round(QRS_S[1] * fs)
        self.qrs = slice(q0, q1 + 1)
        width = self.pre + self.post
        self.outside = np.r_[0:q0, q1 + 1:width].astype(np.intp)

    def beat(self, r: int, decided: int) -> None:
        """A beat of detector A, in R order; measured once ready."""
        self.waiting.append((r, max(decided + 1, r + self.post)))

    def advance(self, until: int, full: F64, full_start: int) -> None:
        """Cut the segments of the waiting beats ready before sample *until*, in R
        order; *full* holds the channel from *full_start* up to at least *until*."""
        while self.waiting and self.waiting[0][1] <= until:
            r, ready = self.waiting.popleft()
            lo = r - self.pre
            if lo < max(self.start, ready - self.keep):
                continue  # its segment is no longer kept (whatever the framing)
            self.fresh.append((r, full[lo - full_start:r + self.post - full_start]))
            self.cut += 1

    def snr_db(self, lo: int, upto: int) -> float | None:
        """The estimate over the beats cut before number *upto* with R from *lo* on
        (None if fewer than ``MIN_BEATS``). Calls come with *lo* and *upto* not
        decreasing, after :func:`measure`.

        The window's beats are the first ``counted`` of ``measured``; their noise
        variances and heights are also kept sorted (``by_noise``, ``by_ptp``), so a
        step moves the beats that came and went and takes the medians by index."""
        m = self.measured
        while m and m[0][1] < lo:
            _, _, var, height = m.popleft()
            if self.counted:  # in the window: out of the sorted lists
                self.counted -= 1
                self._move(var, height, -1)
        while self.counted < len(m) and m[self.counted][0] < upto:
            _, _, var, height = m[self.counted]
            self.counted += 1
            self._move(var, height, 1)
        if self.counted < MIN_BEATS:
            return None
        if self.nans:  # a NaN has no place in a sorted list: the plain medians
            window = list(itertools.islice(m, self.counted))
            n, h = median([x[2] for x in window]), median([x[3] for x in window])
        else:
            n, h = sorted_median(self.by_noise), sorted_median(self.by_ptp)
        if n <= 0:
            return MAX_DB
        if h <= 0:
            return -MAX_DB
        return round(min(MAX_DB, 10 * math.log10(h * h / 8 / n)), 1)

    def _move(self, var: float, height: float, sign: int) -> None:
        """Put a beat's values into the sorted lists (*sign* 1) or take them out (-1)."""
        if math.isnan(var) or math.isnan(height):
            self.nans += sign
            return
        if sign > 0:
            insort(self.by_noise, var)
            insort(self.by_ptp, height)
        else:
            del self.by_noise[bisect_left(self.by_noise, var)]
            del self.by_ptp[bisect_left(self.by_ptp, height)]


def measure(streams: Sequence[BeatNoise]) -> None:
    """Measure the cut segments of *streams* (of one sampling rate) in one numpy pass:
    each against the ``LAG`` beats before it in its stream."""
    todo = [s for s in streams if s.fresh]
    if not todo:
        return
    first = todo[0]
    segs = np.array([seg for s in todo for _, seg in s.fresh])  # (beats, width)
    out = segs[:, first.outside]
    qrs = segs[:, first.qrs]
    ptp = (qrs.max(axis=1) - qrs.min(axis=1)).tolist()
    # Per new beat, the LAG beats before it in its stream (the stream's previous ones,
    # then its new ones), a row of zeros where there are fewer (marked ``missing``).
    zeros = np.zeros(out.shape[1])
    before: list[F64] = []
    missing: list[bool] = []
    j = 0
    for s in todo:
        last = list(s.previous)
        for _ in s.fresh:
            gap = LAG - len(last)
            if gap > 0:
                before.extend([zeros] * gap)
                missing.extend([True] * gap)
                before.extend(last)
                missing.extend([False] * len(last))
            else:
                before.extend(last[-LAG:])
                missing.extend([False] * LAG)
            last.append(out[j])
            j += 1
    d = np.array(before).reshape(len(out), LAG, -1) - out[:, None, :]  # (beats, LAG, samples)
    n = d.shape[2]
    mean = d.sum(axis=2) / n
    var = (d * d).sum(axis=2) / n - mean * mean
    var[np.array(missing).reshape(len(out), LAG)] = np.inf
    noise = (var.min(axis=1) / 2).tolist()
    j = 0
    for s in todo:
        k = s.cut - len(s.fresh)
        for r, _ in s.fresh:
            if len(s.previous):
                s.measured.append((k, r, noise[j], ptp[j]))
            s.previous.append(out[j])
            k, j = k + 1, j + 1
        s.fresh.clear()

