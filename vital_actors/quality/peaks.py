"""Detector A's decisions: which MWI peaks are beats (Pan-Tompkins' adaptive rules).

A :class:`PeakTracker` takes the candidate peaks of one stream in order and keeps
Pan-Tompkins' running signal and noise peak levels. Rules, with fs-free times:

- learning: the candidates of the first 2 s set the levels (signal = half the largest
  peak, noise = an eighth of that), then are replayed through the rules below; but
  only once another peak is at least half the largest (two beats agree; a spike as
  electrodes touch and the beats do not): until then learning goes on, up to 5 s (two
  beats even at 25 bpm), and then the largest counts for at most twice the second;
- a candidate above ``noise + 0.25 * (signal - noise)`` is a beat unless it falls in the
  200 ms refractory period, or within 360 ms of the last beat at under half its
  height (a T wave);
- search-back: when a candidate comes more than 1.66 mean RR (of the last 8) after the
  last beat, the largest noise peak since then, if above half the threshold and past
  the refractory period, becomes a beat (late, but in order);
- a beat raises the signal level by at most what a peak 8 times the level would (on the
  22 DS1 records no beat came above 5 times it), so one artefact taken for a beat
  raises the threshold by at most 1.9 times and the beats after it are still found;
- learning leaves out candidates whose MWI no QRS reaches (``ARTEFACT_MWI``);
- :meth:`PeakTracker.relearn` sets the levels again from given heights (the stream
  calls it when detector B vouches for a rhythm that A has not found for 8 s);
- a long silence (> 3 s without a beat) halves the signal level per candidate, so a
  signal that came back smaller is found again; but not below 16 times the noise
  level, so that the noise of a beatless line (asystole) does not become beats.

Pure and deterministic: the same candidates give the same beats whatever the framing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["Beat", "PeakTracker"]

LEARN_S = 2.0
REFRACTORY_S = 0.2
T_WAVE_S = 0.36
MISS_RR = 1.66
SILENCE_S = 3.0
SILENCE_FLOOR = 16.0  # ... but never below this many times the noise level
LEARN_TOP = 2.0  # learning ends when another peak is within this factor of the largest
LEARN_MAX_S = 5.0  # ... or at this age, the largest counting for at most LEARN_TOP x
BEAT_CAP = 8.0  # a beat moves the signal level as a peak of at most this x the level
RECENT_S = 8.0  # candidates kept for a relearn (see PeakTracker.relearn)
#: Learning leaves out candidates above this MWI (in mV, fs-free): no QRS comes near
#: it (DS1's largest beat: 79; a 5-sample pop of 10 mV gives 147, of 30 mV 407).
ARTEFACT_MWI = 250.0


@dataclass(slots=True)
class Beat:
    """A detected beat: R index, the sample index that decided it, RR (samples, 0 for
    the first), confidence in [0, 1] and whether search-back found it."""

    r: int
    decided: int
    rr: int
    confidence: float
    searchback: bool = False


@dataclass(slots=True)
class PeakTracker:
    fs: float
    start: int  # first sample index of the run
    spk: float = 0.0
    npk: float = 0.0
    learning: list[tuple[int, float, int]] | None = field(default_factory=list)
    last_r: int | None = None
    last_v: float = 0.0
    rrs: deque[int] = field(default_factory=lambda: deque(maxlen=8))
    rr_sum: int = 0  # sum(rrs), kept (integers: exact)
    noise: list[tuple[int, float, int]] = field(default_factory=list)  # for search-back
    recent: deque[tuple[int, float]] = field(default_factory=deque)  # (R, value), 8 s
    relearnt: int | None = None  # R of the candidate at the last relearn
    # The rules' times in samples (floats, as the expressions they stand for).
    refractory: float = field(init=False, default=0.0)
    t_wave: float = field(init=False, default=0.0)
    silence: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        fs = self.fs
        self.refractory, self.t_wave, self.silence = REFRACTORY_S * fs, T_WAVE_S * fs, \
            SILENCE_S * fs

    @property
    def threshold(self) -> float:
        return self.npk + 0.25 * (self.spk - self.npk)

    def push(self, decided: int, value: float, r: int) -> list[Beat]:
        """Take one candidate (in order); return the beats it confirms."""
        if self.learning is not None:
            self.learning.append((decided, value, r))
            age = r - self.start
            if age < LEARN_S * self.fs:
                return []
            top = _learnt_top([v for _, v, _ in self.learning],
                              final=age >= LEARN_MAX_S * self.fs)
            if top is None:
                return []
            self.spk, self.npk = 0.5 * top, 0.0625 * top
            pending, self.learning = self.learning, None
            # Replayed now, so decided (and emitted) at this candidate's index.
            return [b for _, v, at in pending for b in self._judge(decided, v, at)]
        recent = self.recent
        recent.append((r, value))
        while r - recent[0][0] > RECENT_S * self.fs:
            recent.popleft()
        return self._judge(decided, value, r)

    def relearn(self, values: list[float], r: int) -> None:
        """Set the levels again from *values*, the heights of recent candidates that
        are beats by other evidence (detector B), as learning does from the first
        seconds' largest: for a detector held silent by levels far above the beats."""
        top = sorted(values)[len(values) // 2]
        self.spk, self.npk = 0.5 * top, 0.0625 * top
        self.rrs.clear()
        self.rr_sum = 0
        self.noise.clear()
        self.relearnt = r

    def _judge(self, decided: int, value: float, r: int) -> list[Beat]:
        out: list[Beat] = []
        last_r = self.last_r
        if last_r is not None:
            since = r - last_r
            if since > self.silence:
                self.spk = max(self.spk * 0.5, self.npk * SILENCE_FLOOR)
            rrs = self.rrs
            if rrs and since > MISS_RR * (self.rr_sum / len(rrs)):
                found = self._search_back(decided, r)
                if found is not None:
                    out.append(found)
                    since = r - found.r  # (the beat found is the last now)
            if since < self.refractory:
                return out
            npk = self.npk
            spk = self.spk
            if value > npk + 0.25 * (spk - npk) and not (  # (the threshold)
                    since < self.t_wave and value < 0.5 * self.last_v):
                self.spk = 0.125 * min(value, BEAT_CAP * spk) + 0.875 * spk
                out.append(self._beat(decided, value, r, searchback=False))
                return out
        elif value > self.threshold:
            self.spk = 0.125 * min(value, BEAT_CAP * self.spk) + 0.875 * self.spk
            out.append(self._beat(decided, value, r, searchback=False))
            return out
        self.npk = 0.125 * value + 0.875 * self.npk
        self._note_noise((decided, value, r))
        return out

    def _note_noise(self, candidate: tuple[int, float, int]) -> None:
        """Keep a noise peak for the search-back, and only the peaks it may still
        pick: the first of the largest peaks at or before a bound. A peak no larger than
        an earlier one at an earlier or equal R can never be picked, nor can an earlier
        one smaller than it at a later or equal R; without this, a long stretch without
        a beat kept every peak (~3 a second) and each search-back walked them all."""
        _, value, r = candidate
        noise = self.noise
        if any(v >= value and at <= r for _, v, at in noise):
            return
        noise[:] = [c for c in noise if not (c[1] < value and c[2] >= r)]
        noise.append(candidate)

    def _search_back(self, decided: int, r: int) -> Beat | None:
        assert self.last_r is not None
        lo = self.last_r + self.refractory
        pool = [c for c in self.noise if lo <= c[2] < r - self.refractory]
        if not pool:
            return None
        _, value, at = max(pool, key=lambda c: c[1])
        if value <= 0.5 * self.threshold:
            return None
        self.spk = 0.25 * value + 0.75 * self.spk
        return self._beat(decided, value, at, searchback=True)

    def _beat(self, decided: int, value: float, r: int, *, searchback: bool) -> Beat:
        rr = 0 if self.last_r is None else r - self.last_r
        if rr:
            if len(self.rrs) == self.rrs.maxlen:
                self.rr_sum -= self.rrs[0]
            self.rrs.append(rr)
            self.rr_sum += rr
        self.last_r, self.last_v = r, value
        self.noise.clear()
        threshold = self.threshold
        conf = min(1.0, value / (2 * threshold)) if threshold > 0 else 0.0
        return Beat(r, decided, rr, round(conf * (0.5 if searchback else 1.0), 3), searchback)


def _learnt_top(values: list[float], *, final: bool) -> float | None:
    """The learning phase's peak level from the candidates' *values* so far (those
    above ``ARTEFACT_MWI`` left out, unless all are): the largest, once another is at
    least ``1 / LEARN_TOP`` of it (two peaks agree on the level, as two beats do and
    one spike and the beats do not); else None, to learn on, unless *final*: then the
    largest counts for at most ``LEARN_TOP`` times the second largest."""
    values = [v for v in values if v <= ARTEFACT_MWI] or values
    top = max(values)
    if sum(v * LEARN_TOP >= top for v in values) >= 2:
        return top
    if not final:
        return None
    second = sorted(values)[-2] if len(values) > 1 else top
    return min(top, LEARN_TOP * second)
