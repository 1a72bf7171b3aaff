"""The job's hot path, piece by piece: the in-place filter equals scipy's sosfilt bit for
bit, a torn checkpoint starts the job over to the same bytes, and the pyramid's halving
reduction equals numpy's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.signal

from vital_actors import processing
from vital_actors.filtering import design
from vital_actors.processing import Processing, read_checkpoint, sosfilt_inplace
from vital_actors.quality import chain
from vital_actors.settings import FilterSettings, ScreenSettings
from vital_actors.store import Meta, RecordingStore
from vital_actors.store.pyramid import minmax, reduce

Array = np.ndarray[Any, Any]


def test_the_in_place_filter_is_scipys_sosfilt_bit_for_bit() -> None:
    sos = design(FilterSettings(), 360.0).sos
    x = np.random.default_rng(0).normal(0, 1, (3, 50_000))
    want = scipy.signal.sosfilt(sos, x, axis=-1)
    zi = np.zeros((sos.shape[0], 3, 2))
    got = x.copy()
    for a, b in [(0, 1), (1, 4000), (4000, 4001), (4001, 50_000)]:  # carried across cuts
        part = np.ascontiguousarray(got[:, a:b])
        zi = sosfilt_inplace(sos, part, zi)
        got[:, a:b] = part
    assert np.array_equal(got, want)


def test_without_scipys_kernel_the_public_function_gives_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sos = design(FilterSettings(), 360.0).sos
    x = np.random.default_rng(1).normal(0, 1, (2, 10_000))
    zi = np.zeros((sos.shape[0], 2, 2))
    fast = x.copy()
    zf_fast = sosfilt_inplace(sos, fast, zi)
    monkeypatch.setattr(processing, "_kernel", None)
    slow = x.copy()
    zf_slow = sosfilt_inplace(sos, slow, zi)
    assert np.array_equal(fast, slow) and np.array_equal(zf_fast, zf_slow)


def _recording(store: RecordingStore, n: int) -> Meta:
    x = (np.random.default_rng(2).normal(0, 100, (n, 2)) + 1024).astype(np.int16)
    rec, w = store.writer(fs=360.0, channels=["a", "b"], dtype="int16", gain=[200.0] * 2,
                          baseline=[1024.0] * 2)
    w.append(x)
    return store.commit(rec, w, source_format="npy")


def _run(work: Processing, store: RecordingStore, rec_id: str) -> Meta:
    while not work.done:
        work.step()
    return work.commit(store, rec_id)


def _whole_and_cut(tmp_path: Path, screen: ScreenSettings | None
                   ) -> tuple[RecordingStore, Meta, dict[str, Any], Meta, Path]:
    """A recording processed whole (in ``a``), and the same job stopped after four
    chunks with its checkpoint (in ``b``): store, recording, job args, result, jobdir."""
    store = RecordingStore(tmp_path / "store")
    meta = _recording(store, 30_000)
    args: dict[str, Any] = {"job_id": "j", "chunk_frames": 4096,
                            "filter_settings": FilterSettings(), "screen_settings": screen}
    whole = _run(Processing(tmp_path / "a", store.reader(meta.id), **args), store, "whole")
    jobdir = tmp_path / "b"
    work = Processing(jobdir, store.reader(meta.id), **args)
    for _ in range(4):
        work.step()
    work.close()
    return store, meta, args, whole, jobdir


def test_a_checkpoint_from_code_that_keeps_other_state_starts_the_job_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A quality chain pickled by older code refuses to resume (StaleStateError): the
    job starts over from frame 0, to the same bytes, instead of failing."""
    store, meta, args, whole, jobdir = _whole_and_cut(tmp_path, ScreenSettings())
    monkeypatch.setattr(chain, "STATE_FORMAT", chain.STATE_FORMAT + 1)  # newer code now
    again = Processing(jobdir, store.reader(meta.id), **args)
    assert again.next_frame == 0
    resumed = _run(again, store, "again")
    for name in ("samples.bin", "pyr0.bin"):
        assert (store.path(whole.id) / name).read_bytes() == \
            (store.path(resumed.id) / name).read_bytes(), name


@pytest.mark.parametrize("damage", ["torn", "flipped", "empty"])
def test_a_checkpoint_that_is_not_whole_starts_the_job_over_to_the_same_bytes(
        tmp_path: Path, damage: str) -> None:
    store, meta, args, whole, jobdir = _whole_and_cut(tmp_path, None)
    ckpt = jobdir / "checkpoint.pkl"
    raw = ckpt.read_bytes()
    assert read_checkpoint(raw) is not None
    ckpt.write_bytes({"torn": raw[:len(raw) // 2], "empty": b"",
                      "flipped": raw[:-1] + bytes([raw[-1] ^ 1])}[damage])
    again = Processing(jobdir, store.reader(meta.id), **args)
    assert again.next_frame == 0  # not whole: from the start
    resumed = _run(again, store, "again")
    for name in ("samples.bin", "pyr0.bin", "pyr1.bin"):
        assert (store.path(whole.id) / name).read_bytes() == \
            (store.path(resumed.id) / name).read_bytes(), name


@pytest.mark.parametrize("dtype", ["int16", "float32"])
@pytest.mark.parametrize("group", [64, 8, 2, 1, 3, 100])
@pytest.mark.parametrize("groups", [37, 2])  # folded in halves; a few: plain
def test_halving_min_max_equals_numpys_reduction(dtype: str, group: int, groups: int) -> None:
    frames = (np.random.default_rng(3).normal(0, 1000, (group * groups, 3))).astype(dtype)
    g = frames.reshape(-1, group, 3)
    want = np.stack([g.min(axis=1), g.max(axis=1)], axis=-1)
    assert np.array_equal(minmax(frames, group), want)
    entries = np.stack([frames, frames + 1], axis=-1)
    e = entries.reshape(-1, group, 3, 2)
    assert np.array_equal(reduce(entries, group),
                          np.stack([e[..., 0].min(axis=1), e[..., 1].max(axis=1)], axis=-1))
    assert np.array_equal(minmax(frames, None)[0], np.stack([frames.min(axis=0),
                                                             frames.max(axis=0)], axis=-1))
