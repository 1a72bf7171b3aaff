"""Tests for vital_actors.screening: per-window checks, framing-free windows, alerts."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from protocol import Event, Hello, Priority
from vital_actors.messages import Block, Filtered, Item, Publication
from vital_actors.screening import Screener, assess, run_screen
from vital_actors.settings import FilterSettings, ScreenSettings
from vital_actors.sources import Recording, load_record
from vital_actors.streams import StreamInfo, StreamRegistry

F64 = npt.NDArray[np.float64]
SETTINGS = ScreenSettings()  # 1 s windows, flat < 0.02 mV, |x| > 5 mV out of range


@pytest.fixture(scope="module")
def rec(mitdb: Path) -> Recording:
    return load_record(mitdb / "101", stop=360 * 20)


def to_mv(rec: Recording) -> F64:
    out: F64 = (rec.samples - np.asarray(rec.baseline)) / np.asarray(rec.gain)
    return out


def sine(n: int, channels: int = 2) -> F64:
    t = np.arange(n)[:, None]
    out: F64 = np.sin(2 * np.pi * t / 25 + np.arange(channels)) * np.ones(channels)
    return out


def stream(fs: float = 10.0, channels: int = 2, name: str = "s1") -> StreamInfo:
    names = tuple(f"ch{k}" for k in range(channels))
    hello = Hello(name, fs, names, "int16", (200.0,) * channels, (0.0,) * channels)
    return StreamRegistry(FilterSettings(low_hz=0.1, high_hz=1.0)).attach(hello)


def filtered(info: StreamInfo, mv: F64, t0: int, seq: int = 0) -> Filtered:
    raw = np.zeros(mv.shape, dtype=np.int16)  # the screen reads ``mv`` only
    return Filtered(Block(info, info.run, seq, t0, raw, 0.0), mv, mv, 1)


def feed(screener: Screener, info: StreamInfo, mv: F64, sizes: Sequence[int]) -> list[Event]:
    events: list[Event] = []
    t0 = 0
    for seq, n in enumerate(sizes):
        events += screener.feed(filtered(info, mv[t0:t0 + n], t0, seq))
        t0 += n
    return events


# --- assess --------------------------------------------------------------------------------


def test_assess_flags_a_flat_channel_only() -> None:
    window = sine(360)
    window[:, 1] = 0.3  # constant: no signal on channel 1
    q = assess(window, SETTINGS)
    assert q.flatline == (False, True)
    assert q.lead_off == q.out_of_range == (False, False)
    assert q.range_mv[1] == 0.0 and q.range_mv[0] == pytest.approx(2.0, abs=0.01)
    assert q.std_mv[1] == 0.0 and q.std_mv[0] == pytest.approx(np.sqrt(0.5), abs=0.01)


def test_assess_flags_lead_off_when_enough_of_the_window_sits_at_a_rail() -> None:
    window = sine(360)
    window[:180, 0] = 6.0  # half the window beyond 5 mV: lead_off_fraction 0.5
    q = assess(window, SETTINGS)
    assert q.lead_off == (True, False)
    assert q.out_of_range == (False, False)  # lead off, not merely out of range
    assert q.flatline == (False, False)
    window[0, 0] = 0.0  # one sample fewer at the rail: just below the fraction
    q = assess(window, SETTINGS)
    assert q.lead_off == (False, False)
    assert q.out_of_range == (True, False)


def test_assess_flags_a_few_samples_out_of_range() -> None:
    window = sine(360)
    window[100:103, 1] = -5.5
    window[200, 0] = 5.0  # at the limit is not beyond it
    q = assess(window, SETTINGS)
    assert q.out_of_range == (False, True)
    assert q.lead_off == q.flatline == (False, False)


def test_clean_mitdb_101_windows_pass(rec: Recording) -> None:
    mv = to_mv(rec)
    for start in range(0, len(mv), 360):
        q = assess(mv[start:start + 360], SETTINGS)
        assert not any(q.flatline + q.lead_off + q.out_of_range), start


# --- Screener ------------------------------------------------------------------------------


def test_screener_emits_one_quality_event_per_window(rec: Recording) -> None:
    info = stream(fs=rec.fs, name="rec101")
    events = feed(Screener(SETTINGS), info, to_mv(rec), [500] * 14 + [200])
    assert [e.type for e in events] == ["quality"] * 20  # no alerts on clean data
    assert [e.body["t0"] for e in events] == list(range(0, 7200, 360))
    for e in events:
        assert e.topic == "stream/rec101/quality"
        assert e.priority is Priority.NORMAL
        assert e.body["n"] == 360
        assert not (e.body["flatline"] or e.body["lead_off"] or e.body["out_of_range"])


def _troubled(rec: Recording) -> F64:
    mv = to_mv(rec).copy()
    mv[1000:2500, 1] = 0.0  # flat lead
    mv[3000:4500, 0] = 7.0  # at the rail
    mv[5000:5003, 0] = -8.0  # spikes in two windows in a row
    mv[5300, 0] = 9.0
    return mv


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 7199), max_size=40))
def test_events_do_not_depend_on_the_framing(rec: Recording, cuts: list[int]) -> None:
    mv = _troubled(rec)
    info = stream(fs=rec.fs, name="rec101")
    edges = [0, *sorted(set(cuts)), len(mv)]
    sizes = [b - a for a, b in itertools.pairwise(edges)]
    whole = feed(Screener(SETTINGS), info, mv, [len(mv)])
    assert feed(Screener(SETTINGS), info, mv, sizes) == whole
    assert {e.body["alert"] for e in whole if e.type == "alert"} == {
        "flatline", "lead_off", "out_of_range"}


def windows(pattern: str, n: int = 10) -> F64:
    """Windows of *n* samples: channel 0 always a sine; channel 1 a sine (G) or flat (B)."""
    mv = sine(n * len(pattern))
    for k, c in enumerate(pattern):
        if c == "B":
            mv[k * n:(k + 1) * n, 1] = 0.0
    return mv


def alerts(events: Sequence[Event]) -> list[tuple[str, object, object]]:
    out = []
    for e in events:
        if e.type == "alert":
            assert e.priority is Priority.CRITICAL
            out.append((e.topic, e.body["state"], e.body["t"]))
    return out


def test_alert_starts_after_on_windows_and_ends_after_off_windows() -> None:
    info = stream(fs=10.0)  # 1 s windows of 10 samples
    events = feed(Screener(SETTINGS), info, windows("GBGBBBGBGGG"), [10] * 11)
    # One bad window (index 1) is not enough; 3 and 4 start it, at window 3's start.
    # Window 6 is good but 7 is bad again: still on. 8 and 9 end it, at window 8's start.
    assert alerts(events) == [
        ("alerts", "start", 30), ("stream/s1/quality", "start", 30),
        ("alerts", "end", 80), ("stream/s1/quality", "end", 80),
    ]
    alert = next(e for e in events if e.type == "alert")
    assert alert.body == {"stream": "s1", "alert": "flatline", "state": "start", "t": 30,
                          "channel": 1}
    # In order with the quality events: the start follows window 4's quality event.
    kinds = [(e.type, e.body.get("t0")) for e in events]
    assert kinds.index(("quality", 40)) < kinds.index(("alert", None)) < kinds.index(
        ("quality", 50))


def test_hysteresis_settings_are_honoured() -> None:
    info = stream(fs=10.0)
    strict = SETTINGS.model_copy(update={"on_windows": 3, "off_windows": 1})
    events = feed(Screener(strict), info, windows("BBGBBBG"), [70])
    assert alerts(events) == [
        ("alerts", "start", 30), ("stream/s1/quality", "start", 30),
        ("alerts", "end", 60), ("stream/s1/quality", "end", 60),
    ]


def test_a_fresh_run_starts_new_windows_and_alarms() -> None:
    info = stream(fs=10.0)
    screener = Screener(SETTINGS)
    assert alerts(feed(screener, info, windows("B"), [5])) == []  # half a window pending
    info.restart(info.hello)
    events = feed(screener, info, windows("BB"), [20])
    assert [e.body["t0"] for e in events if e.type == "quality"] == [0, 10]
    assert alerts(events)[0] == ("alerts", "start", 0)


# --- run_screen ----------------------------------------------------------------------------


async def test_run_screen_forwards_everything_then_its_events(autojump_clock: MockClock) -> None:
    info = stream(fs=10.0)
    mv = windows("BB")
    note = Publication(Event("status", "streams", Priority.NORMAL, {"state": "x"}))
    items: list[Item] = [note, filtered(info, mv[:15], 0, 0), filtered(info, mv[15:], 15, 1)]
    in_tx, in_rx = trio.open_memory_channel[Item](len(items))
    out_tx, out_rx = trio.open_memory_channel[Item](16)
    for item in items:
        in_tx.send_nowait(item)
    in_tx.close()
    with trio.fail_after(60):  # instant on the autojump clock, if run_screen never ends
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_screen, in_rx, out_tx, settings=SETTINGS))
            got = [item async for item in out_rx]  # ends: run_screen closed its outbox
    assert got[:2] == items[:2]  # items pass through as they are
    quality = got[2]
    assert isinstance(quality, Publication) and isinstance(quality.message, Event)
    assert quality.message.body["t0"] == 0
    assert got[3] is items[2]
    events = [g.message for g in got[4:]
              if isinstance(g, Publication) and isinstance(g.message, Event)]
    assert len(events) == len(got) - 4
    assert [e.type for e in events] == ["quality", "alert", "alert"]
    assert in_rx.statistics().open_receive_channels == 0
