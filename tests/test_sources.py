"""Tests for vital_actors.sources: WFDB loading, synthetic ECG, frame splitting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.signal import find_peaks

from vital_actors.sources import (
    Recording,
    data_dir,
    frame_sizes,
    frames,
    list_records,
    load_record,
    synthetic_ecg,
)

DS1 = "101 106 108 109 112 114 115 116 118 119 122 124 201 203 205 207 208 209 215 220 223 230"


def decode_212(raw: bytes) -> npt.NDArray[np.int16]:
    """Format 212 by hand: two 12-bit two's-complement samples in every three bytes."""
    b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
    s0 = b[:, 0] | ((b[:, 1] & 0x0F) << 8)
    s1 = b[:, 2] | ((b[:, 1] & 0xF0) << 4)
    pairs = np.stack([s0, s1], axis=1)
    return np.where(pairs >= 2048, pairs - 4096, pairs).astype(np.int16)


# --- load_record -------------------------------------------------------------------------


def test_load_record_reads_101_header_fields(mitdb: Path) -> None:
    rec = load_record(mitdb / "101", stop=3600)
    assert rec.name == "101"
    assert rec.fs == 360.0
    assert rec.channels == ("MLII", "V1")
    assert rec.gain == (200.0, 200.0)
    assert rec.baseline == (1024, 1024)
    assert rec.samples.dtype == np.int16
    assert rec.samples.shape == (3600, 2)
    assert rec.samples.flags.c_contiguous
    assert rec.duration == pytest.approx(10.0)


def test_load_record_matches_a_format_212_decode_of_the_dat_file(mitdb: Path) -> None:
    raw = (mitdb / "101.dat").read_bytes()[:300]
    rec = load_record(mitdb / "101", stop=100)
    expected = decode_212(raw)
    assert expected[0].tolist() == [955, 992]  # the first samples, as in 101.hea
    np.testing.assert_array_equal(rec.samples, expected)


def test_load_record_start_stop_is_a_slice_of_the_record(mitdb: Path) -> None:
    whole = load_record(mitdb / "101", stop=2000)
    part = load_record(mitdb / "101", start=1500, stop=1800)
    np.testing.assert_array_equal(part.samples, whole.samples[1500:1800])


def test_load_record_reads_format_16(nstdb: Path) -> None:
    rec = load_record(nstdb / "118e00", start=360 * 300, stop=360 * 310)
    assert rec.name == "118e00"
    assert rec.channels == ("MLII", "V1")
    assert rec.samples.shape == (3600, 2)
    assert rec.samples.dtype == np.int16
    assert np.ptp(rec.samples[:, 0]) > 100  # real signal, not zeros


def test_load_record_makes_repeated_channel_names_unique(mitdb: Path, tmp_path: Path) -> None:
    (tmp_path / "101.dat").symlink_to(mitdb / "101.dat")
    (tmp_path / "dup.hea").write_text(
        "dup 2 360 650000\n"
        "101.dat 212 200 11 1024 955 29832 0 MLII\n"
        "101.dat 212 200 11 1024 992 19589 0 MLII\n"
    )
    assert load_record(tmp_path / "dup", stop=10).channels == ("MLII", "MLII#2")


def test_load_record_rejects_samples_outside_int16(tmp_path: Path) -> None:
    np.array([0, 40_000, -5, 7], dtype="<i4").tofile(tmp_path / "wide.dat")
    (tmp_path / "wide.hea").write_text("wide 1 360 4\nwide.dat 32 200 24 0 0 0 0 ECG\n")
    with pytest.raises(ValueError, match="outside int16"):
        load_record(tmp_path / "wide")


# --- list_records, data_dir, Recording ---------------------------------------------------


def test_list_records_gives_the_ds1_records_in_order(mitdb: Path) -> None:
    records = list_records(mitdb)
    assert [p.name for p in records] == DS1.split()
    assert all(p.parent == mitdb and p.with_suffix(".hea").is_file() for p in records)


def test_list_records_only_counts_headers(tmp_path: Path) -> None:
    for name in ("b.hea", "a.hea", "c.dat", "d.atr"):
        (tmp_path / name).touch()
    assert list_records(tmp_path) == [tmp_path / "a", tmp_path / "b"]


def test_data_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITAL_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    monkeypatch.setenv("VITAL_DATA_DIR", str(tmp_path / "missing"))
    assert data_dir() is None


def test_data_dir_default_holds_the_databases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VITAL_DATA_DIR", raising=False)
    found = data_dir()
    assert found is None or (found / "mitdb").is_dir()


