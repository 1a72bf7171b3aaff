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

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["LAG", "MIN_BEATS", "QRS_S", "SEG_S", "BeatNoise"]

F64 = npt.NDArray[np.float64]
SEG_S = (0.25, 0.45)  # the stretch compared: before and after R
QRS_S = (0.07, 0.10)  # left out of the comparison, and where the QRS ptp is taken
LAG = 2  # compared with each of this many beats before, keeping the smaller noise
HISTORY_S = 1.5  # samples of the channel kept; a beat must be measured within this
MIN_BEATS = 3  # measured beats a window needs for an estimate
MAX_DB = 60.0  # estimates are capped here (a noiseless synthetic signal)


@dataclass(slots=True)
class BeatNoise:
    """One stream's beat-to-beat noise estimator (detection channel, filtered)."""

    fs: float
    start: int  # first sample index of the run
    pre: int = 0
    post: int = 0
    keep: int = 0
    outside: npt.NDArray[np.intp] = field(default_factory=lambda: np.zeros(0, np.intp))
    qrs: slice = field(default_factory=lambda: slice(0))
    history: F64 = field(default_factory=lambda: np.zeros(0))
    waiting: deque[tuple[int, int]] = field(default_factory=deque)  # (R, ready at)
    previous: deque[F64] = field(default_factory=lambda: deque(maxlen=LAG))
    measured: deque[tuple[int, float, float]] = field(default_factory=deque)  # R, var, ptp

    def __post_init__(self) -> None:
        fs = self.fs
        self.pre, self.post = round(SEG_S[0] * fs), round(SEG_S[1] * fs)
        self.keep = max(round(HISTORY_S * fs), self.pre + self.post)
        q0, q1 = self.pre - round(QRS_S[0] * fs), self.pre + round(QRS_S[1] * fs)
        self.qrs = slice(q0, q1 + 1)
        width = self.pre + self.post
        self.outside = np.r_[0:q0, q1 + 1:width].astype(np.intp)

    def beat(self, r: int, decided: int) -> None:
        """A beat of detector A, in R order; measured once ready."""
        self.waiting.append((r, max(decided + 1, r + self.post)))

    def advance(self, until: int, full: F64, full_start: int) -> None:
        """Measure the waiting beats ready before sample *until*, in R order; *full*
        holds the channel from *full_start* up to at least *until*."""
        while self.waiting and self.waiting[0][1] <= until:
            r, ready = self.waiting.popleft()
            lo = r - self.pre
            if lo < max(self.start, ready - self.keep):
                continue  # its segment is no longer kept (whatever the framing)
            seg = full[lo - full_start:r + self.post - full_start]
            out = seg[self.outside]
            ptp = float(seg[self.qrs].max() - seg[self.qrs].min())
            if self.previous:
                var = min(float(np.var(out - p)) for p in self.previous) / 2
                self.measured.append((r, var, ptp))
            self.previous.append(out)

    def keep_history(self, full: F64) -> None:
        self.history = full[-self.keep:].copy()

    def snr_db(self, lo: int) -> float | None:
        """The estimate over the measured beats with R from *lo* on (None if too few)."""
        m = self.measured
        while m and m[0][0] < lo:
            m.popleft()
        if len(m) < MIN_BEATS:
            return None
        noise = statistics.median(x[1] for x in m)
        ptp = statistics.median(x[2] for x in m)
        if noise <= 0:
            return MAX_DB
        if ptp <= 0:
            return -MAX_DB
        return round(min(MAX_DB, 10 * math.log10(ptp * ptp / 8 / noise)), 1)
