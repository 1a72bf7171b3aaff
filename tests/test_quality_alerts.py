"""CRITICAL alerts: asystole, brady/tachycardia, lead off, flatline; hysteresis, suppression."""

from __future__ import annotations

import numpy as np
import pytest
from quality_helpers import F64, feed, of_type, to_mv

from protocol import Event, Priority
from vital_actors.quality import QualityChain
from vital_actors.quality.alerts import Alarm
from vital_actors.settings import ScreenSettings
from vital_actors.sources import synthetic_ecg

SETTINGS = ScreenSettings()
FS = 360.0


def ecg(seconds: float, heart_rate: float = 72.0, seed: int = 0) -> F64:
    return to_mv(synthetic_ecg(fs=FS, seconds=seconds, heart_rate=heart_rate, seed=seed))


def run(mv: F64) -> list[Event]:
    return feed(QualityChain(SETTINGS), "p", FS, mv, [36] * (len(mv) // 36))


def alerts(events: list[Event]) -> list[tuple[str, str, int | None]]:
    out = []
    for e in of_type(events, "alert"):
        assert e.priority is Priority.CRITICAL
        if e.topic == "alerts":
            out.append((e.body["alert"], e.body["state"], e.body["channel"]))
        else:
            assert e.topic == "stream/p/quality"
    return out


# --- Alarm --------------------------------------------------------------------------------


def test_alarm_needs_on_steps_to_start_and_off_steps_to_end() -> None:
    alarm = Alarm(on=3, off=2)
    seq = [True, True, False, True, True, True, False, True, False, False]
    changes = [alarm.step(bad, not bad, t) for t, bad in enumerate(seq)]
    assert [(t, c.state) for t, c in enumerate(changes) if c] == [(5, "start"), (9, "end")]
    assert changes[9] is not None and changes[9].start == 5 and changes[9].end == 9


def test_a_suppressed_step_neither_raises_nor_clears() -> None:
    alarm = Alarm(on=2, off=2)
    assert alarm.step(True, False, 0) is None
    assert alarm.step(True, False, 1, suppressed=True) is None  # resets the streak
    assert alarm.step(True, False, 2) is None
    change = alarm.step(True, False, 3, began=2)
    assert change is not None and (change.state, change.start) == ("start", 2)
    for t in range(4, 10):
        assert alarm.step(False, True, t, suppressed=True) is None
    assert alarm.active


# --- through the chain -----------------------------------------------------------------------


def test_asystole_starts_4_s_after_the_last_beat_and_ends_when_beats_return() -> None:
    mv = ecg(36)
    rng = np.random.default_rng(5)
    gap = slice(round(15 * FS), round(24 * FS))
    mv[gap] = rng.normal(0, 0.03, mv[gap].shape)  # a clean line, no beats
    events = run(mv)
    assert alerts(events) == [("asystole", "start", None), ("asystole", "end", None)]
    start, end = (e for e in of_type(events, "alert") if e.topic == "alerts")
    last_r = max(int(b.body["r"]) for b in of_type(events, "beat") if b.body["r"] < 15 * FS)
    assert start.body["start"] == last_r + 4 * FS
    assert start.body["end"] is None and start.body["evidence"]["quality"] != "unusable"
    assert end.body["start"] == start.body["start"]
    assert 24 * FS < end.body["end"] <= 26 * FS


@pytest.mark.parametrize(("rate", "kind"), [(34.0, "bradycardia"), (175.0, "tachycardia")])
def test_extreme_rates_alert_after_10_s(rate: float, kind: str) -> None:
    events = run(ecg(40, heart_rate=rate, seed=2))
    assert alerts(events) == [(kind, "start", None)]
    alert = next(e for e in of_type(events, "alert"))
    assert alert.body["evidence"]["hr"] == pytest.approx(rate, rel=0.1)
    # Decided 10 steps after the rate went out of range; dated at the first of them.
    decided = next(q.body["t0"] + q.body["n"] for q in of_type(events, "quality")
                   if q.body["hr"] is not None and (q.body["hr"] < 40 or q.body["hr"] > 150))
    assert alert.body["start"] == decided


def test_normal_rates_raise_nothing() -> None:
    for rate in (45.0, 72.0, 140.0):
        assert alerts(run(ecg(30, heart_rate=rate, seed=4))) == []


def test_noise_is_unusable_and_raises_no_rhythm_alarms() -> None:
    mv = ecg(40, heart_rate=72)
    rng = np.random.default_rng(7)
    mv[round(10 * FS):] += rng.normal(0, 0.8, mv[round(10 * FS):].shape)
    events = run(mv)
    late = [q.body["class"] for q in of_type(events, "quality")][20:]
    assert late.count("unusable") > 0.8 * len(late)
    assert not [a for a in alerts(events) if a[0] in ("asystole", "bradycardia", "tachycardia")]


def test_lead_off_and_flatline_per_channel_with_hysteresis() -> None:
    mv = ecg(30)
    mv[round(8 * FS):round(14 * FS), 0] = 7.0  # channel 0 sits at a rail
    mv[round(18 * FS):round(23 * FS), 1] = 0.0  # channel 1 flat
    events = run(mv)
    got = alerts(events)
    assert ("lead_off", "start", 0) in got and ("lead_off", "end", 0) in got
    assert ("flatline", "start", 1) in got and ("flatline", "end", 1) in got
    assert not [a for a in got if a[0] == "flatline" and a[2] == 0]  # at a rail: lead off
    lead = [e.body for e in of_type(events, "alert")
            if e.topic == "alerts" and e.body["alert"] == "lead_off"]
    assert 8 * FS <= lead[0]["start"] <= 10 * FS and lead[0]["end"] is None
    assert 14 * FS <= lead[1]["end"] <= 17 * FS
