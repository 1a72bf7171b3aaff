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
from .rhythm import HRV_WINDOW_S, Rhythm, rhythm
from .sqi import StepRows, WindowSQI, bsqi, classify, score

__all__ = ["Step", "StreamQuality"]

F64 = npt.NDArray[np.float64]
MATCH_S = 0.15  # bSQI: beats of A and B within 150 ms agree
EDGE_S = 0.3  # bSQI leaves out the last 300 ms, where B may not have decided yet
B_LEVEL = 0.25  # detector B: share of its running beat height a beat must reach ...
B_HALF_LIFE_S = 10.0  # ... a level that halves every 10 s without a beat


@dataclass(frozen=True, slots=True, eq=False)
class Step:
    """A quality step waiting for its indices (computed for many streams at once)."""

    owner: StreamQuality
    boundary: int
    n: int  # samples in the window
    step_n: int  # samples in the step
    totals: F64  # running totals at the boundary ...
    prev: F64  # ... at the previous boundary ...
    first: F64  # ... and at the window's start
    bsqi: float
    snr_db: float | None  # beat-to-beat SNR of the window (None: too few beats)
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
        self.beats: deque[int] = deque()  # detector A's R indices, last 60 s
        self.b_beats: deque[int] = deque()  # detector B's, last window
        self.b_level, self.b_last = 0.0, t0
        steps = max(1, round(settings.sqi_window_s / settings.window_s))
        self.snaps: deque[tuple[int, F64]] = deque(maxlen=steps + 1)
        self.snaps.append((t0, np.zeros((len(FEATURES), channels))))
        self.flat: deque[list[bool]] = deque(maxlen=steps)
        self.alarms: dict[tuple[str, int | None], Alarm] = {}
        hold, clear = settings.rate_hold_s, settings.rate_clear_s
        for kind, on, off in (("asystole", 1, 1), ("bradycardia", hold, clear),
                              ("tachycardia", hold, clear)):
            self.alarms[(kind, None)] = Alarm(on, off)
        for c in range(channels):
            for kind in ("lead_off", "flatline"):
                self.alarms[(kind, c)] = Alarm(settings.on_windows, settings.off_windows)
        self.topic_q = f"stream/{key}/quality"
        self.topic_b = f"stream/{key}/beats"

    def take(self, res: FrontOut) -> list[Event | Step]:
        """One block's beat events, in sample order, with a :class:`Step` where each
        quality step falls; the chain computes the steps' indices for all streams at
        once and then calls :meth:`finish` on each."""
        for r, height in res.beats_b:
            if self._b_accepts(r, height):
                self.b_beats.append(r)
        out: list[Event | Step] = []
        noise = self.noise
        full = np.concatenate([noise.history, res.det_f])
        full_start = res.t0 - len(noise.history)
        peaks = iter(res.peaks_a)
        pending = next(peaks, None)
        for boundary, totals in res.snaps:
            while pending is not None and pending[0] < boundary:
                out.extend(self._peak(*pending))
                pending = next(peaks, None)
            noise.advance(boundary, full, full_start)
            out.append(self._step(boundary, totals))
        while pending is not None:
            out.extend(self._peak(*pending))
            pending = next(peaks, None)
        noise.advance(res.t0 + len(res.det_f), full, full_start)
        noise.keep_history(full)
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

    def _peak(self, decided: int, value: float, r: int) -> Iterator[Event]:
        for beat in self.tracker.push(decided, value, r):
            self.beats.append(beat.r)
            self.noise.beat(beat.r, beat.decided)
            yield self._beat_event(beat)

    def _beat_event(self, b: Beat) -> Event:
        fs = self.d.fs
        return Event("beat", self.topic_b, Priority.HIGH, {
            "stream": self.key, "r": b.r, "t": round(b.r / fs, 4),
            "rr_ms": round(1000 * b.rr / fs, 1) if b.rr else None, "channel": self.channel,
            "confidence": b.confidence, "searchback": b.searchback,
            "latency_ms": round(1000 * (b.decided + 1 - b.r) / fs, 1),
        })

    def _step(self, boundary: int, totals: F64) -> Step:
        """What a step needs from the stream's state as it stands at *boundary*."""
        fs = self.d.fs
        prev_b, prev = self.snaps[-1]
        self.snaps.append((boundary, totals))
        first_b, first = self.snaps[0]
        while self.beats and boundary - self.beats[0] > HRV_WINDOW_S * fs:
            self.beats.popleft()
        lo = boundary - self.s.sqi_window_s * fs
        while self.b_beats and self.b_beats[0] < lo:
            self.b_beats.popleft()
        edge = boundary - EDGE_S * fs
        a = [r for r in self.beats if lo <= r < edge]
        b = [r for r in self.b_beats if r < edge]
        return Step(self, boundary, boundary - first_b, boundary - prev_b, totals, prev, first,
                    bsqi(a, b, round(MATCH_S * fs)), self.noise.snr_db(round(lo)), bool(a or b),
                    rhythm(self.beats, boundary, fs))

    def finish(self, st: Step, rows: StepRows, i: int) -> Iterator[Event]:
        """The quality event and alert changes of step *st*, row *i* of *rows*."""
        flat = rows.flat[i]
        self.flat.append(flat)
        flat_share = [round(sum(col) / len(self.flat), 4) for col in zip(*self.flat, strict=True)]
        q = WindowSQI(tuple(rows.kurtosis[i]), tuple(rows.skewness[i]), tuple(rows.bw_ratio[i]),
                      tuple(rows.hf_ratio[i]), tuple(flat_share), tuple(rows.sat_fraction[i]),
                      tuple(rows.std_mv[i]), round(st.bsqi, 4), st.snr_db)
        cls = classify(q, self.channel, beats=st.beats)
        lead_off = rows.lead_off[i]
        yield self._quality_event(st.boundary, st.n, q, cls, st.rhythm, lead_off, rows.clipped[i])
        yield from self._alarms(st.boundary, q, cls, st.rhythm, lead_off, flat)

    def _quality_event(self, boundary: int, n: int, q: WindowSQI, cls: str, rh: Rhythm,
                       lead_off: list[bool], clipped: list[bool]) -> Event:
        c = self.channel
        return Event("quality", self.topic_q, Priority.NORMAL, {
            "stream": self.key, "t0": boundary - n, "n": n, "class": cls,
            "score": score(q, c), "hr": rh.hr, "hr_inst": rh.hr_inst, "sdnn_ms": rh.sdnn_ms,
            "rmssd_ms": rh.rmssd_ms, "beats": rh.beats, "bsqi": q.bsqi, "snr_db": q.snr_db,
            "kurtosis": list(q.kurtosis), "skewness": list(q.skewness),
            "bw_ratio": list(q.bw_ratio), "hf_ratio": list(q.hf_ratio),
            "flat_fraction": list(q.flat_fraction), "sat_fraction": list(q.sat_fraction),
            "std_mv": list(q.std_mv), "lead_off": any(lead_off),
            "flatline": any(f and not o for f, o in zip(self.flat[-1], lead_off, strict=True)),
            "out_of_range": any(c and not o for c, o in zip(clipped, lead_off, strict=True)),
        })

    def _alarms(self, t: int, q: WindowSQI, cls: str, rh: Rhythm, lead_off: list[bool],
                flat_now: list[bool]) -> Iterator[Event]:
        s, fs, step = self.s, self.d.fs, self.d.step
        evidence = {"hr": rh.hr, "hr_inst": rh.hr_inst, "quality": cls,
                    "score": score(q, self.channel)}
        noisy = cls == "unusable"
        last = self.beats[-1] if self.beats else self.start
        # A beat is decided up to ~0.35 s after its R peak: count the gap to then.
        gap = (t - last) / fs - 0.35
        asys = gap >= s.asystole_s
        checks: list[tuple[str, int | None, Change | None]] = [
            ("asystole", None, self.alarms[("asystole", None)].step(
                asys, not asys, t, began=last + round(s.asystole_s * fs) if asys else t,
                suppressed=noisy)),
        ]
        hr, margin = rh.hr, s.rate_margin_bpm
        for kind, bad, ok in (
                ("bradycardia", hr is not None and hr < s.brady_bpm,
                 hr is not None and hr >= s.brady_bpm + margin),
                ("tachycardia", hr is not None and hr > s.tachy_bpm,
                 hr is not None and hr <= s.tachy_bpm - margin)):
            alarm = self.alarms[(kind, None)]
            need = alarm.off if alarm.active else alarm.on
            checks.append((kind, None, alarm.step(bad, ok, t, began=t - (need - 1) * step,
                                                  suppressed=noisy)))
        for c in range(self.channels):
            off = lead_off[c]
            flat = flat_now[c] and not off
            for kind, bad in (("lead_off", off), ("flatline", flat)):
                alarm = self.alarms[(kind, c)]
                need = alarm.off if alarm.active else alarm.on
                checks.append((kind, c, alarm.step(bad, not bad, t,
                                                   began=t - (need - 1) * step)))
        for kind, channel, change in checks:
            if change is not None:
                yield from self._alert(kind, channel, change, evidence)

    def _alert(self, kind: str, channel: int | None, change: Change,
               evidence: dict[str, Any]) -> Iterator[Event]:
        t = change.start if change.end is None else change.end
        body = {"stream": self.key, "alert": kind, "state": change.state, "t": t,
                "start": change.start, "end": change.end, "channel": channel,
                "evidence": evidence}
        for topic in ("alerts", self.topic_q):
            yield Event("alert", topic, Priority.CRITICAL, body)
