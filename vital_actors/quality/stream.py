"""One stream's decisions: beats, rates, window SQIs and alarms, step by step.

:class:`StreamQuality` takes what the front end found in a block (:class:`FrontOut`)
and turns it into events in sample order: detector A's candidates go through the
:class:`PeakTracker` (beat events), and at every step boundary the window SQIs,
rhythm and alarms are evaluated (a quality event, and alert events on changes). A
beat counts at a boundary once it has been decided before the boundary, so the
events depend on the samples only, never on how they were framed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from protocol import Event, Priority

from ..settings import ScreenSettings
from .alerts import Alarm, Change
from .design import FEATURES, Design
from .front import FrontOut
from .peaks import Beat, PeakTracker
from .repeat import BeatNoise
from .rhythm import Rhythm, RhythmState, round1, round4
from .sqi import StepRows, WindowSQI, bsqi, classify, score

__all__ = ["Step", "StreamQuality"]

F64 = npt.NDArray[np.float64]
MATCH_S = 0.15  # bSQI: beats of A and B within 150 ms agree
EDGE_S = 0.3  # bSQI leaves out the last 300 ms, where B may not have decided yet
B_LEVEL = 0.25  # detector B: share of its running beat height a beat must reach ...
B_HALF_LIFE_S = 10.0  # ... a level that halves every 10 s without a beat
RELEARN_S = 8.0  # detector A silent this long while B finds a steady rhythm: relearn
RELEARN_BEATS = 6  # ... B's beats in the last RELEARN_S, at least
RELEARN_RR_CV = 0.12  # ... with RRs this steady (coefficient of variation), at most


@dataclass(slots=True, eq=False)
class Step:
    """A quality step waiting for its indices (computed for many streams at once)."""

    owner: StreamQuality
    boundary: int
    n: int  # samples in the window
    step_n: int  # samples in the step
    window: F64  # the feature sums over the window ...
    sums: F64  # ... and over the step that ends at the boundary
    bsqi: float
    lo: int  # the window's first sample
    cut: int  # beats cut for the beat-to-beat SNR before the step (.repeat)
    beats: bool  # either detector found a beat in the window
    rhythm: Rhythm


class StreamQuality:
    """Per-stream state behind the events; fed by :class:`~.chain.QualityChain`."""

    def __init__(self, key: str, d: Design, settings: ScreenSettings, channels: int,
                 channel: int, t0: int) -> None:
        self.key, self.d, self.s = key, d, settings
        self.channels, self.channel, self.start = channels, channel, t0
        self.tracker = PeakTracker(d.fs, t0)
        self.noise = BeatNoise(d.fs, t0)
        self.rhythm = RhythmState(d.fs)  # detector A's beats, last 60 s
        self.last_r = t0  # detector A's last beat (the run's start before the first)
        self.a_beats: deque[int] = deque()  # detector A's beats (R), last window ...
        self.b_beats: deque[int] = deque()  # ... and detector B's
        self.b_level, self.b_last = 0.0, t0
        steps = max(1, round(settings.sqi_window_s / settings.window_s))
        # The window's steps' feature sums, step k in row k % steps: a window's sums
        # are added up from them, rows in order (a running total's difference would
        # carry the rounding of everything summed since the start, spikes included).
        # The row of a step depends on its index only, so any framing adds alike.
        self.sums = np.zeros((steps, len(FEATURES), channels))
        self.bounds: deque[int] = deque([t0], maxlen=steps + 1)  # the steps' ends
        self.flat: deque[list[bool]] = deque(maxlen=steps)
        self.flat_counts = [0] * channels  # flat seconds in ``flat``, per channel
        self.alarms: dict[tuple[str, int | None], Alarm] = {}
        hold, clear = settings.rate_hold_s, settings.rate_clear_s
        for kind, on, off in (("asystole", 1, 1), ("bradycardia", hold, clear),
                              ("tachycardia", hold, clear)):
            self.alarms[(kind, None)] = Alarm(on, off)
        for c in range(channels):
            for kind in ("lead_off", "flatline"):
                self.alarms[(kind, c)] = Alarm(settings.on_windows, settings.off_windows)
        self.quiet = True  # no alarm active or counting towards a start
        # Step lengths in samples (floats, as the expressions they stand for).
        self.window_n = settings.sqi_window_s * d.fs
        self.edge_n, self.match_n = EDGE_S * d.fs, round(MATCH_S * d.fs)
        self.relearn_n = RELEARN_S * d.fs
        self.topic_q = f"stream/{key}/quality"
        self.topic_b = f"stream/{key}/beats"

    def take(self, res: FrontOut) -> list[Event | Step]:
        """One block's beat events, in sample order, with a :class:`Step` where each
        quality step falls; the chain computes the steps' indices for all streams at
        once and then calls :meth:`finish` on each."""
        if res.beats_b:
            accepts, b_beats = self._b_accepts, self.b_beats
            for r, height in res.beats_b:
                if accepts(r, height):
                    b_beats.append(r)
        out: list[Event | Step] = []
        noise, peak, step = self.noise, self._peak, self._step
        full = res.full[:, res.k]  # the kept history, then the block
        full_start = res.t0 - self.d.snr_keep
        peaks = res.peaks_a
        i, count = 0, len(peaks)
        for boundary, sums in res.snaps:
            while i < count and peaks[i][0] < boundary:
                peak(*peaks[i], out)
                i += 1
            if noise.waiting:
                noise.advance(boundary, full, full_start)
            out.append(step(boundary, sums))
        while i < count:
            peak(*peaks[i], out)
            i += 1
        if noise.waiting:
            noise.advance(res.t0 + len(full) - self.d.snr_keep, full, full_start)
        return out

    def _b_accepts(self, r: int, height: float) -> bool:
        """Detector B's own level: a beat must reach a quarter of the running height
        of its beats, which halves every 10 s without one (a beatless line's noise
        then stays below it for a long asystole)."""
        since = (r - self.b_last) / self.d.fs
        level = self.b_level * 0.5 ** (since / B_HALF_LIFE_S)
        if height < B_LEVEL * level:
            return False
        self.b_level = 0.875 * level + 0.125 * height if self.b_level else height
        self.b_last = r
        return True

    def _peak(self, decided: int, value: float, r: int, out: list[Event | Step]) -> None:
        """Detector A's candidate peak: append the beat events it confirms to *out*."""
        tracker = self.tracker
        if tracker.learning is None and r - self.last_r > self.relearn_n and (
                tracker.relearnt is None or r - tracker.relearnt > self.relearn_n):
            self._relearn(decided, r)
        beats = tracker.push(decided, value, r)
        if beats:
            rhythm, noise = self.rhythm, self.noise
            for beat in beats:
                rhythm.push(beat.r)
                self.a_beats.append(beat.r)
                self.last_r = beat.r
                noise.beat(beat.r, beat.decided)
                out.append(self._beat_event(beat))

    def _relearn(self, decided: int, r: int) -> None:
        """Detector A has found no beat for ``RELEARN_S``: if detector B found a steady
        rhythm meanwhile, A's levels are far above its beats (after an artefact, or a
        signal that came back much smaller): it relearns them from its candidates at
        B's beats. B's beats count only once decided by *decided* (so any framing
        gives the same), and a beatless line's noise does not make a steady rhythm."""
        lo, seen = r - self.relearn_n, decided - self.d.b_half
        b = [x for x in self.b_beats if lo <= x <= seen]
        if len(b) < RELEARN_BEATS:
            return
        rr = np.diff(b)
        if rr.std() > RELEARN_RR_CV * rr.mean():
            return
        tol, values = self.match_n, []
        for at, v in self.tracker.recent:
            if at >= lo and any(abs(at - x) <= tol for x in b):
                values.append(v)
        if len(values) >= RELEARN_BEATS - 1:
            self.tracker.relearn(values, r)

    def _beat_event(self, b: Beat) -> Event:
        fs = self.d.fs
        return Event("beat", self.topic_b, Priority.HIGH, {
            "stream": self.key, "r": b.r, "t": round(b.r / fs, 4),
            "rr_ms": round1(1000 * b.rr / fs) if b.rr else None, "channel": self.channel,
            "confidence": b.confidence, "searchback": b.searchback,
            "latency_ms": round1(1000 * (b.decided + 1 - b.r) / fs),
        })

    def _step(self, boundary: int, sums: F64) -> Step:
        """What a step needs from the stream's state as it stands at *boundary*; *sums*:
        the features summed over the step."""
        bounds, table = self.bounds, self.sums
        prev_b = bounds[-1]
        bounds.append(boundary)
        first_b = bounds[0]
        table[(boundary - self.start) // self.d.step % len(table)] = sums
        window: F64 = np.add.reduce(table, axis=0)
        rh = self.rhythm.at(boundary)
        lo = boundary - self.window_n
        a, b = _window(self.a_beats, lo), _window(self.b_beats, lo)
        edge = boundary - self.edge_n
        while a and a[-1] >= edge:  # the last 300 ms: a beat or two at most
            a.pop()
        while b and b[-1] >= edge:
            b.pop()
        return Step(self, boundary, boundary - first_b, boundary - prev_b, window, sums,
                    bsqi(a, b, self.match_n), round(lo), self.noise.cut, bool(a or b), rh)

    def finish(self, st: Step, rows: StepRows, i: int) -> list[Event]:
        """The quality event and alert changes of step *st*, row *i* of *rows*."""
        flat = rows.flat[i]
        window, counts = self.flat, self.flat_counts
        if len(window) == window.maxlen and True in window[0]:  # (mostly none is flat)
            for c, was in enumerate(window[0]):
                counts[c] -= was
        window.append(flat)
        if True in flat:
            for c, now in enumerate(flat):
                counts[c] += now
        seconds = len(window)
        flat_share = [round4(k / seconds) for k in counts]
        q = WindowSQI(rows.kurtosis[i], rows.skewness[i], rows.bw_ratio[i], rows.hf_ratio[i],
                      flat_share, rows.sat_fraction[i], rows.std_mv[i], round4(st.bsqi),
                      self.noise.snr_db(st.lo, st.cut))
        cls = classify(q, self.channel, beats=st.beats)
        value = score(q, self.channel)
        lead_off = rows.lead_off[i]
        rh = st.rhythm
        out = [self._quality_event(st.boundary, st.n, q, cls, value, rh,
                                   (rows.any_off[i], rows.any_flat[i], rows.any_clipped[i]))]
        changes = self._alarms(st.boundary, cls, rh, lead_off, flat)
        if changes:  # one evidence for all of the step's alerts
            evidence = {"hr": rh.hr, "hr_inst": rh.hr_inst, "quality": cls, "score": value}
            for kind, channel, change in changes:
                out.extend(self._alert(kind, channel, change, evidence))
        return out

    def _quality_event(self, boundary: int, n: int, q: WindowSQI, cls: str, value: float,
                       rh: Rhythm, flags: tuple[bool, bool, bool]) -> Event:
        return Event("quality", self.topic_q, Priority.NORMAL, {
            "stream": self.key, "t0": boundary - n, "n": n, "class": cls,
            "score": value, "hr": rh.hr, "hr_inst": rh.hr_inst, "sdnn_ms": rh.sdnn_ms,
            "rmssd_ms": rh.rmssd_ms, "beats": rh.beats, "bsqi": q.bsqi, "snr_db": q.snr_db,
            # The window's own lists (fresh from the numpy pass, used nowhere else).
            "kurtosis": q.kurtosis, "skewness": q.skewness, "bw_ratio": q.bw_ratio,
            "hf_ratio": q.hf_ratio, "flat_fraction": q.flat_fraction,
            "sat_fraction": q.sat_fraction, "std_mv": q.std_mv,
            "lead_off": flags[0], "flatline": flags[1],
            "out_of_range": flags[2],
        })

    def _alarms(self, t: int, cls: str, rh: Rhythm, lead_off: list[bool],
                flat_now: list[bool]) -> list[tuple[str, int | None, Change]]:
        """Step every alarm at *t*; return the changes. An alarm that neither wants to
        change nor is counting towards a change is left as it is (what its step would
        do), so a quiet second costs a few comparisons."""
        s, fs, step = self.s, self.d.fs, self.d.step
        last = self.last_r
        # A beat is decided up to ~0.35 s after its R peak: count the gap to then.
        asys = (t - last) / fs - 0.35 >= s.asystole_s
        hr = rh.hr
        if (self.quiet and not asys and (hr is None or s.brady_bpm <= hr <= s.tachy_bpm)
                and not any(lead_off) and not any(flat_now)):
            return []  # no alarm active or counting, and none wants to: what stepping does
        noisy, margin = cls == "unusable", s.rate_margin_bpm
        checks: list[tuple[str, int | None, bool, bool, int | None, bool]] = [
            ("asystole", None, asys, not asys,
             last + round(s.asystole_s * fs) if asys else t, noisy),
            ("bradycardia", None, hr is not None and hr < s.brady_bpm,
             hr is not None and hr >= s.brady_bpm + margin, None, noisy),
            ("tachycardia", None, hr is not None and hr > s.tachy_bpm,
             hr is not None and hr <= s.tachy_bpm - margin, None, noisy),
        ]
        for c in range(self.channels):
            off = lead_off[c]
            flat = flat_now[c] and not off
            checks.append(("lead_off", c, off, not off, None, False))
            checks.append(("flatline", c, flat, not flat, None, False))
        changes: list[tuple[str, int | None, Change]] = []
        for kind, channel, onset, clear, began, suppressed in checks:
            alarm = self.alarms[(kind, channel)]
            if suppressed or not (clear if alarm.active else onset):
                alarm.streak = 0  # exactly what Alarm.step does here
                continue
            if began is None:
                need = alarm.off if alarm.active else alarm.on
                began = t - (need - 1) * step
            change = alarm.step(onset, clear, t, began=began)
            if change is not None:
                changes.append((kind, channel, change))
        self.quiet = not any(a.active or a.streak for a in self.alarms.values())
        return changes

    def _alert(self, kind: str, channel: int | None, change: Change,
               evidence: dict[str, Any]) -> Iterator[Event]:
        t = change.start if change.end is None else change.end
        body = {"stream": self.key, "alert": kind, "state": change.state, "t": t,
                "start": change.start, "end": change.end, "channel": channel,
                "evidence": evidence}
        for topic in ("alerts", self.topic_q):
            yield Event("alert", topic, Priority.CRITICAL, body)


def _window(beats: deque[int], lo: float) -> list[int]:
    """The R indices of *beats* (in order) from *lo* on, as a list; the older ones are
    dropped from *beats*."""
    while beats and beats[0] < lo:
        beats.popleft()
    return list(beats)