def test_recording_rejects_inconsistent_fields() -> None:
    samples = np.zeros((10, 2), dtype=np.int16)
    with pytest.raises(ValueError, match="disagree"):
        Recording("x", 360.0, ("a",), (200.0,), (0,), samples)
    with pytest.raises(ValueError, match="int16"):
        Recording("x", 360.0, ("a", "b"), (1.0, 1.0), (0, 0), samples.astype(np.int32))


# --- synthetic_ecg -----------------------------------------------------------------------


def test_synthetic_ecg_has_the_requested_shape() -> None:
    rec = synthetic_ecg(fs=250.0, seconds=4.0, channels=3, gain=100.0, baseline=0)
    assert rec.samples.shape == (1000, 3)
    assert rec.samples.dtype == np.int16
    assert rec.samples.flags.c_contiguous
    assert not rec.samples.flags.writeable
    assert rec.channels == ("MLII", "V1", "V5")
    assert rec.gain == (100.0,) * 3
    assert rec.baseline == (0,) * 3
    assert rec.duration == pytest.approx(4.0)


def test_synthetic_ecg_is_deterministic_per_seed() -> None:
    a = synthetic_ecg(seconds=10.0, seed=3)
    b = synthetic_ecg(seconds=10.0, seed=3)
    c = synthetic_ecg(seconds=10.0, seed=4)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.array_equal(a.samples, c.samples)


@pytest.mark.parametrize("heart_rate", [45.0, 72.0, 120.0, 180.0])
def test_synthetic_ecg_beats_at_the_requested_rate(heart_rate: float) -> None:
    rec = synthetic_ecg(seconds=60.0, heart_rate=heart_rate, seed=7)
    mv = (rec.samples[:, 0] - rec.baseline[0]) / rec.gain[0]
    peaks, props = find_peaks(mv, height=0.6, distance=int(0.2 * rec.fs))
    assert len(peaks) == pytest.approx(heart_rate, rel=0.05)
    assert np.median(props["peak_heights"]) == pytest.approx(1.2, abs=0.15)


def test_synthetic_ecg_other_channels_look_different() -> None:
    rec = synthetic_ecg(seconds=10.0)
    mv = (rec.samples - np.array(rec.baseline)) / np.array(rec.gain)
    assert mv[:, 1].min() < -0.6  # V1-like: deep S wave
    assert mv[:, 1].max() < 0.7


# --- frame_sizes, frames -----------------------------------------------------------------


def test_frame_sizes_fixed_ends_with_the_remainder() -> None:
    assert list(frame_sizes(10, frame=4)) == [4, 4, 2]
    assert list(frame_sizes(8, frame=4)) == [4, 4]
    assert list(frame_sizes(0, frame=4)) == []


@given(
    total=st.integers(0, 20_000),
    max_frame=st.integers(1, 2048),
    seed=st.integers(0, 2**32 - 1),
)
def test_frame_sizes_random_sum_to_total(total: int, max_frame: int, seed: int) -> None:
    sizes = list(frame_sizes(total, rng=np.random.default_rng(seed), max_frame=max_frame))
    assert sum(sizes) == total
    assert all(1 <= s <= max_frame for s in sizes)
    again = frame_sizes(total, rng=np.random.default_rng(seed), max_frame=max_frame)
    assert list(again) == sizes


@given(st.data())
def test_frames_concatenate_back_to_the_samples(data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 3000), label="n")
    samples = np.arange(2 * n, dtype=np.int16).reshape(n, 2)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=50), label="cuts"))
    sizes = np.diff([0, *cuts, n]).tolist()
    parts = list(frames(samples, sizes))
    assert [len(p) for p in parts] == sizes
    np.testing.assert_array_equal(np.concatenate([samples[:0], *parts]), samples)


def test_frames_of_a_recording_are_views() -> None:
    rec = synthetic_ecg(seconds=2.0)
    sizes = frame_sizes(len(rec.samples), frame=100)
    assert all(np.shares_memory(f, rec.samples) for f in frames(rec.samples, sizes))


def test_frames_refuse_to_run_past_the_end() -> None:
    with pytest.raises(ValueError, match="outside"):
        list(frames(np.zeros((5, 1), dtype=np.int16), [3, 3]))


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError):
        list(frame_sizes(10, frame=0))
    with pytest.raises(ValueError):
        list(frame_sizes(-1, frame=4))
    with pytest.raises(ValueError):
        synthetic_ecg(heart_rate=0.0)
