"""The scoring behind ``vital-actors eval``: matching, AUC, nstdb labels, the command."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from vital_actors.cli import main
from vital_actors.quality.evaluate import auc, noisy_label, reference_beats
from vital_actors.quality.sqi import bsqi, match_count

FS = 360.0


def test_matching_is_one_to_one_within_the_tolerance() -> None:
    ref = [100, 400, 700, 1000]
    assert match_count(ref, [105, 395, 396, 1060], tol=54) == 2  # 396 is a second match
    assert match_count(ref, [], tol=54) == 0
    assert match_count(ref, [154, 346], tol=54) == 2  # at the tolerance counts
    assert bsqi([], [], 54) == 1.0 and bsqi([100], [], 54) == 0.0
    assert bsqi([100, 400], [101, 700], 54) == pytest.approx(1 / 3)


def test_auc_counts_ties_half() -> None:
    assert auc([3, 4], [1, 2]) == 1.0
    assert auc([1, 2], [3, 4]) == 0.0
    assert auc([1, 1], [1, 1]) == 0.5
    assert auc([2, 0], [1]) == 0.5


def test_nstdb_windows_are_labelled_by_the_2_minute_blocks() -> None:
    minute = round(60 * FS)
    n = round(10 * FS)
    assert noisy_label(0, n, FS) is False  # before minute 5: clean
    assert noisy_label(5 * minute, n, FS) is True  # minute 5-7: noisy
    assert noisy_label(7 * minute - n, n, FS) is True
    assert noisy_label(7 * minute - n + 1, n, FS) is None  # straddles the edge
    assert noisy_label(7 * minute, n, FS) is False  # minute 7-9: clean
    assert noisy_label(9 * minute + 5, n, FS) is True


def _slice(mitdb: Path, tmp: Path, name: str, seconds: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import wfdb

        stop = round(seconds * FS)
        rec = wfdb.rdrecord(str(mitdb / name), sampto=stop, physical=False)
        wfdb.wrsamp(name, fs=FS, units=rec.units, sig_name=rec.sig_name,
                    d_signal=rec.d_signal, fmt=["16"] * 2, adc_gain=rec.adc_gain,
                    baseline=rec.baseline, write_dir=str(tmp))
        ann = wfdb.rdann(str(mitdb / name), "atr", sampto=stop)
        wfdb.wrann(name, "atr", np.asarray(ann.sample), list(ann.symbol), write_dir=str(tmp))


def test_eval_qrs_prints_per_record_and_gross_scores(mitdb: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _slice(mitdb, tmp_path, "101", 90)
    main(["eval", "qrs", str(tmp_path), "--frame-ms", "100"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["record", "beats", "TP", "FN", "FP", "Se", "%", "+P", "%",
                                "lat", "ms"]
    row, gross = lines[1].split(), lines[2].split()
    assert row[0] == "101" and gross[0] == "gross"
    assert int(row[1]) == len(reference_beats(tmp_path / "101")) > 90
    assert float(gross[5]) >= 99.0 and float(gross[6]) >= 99.0
    assert 150 < float(gross[7]) < 250  # median latency, ms
    assert lines[3].startswith("latency, reference R to deciding sample: median")
    # 90 s only: the beats of the first 2 s (decided when learning ends) pass the 99th
    p90 = float(lines[3].split("90th percentile ")[1].split()[0])
    assert float(gross[7]) <= p90 <= 250
