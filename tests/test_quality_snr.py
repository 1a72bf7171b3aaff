"""The beat-to-beat SNR (quality/repeat.py) and the score built on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from quality_helpers import F64, feed, of_type, to_mv

from vital_actors.quality import QualityChain
from vital_actors.quality.evaluate import auc, noisy_label
from vital_actors.quality.repeat import BeatNoise, measure
from vital_actors.quality.sqi import WindowSQI, classify, score
from vital_actors.quality.stress import stress_auc
from vital_actors.settings import ScreenSettings
from vital_actors.sources import load_record

FS = 360.0
RR = 288  # 0.8 s


def _beat(width: float, height: float) -> F64:
    """A beat around sample 100 of 288: a QRS of *width* (s) and a T wave."""
    t = (np.arange(RR) - 100) / FS
    qrs = height * np.exp(-0.5 * (t / width) ** 2)
    twave = 0.3 * np.exp(-0.5 * ((t - 0.3) / 0.05) ** 2)
    out: F64 = qrs + twave
    return out


def _estimate(shapes: list[F64], noise_sd: float, seed: int = 0) -> float | None:
    """BeatNoise over 30 s of beats cycling through *shapes*, plus white noise."""
    beats = 36
    x = np.concatenate([shapes[i % len(shapes)] for i in range(beats)])
    x = x + np.random.default_rng(seed).normal(0.0, noise_sd, len(x))
    est = BeatNoise(FS, 0)
    for k in range(beats):
        r = k * RR + 100
        est.beat(r, r + 70)
    est.advance(len(x), x, 0)
    measure([est])
    return est.snr_db(0, est.cut)


@pytest.mark.parametrize("snr_db", [15.0, 20.0, 30.0])
def test_the_estimate_is_the_snr_of_the_noise_added(snr_db: float) -> None:
    shape = _beat(0.015, 1.0)
    ptp = float(np.ptp(shape[75:137]))
    sd = ptp / np.sqrt(8 * 10 ** (snr_db / 10))  # the noise stress test's definition
    got = _estimate([shape], sd)
    assert got is not None and got == pytest.approx(snr_db, abs=1.5)


def test_ectopic_beats_and_bigeminy_do_not_lower_the_estimate() -> None:
    normal, ectopic = _beat(0.015, 1.0), _beat(0.04, -1.5)
    sd = float(np.ptp(normal[75:137])) / np.sqrt(8 * 10 ** 2.5)  # 25 dB
    alone = _estimate([normal], sd)
    assert alone is not None
    for pattern in ([normal, normal, normal, ectopic], [normal, ectopic]):
        got = _estimate(pattern, sd)
        assert got is not None and got > alone - 3.0


def test_too_few_beats_give_no_estimate_and_the_score_falls_back() -> None:
    est = BeatNoise(FS, 0)
    x = np.tile(_beat(0.015, 1.0), 3)
    for k in range(3):
        est.beat(k * RR + 100, k * RR + 170)
    est.advance(len(x), x, 0)
    measure([est])
    assert est.snr_db(0, est.cut) is None  # two measured beats (the first has none before it)
    q = WindowSQI((8.0,), (0.0,), (0.1,), (0.0,), (0.0,), (0.0,), (0.5,), 1.0, None)
    assert score(q, 0) == pytest.approx(1 - np.exp(-1.0), abs=1e-3)  # kurtosis 8
    noisy = WindowSQI((8.0,), (0.0,), (0.1,), (0.0,), (0.0,), (0.0,), (0.5,), 1.0, 2.0)
    clean = WindowSQI((8.0,), (0.0,), (0.1,), (0.0,), (0.0,), (0.0,), (0.5,), 1.0, 28.0)
    assert score(noisy, 0) < 0.2 < 0.95 < score(clean, 0)
    assert classify(clean, 0) == "good" and classify(noisy, 0) == "acceptable"


def test_noise_blocks_of_the_stress_test_rank_below_clean_ones(nstdb: Path) -> None:
    """118e24, 11 minutes: clean, then electrode motion at 24 dB from minute 5 to 7 and
    9 to 11; the score ranks noisy windows below clean ones, which all stay usable."""
    stop = round(11 * 60 * FS)
    mv = to_mv(load_record(nstdb / "118e24", stop=stop))
    events = of_type(feed(QualityChain(ScreenSettings()), "x", FS, mv, [360] * (stop // 360)),
                     "quality")
    full = [e.body for e in events if e.body["n"] == 3600]
    labels = [noisy_label(b["t0"], 3600, FS) for b in full]
    clean = [b for b, lab in zip(full, labels, strict=True) if lab is False]
    noisy = [b for b, lab in zip(full, labels, strict=True) if lab is True]
    assert len(clean) > 300 and len(noisy) > 150
    assert auc([b["score"] for b in clean], [b["score"] for b in noisy]) > 0.9
    assert auc([b["snr_db"] for b in clean], [b["snr_db"] for b in noisy]) > 0.9
    assert all(b["class"] != "unusable" for b in clean)
    assert np.median([b["snr_db"] for b in clean]) > 24.0


def test_the_stress_test_built_on_another_record_ranks_its_noise_lower(
        mitdb: Path, nstdb: Path) -> None:
    """101 with the stress test's electrode motion at 12 dB from minute 5 to 7: the noisy
    windows score below the clean ones, and no clean window is unusable."""
    assert nstdb.parent == mitdb.parent
    separation, unusable = stress_auc(mitdb.parent, "101", "em", 12.0, minutes=9.0)
    assert separation > 0.95 and unusable == 0.0
