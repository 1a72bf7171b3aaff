"""The quality chain on real and synthetic ECG: beats, rates, SQIs, framing, batching."""

from __future__ import annotations

import gc
import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
from hypothesis import given, settings
from hypothesis import strategies as st
from quality_helpers import F64, bandpass, feed, of_type, to_mv

from protocol import Event, Priority
from vital_actors.quality import Frame, QualityChain, front
from vital_actors.quality.chain import StaleStateError, gc_deferred
from vital_actors.quality.evaluate import reference_beats
from vital_actors.quality.front import _window_max
from vital_actors.quality.sqi import match_count
from vital_actors.settings import ScreenSettings
from vital_actors.sources import load_record, synthetic_ecg

SETTINGS = ScreenSettings()
MINUTES = 2


@pytest.fixture(scope="module")
def slices(mitdb: Path) -> dict[str, tuple[F64, list[int]]]:
    """Two minutes of three DS1 records: an easy one, and 203 and 208 (many PVCs)."""
    stop = 360 * 60 * MINUTES
    out = {}
    for name in ("101", "203", "208"):
        ref = reference_beats(mitdb / name, stop)
        out[name] = (to_mv(load_record(mitdb / name, stop=stop)), ref)
    return out


def test_beats_match_the_reference_annotations(slices: dict[str, tuple[F64, list[int]]]) -> None:
    tp = ref_n = det_n = 0
    for name, (mv, ref) in slices.items():
        beats = of_type(feed(QualityChain(SETTINGS), name, 360.0, mv, [360] * (len(mv) // 360)),
                        "beat")
        det = [int(b.body["r"]) for b in beats]
        hits = match_count(ref, det, 54)  # 150 ms
        assert hits / len(ref) > 0.985 and hits / len(det) > 0.985, name
        tp, ref_n, det_n = tp + hits, ref_n + len(ref), det_n + len(det)
    assert tp / ref_n > 0.99 and tp / det_n > 0.99


def test_beat_events_carry_the_fields_and_come_within_250_ms(
        slices: dict[str, tuple[F64, list[int]]]) -> None:
    mv, _ = slices["101"]
    beats = of_type(feed(QualityChain(SETTINGS), "rec", 360.0, mv, [len(mv)]), "beat")
    assert len(beats) > 100
    for b in beats:
        assert b.topic == "stream/rec/beats" and b.priority is Priority.HIGH
        assert set(b.body) >= {"stream", "r", "t", "rr_ms", "channel", "confidence"}
        assert b.body["t"] == pytest.approx(b.body["r"] / 360.0, abs=1e-3)
    steady = beats[5:]
    assert all(b.body["latency_ms"] <= 250 for b in steady)
    # With a device frame's wait on top (100-ms frames: 50 ms at the median), the
    # median beat is still out within 250 ms of its R peak.
    assert np.median([b.body["latency_ms"] for b in steady]) <= 200
    rr = [b.body["rr_ms"] for b in steady]
    assert rr == [pytest.approx(1000 * (b.body["r"] - a.body["r"]) / 360, abs=0.1)
                  for a, b in zip(beats[4:], steady, strict=False)]


def test_quality_once_per_second_with_rate_and_hrv(
        slices: dict[str, tuple[F64, list[int]]]) -> None:
    mv, ref = slices["101"]
    events = feed(QualityChain(SETTINGS), "rec", 360.0, mv, [500] * (len(mv) // 500) +
                  [len(mv) % 500])
    quality = of_type(events, "quality")
    assert [q.body["t0"] + q.body["n"] for q in quality] == list(
        range(360, len(mv) + 1, 360))
    assert all(q.body["n"] == 3600 for q in quality[9:])
    late = quality[-1].body
    rate = 60 / np.median(np.diff(ref[-13:])) * 360
    assert late["hr"] == pytest.approx(rate, rel=0.05)
    assert late["sdnn_ms"] > 0 and late["rmssd_ms"] > 0
    classes = [q.body["class"] for q in quality[12:]]
    assert "unusable" not in classes and classes.count("good") > 0.8 * len(classes)
    assert not of_type(events, "alert")


@pytest.mark.parametrize("fs", [125.0, 250.0, 500.0, 1000.0])
def test_detector_works_from_125_to_1000_hz(fs: float) -> None:
    rec = synthetic_ecg(fs=fs, seconds=40, heart_rate=80, seed=3)
    assert len(rec.samples) % 40 == 0
    mv = to_mv(rec)
    events = feed(QualityChain(SETTINGS), "s", fs, mv, [len(mv) // 40] * 40)
    beats = of_type(events, "beat")
    assert len(beats) == pytest.approx(40 * 80 / 60, abs=3)
    assert of_type(events, "quality")[-1].body["hr"] == pytest.approx(80, rel=0.08)


@pytest.mark.parametrize("fs", [1.0, 2.5, 12.5, 20.0, 2500.0, 20000.0])
def test_a_rate_outside_the_screened_range_gets_no_events_and_no_error(fs: float) -> None:
    """The server takes 1-20,000 Hz (limits); the QRS band needs more than 12.5 Hz (a
    device at 2.5 Hz used to raise out of the filter design, and with it the server)."""
    rng = np.random.default_rng(0)
    step = max(4, round(fs))
    mv = np.cumsum(rng.normal(0.0, 0.05, (12 * step, 2)), axis=0)
    chain = QualityChain(SETTINGS)
    assert feed(chain, "s", fs, mv, [step] * 12, filtered=mv) == []
    assert feed(chain, "t", 250.0, to_mv(synthetic_ecg(fs=250.0, seconds=3)), [250] * 3)


@pytest.mark.parametrize("fs", [SETTINGS.min_fs, SETTINGS.max_fs])
def test_the_edges_of_the_screened_range_are_screened(fs: float) -> None:
    mv = to_mv(synthetic_ecg(fs=fs, seconds=12, heart_rate=75, seed=1))
    events = feed(QualityChain(SETTINGS), "s", fs, mv, [round(fs)] * 12)
    assert len(of_type(events, "quality")) == 12 and len(of_type(events, "beat")) >= 10


def _troubled(mv: F64) -> F64:
    out = mv.copy()
    out[9000:11000, 1] = 0.0  # a flat lead
    out[14000:17000, 0] = 7.0  # at the rail
    return out


@settings(max_examples=12, deadline=None)
@given(cuts=st.lists(st.integers(1, 360 * 60 - 1), max_size=60))
def test_events_do_not_depend_on_the_framing(slices: dict[str, tuple[F64, list[int]]],
                                             cuts: list[int]) -> None:
    mv = _troubled(slices["208"][0][:360 * 60])
    edges = [0, *sorted(set(cuts)), len(mv)]
    sizes = [b - a for a, b in itertools.pairwise(edges)]
    whole = feed(QualityChain(SETTINGS), "x", 360.0, mv, [len(mv)])
    assert feed(QualityChain(SETTINGS), "x", 360.0, mv, sizes) == whole
    assert {e.body["alert"] for e in of_type(whole, "alert")} >= {"lead_off", "flatline"}


def test_batched_streams_get_the_events_they_get_alone(
        slices: dict[str, tuple[F64, list[int]]]) -> None:
    signals = {name: mv[:360 * 40] for name, (mv, _) in slices.items()}
    signals["syn"] = to_mv(synthetic_ecg(fs=360, seconds=40, channels=3, seed=1))
    alone = {k: feed(QualityChain(SETTINGS), k, 360.0, mv, [360] * 40)
             for k, mv in signals.items()}
    filt = {k: bandpass(mv, 360.0) for k, mv in signals.items()}
    chain = QualityChain(SETTINGS)
    together: dict[str, list[object]] = {k: [] for k in signals}
    for t in range(0, 360 * 40, 720):  # two frames per stream per batch
        frames = [Frame(k, 360.0, t + j, signals[k][t + j:t + j + 360],
                        filt[k][t + j:t + j + 360]) for j in (0, 360) for k in signals]
        for f, events in zip(frames, chain.feed(frames), strict=True):
            together[f.key] += events
    assert together == alone


def test_a_pickled_chain_resumes_where_it_stopped(
        slices: dict[str, tuple[F64, list[int]]]) -> None:
    mv = slices["203"][0][:360 * 30]
    whole = feed(QualityChain(SETTINGS), "j", 360.0, mv, [len(mv)])
    chain = QualityChain(SETTINGS)
    f = bandpass(mv, 360.0)
    first = feed(chain, "j", 360.0, mv[:5000], [5000], filtered=f[:5000])
    restored: QualityChain = pickle.loads(pickle.dumps(chain))
    rest = restored.feed_one("j", 360.0, 5000, mv[5000:], f[5000:])
    assert first + rest == whole


def test_an_empty_block_changes_nothing() -> None:
    mv = to_mv(synthetic_ecg(seconds=6, seed=2))
    f = bandpass(mv, 360.0)
    whole = QualityChain(SETTINGS).feed_one("s", 360.0, 0, mv, f)
    chain = QualityChain(SETTINGS)
    got = chain.feed_one("s", 360.0, 0, mv[:1000], f[:1000])
    assert chain.feed_one("s", 360.0, 1000, mv[:0], f[:0]) == []
    got += chain.feed_one("s", 360.0, 1000, mv[1000:], f[1000:])
    assert got == whole


def test_a_fresh_run_or_a_jump_in_t0_starts_over() -> None:
    mv = to_mv(synthetic_ecg(seconds=12, seed=2))
    f = bandpass(mv, 360.0)
    chain = QualityChain(SETTINGS)
    once = chain.feed_one("s", 360.0, 0, mv, f)
    again = chain.feed_one("s", 360.0, 0, mv, f, run=1)
    assert again == once
    assert chain.feed_one("s", 360.0, 0, mv, f, run=1) == once  # t0 0 does not continue


def test_running_totals_are_bit_identical_whatever_the_framing(
        slices: dict[str, tuple[F64, list[int]]]) -> None:
    """The SQI totals are sums since the run's start: summed in order, a block split
    anywhere leaves exactly the same floats (not merely the same rounded indices)."""
    mv = slices["208"][0][:360 * 25]
    f = bandpass(mv, 360.0)
    states = []
    for sizes in ([len(mv)], [1, 359, 7, 1000, 3633, len(mv) - 5000], [360] * 25):
        chain = QualityChain(SETTINGS)
        feed(chain, "x", 360.0, mv, sizes, f)
        states.append(chain._streams["x"].front.sqi)
    assert all(np.array_equal(states[0], s) for s in states[1:])


def test_chunked_totals_of_many_streams_equal_the_streams_fed_alone(
        slices: dict[str, tuple[F64, list[int]]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of 60 streams in three step phases, in blocks summed in chunks of three
    rows (chunk edges inside and across step ends): every stream's running totals and
    events are those it gets alone, whole and unchunked. (The numpy front end's chunks:
    the compiled one has none.)"""
    numpy_front = ScreenSettings(front="numpy")
    mv = slices["208"][0][:360 * 12]
    f = bandpass(mv, 360.0)
    starts = {f"s{i}": 100 * (i % 3) for i in range(60)}  # t0 0, 100, 200: three phases
    ends = {k: s + (360 * 12 - 200 - s) // 500 * 500 for k, s in starts.items()}
    alone = {k: QualityChain(numpy_front) for k in starts}
    whole = {k: c.feed_one(k, 360.0, starts[k], mv[starts[k]:ends[k]], f[starts[k]:ends[k]])
             for k, c in alone.items()}
    monkeypatch.setattr(front, "CHUNK_VALUES", 3 * 10 * 2 * 60)  # 3 rows of 60 streams
    chain = QualityChain(numpy_front)
    got: dict[str, list[Event]] = {k: [] for k in starts}
    for t in range(0, 360 * 12 - 200, 500):
        frames = [Frame(k, 360.0, t + s, mv[t + s:t + s + 500], f[t + s:t + s + 500])
                  for k, s in starts.items() if t + s + 500 <= ends[k]]
        for fr, events in zip(frames, chain.feed(frames), strict=True):
            got[fr.key] += events
    for k in starts:
        assert got[k] == whole[k]
        assert len(of_type(got[k], "quality")) >= 9
        assert np.array_equal(alone[k]._streams[k].front.sqi, chain._streams[k].front.sqi)


@pytest.mark.parametrize("before, after", [(1, 1), (72, 18), (90, 90), (250, 50), (3, 60)])
@pytest.mark.parametrize("n", [1, 2, 36, 360])
def test_the_running_maximum_is_scipys_exactly(before: int, after: int, n: int) -> None:
    """The detectors' running maximum equals maximum_filter1d's, with ties and
    zeros of either sign included, and its own where a window holds a NaN."""
    rng = np.random.default_rng(n + before)
    x = np.round(rng.standard_normal((before + after + n, 3)), 1)  # many ties
    x[::5, 0] = -0.0
    x[1::5, 0] = 0.0
    size = before + after + 1
    ref = scipy.ndimage.maximum_filter1d(x, size, axis=0, origin=before - size // 2)
    assert np.array_equal(_window_max(x, before, after), ref[before:before + n])
    x[before + n // 2, 1] = np.nan
    ref = scipy.ndimage.maximum_filter1d(x, size, axis=0, origin=before - size // 2)
    assert np.array_equal(_window_max(x, before, after), ref[before:before + n],
                          equal_nan=True)


def test_the_garbage_collector_waits_for_the_batch_and_comes_back() -> None:
    assert gc.isenabled()
    with gc_deferred():
        assert not gc.isenabled()
        with gc_deferred():  # nested (the screen around the chain)
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError), gc_deferred():
        raise ValueError("a bad batch")
    assert gc.isenabled()
    gc.disable()  # someone else's choice stands
    try:
        with gc_deferred():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_chain_pickled_by_older_code_is_refused_clearly() -> None:
    """Its streams keep other state: resuming it would not give the same events."""
    mv = to_mv(synthetic_ecg(seconds=3, seed=2))
    chain = QualityChain(SETTINGS)
    chain.feed_one("s", 360.0, 0, mv, bandpass(mv, 360.0))
    state = chain.__getstate__()
    del state["format"]  # what the code before format 2 wrote
    with pytest.raises(StaleStateError, match="format 1"):
        QualityChain.__new__(QualityChain).__setstate__(state)
    stream_state = (None, {"det": np.zeros((3, 1)), "sqi": np.zeros((3, 2)), "next_t": 0})
    with pytest.raises(StaleStateError):  # a stream's front state as older code pickled it
        front.FrontState.__new__(front.FrontState).__setstate__(stream_state)  # type: ignore[arg-type]
