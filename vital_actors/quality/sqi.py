"""Signal-quality indices of a window, from the feature sums of the front end.

A window's sums are the sums of its 1-s steps (see :mod:`.front`), so each 10-s window
costs a few arithmetic operations per channel whatever its length. The indices, per channel:

- ``kurtosis`` (Pearson, 3 for Gaussian noise; clean ECG is peaky, > 5) and
  ``skewness`` of the filtered signal;
- ``bw_ratio``: baseline-wander power (< 1 Hz) over itself plus the filtered power;
- ``hf_ratio``: power above 40 Hz over itself plus the filtered power;
- ``flat_fraction``: share of the window's 1-s steps whose standard deviation
  (in mV) is below ``flatline_mv``; ``sat_fraction``: share of clipped samples (stuck at one
  value over 1 mV from the baseline);
- and for the stream, ``bsqi``: the agreement of detectors A and B (matched beats over
  the union, Li et al. 2008), and ``snr_db``: the beat-to-beat SNR of the detection
  channel (:mod:`.repeat`).

:func:`classify` turns them into good / acceptable / unusable with the thresholds in
:data:`THRESHOLDS` (docs/quality.md), and :func:`score` into one number in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["THRESHOLDS", "StepRows", "WindowSQI", "bsqi", "classify", "score", "step_rows"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
_EPS = 1e-12

#: Thresholds of :func:`classify`, on the detection channel.
THRESHOLDS = {
    "unusable_flat": 0.5,  # flat_fraction at or above: unusable
    "unusable_sat": 0.2,  # sat_fraction at or above: unusable
    "unusable_bsqi": 0.5,  # bsqi below: unusable
    "unusable_kurtosis": 3.0,  # kurtosis below (Gaussian-like), with beats and bsqi
    # below good_bsqi: unusable (a weak lead with tall T waves can be < 3 yet clean)
    "unusable_hf": 0.5,  # hf_ratio at or above (muscle, mains, broadband noise): unusable
    "good_bsqi": 0.9,  # good needs bsqi at or above ...
    "good_kurtosis": 5.0,  # ... kurtosis at or above ...
    "good_bw": 0.8,  # ... baseline wander ratio below ...
    "good_hf": 0.2,  # ... high-frequency ratio below ...
    "good_snr_db": 10.0,  # ... and beat-to-beat SNR at or above (when there is one)
}

#: The score's SNR term: a logistic in ``snr_db`` (dB), 0.5 at SNR_MID_DB.
SNR_MID_DB = 10.0
SNR_WIDTH_DB = 4.0
SCORE_BSQI = 0.75  # bSQI below this scales the score down in proportion


@dataclass(slots=True)
class WindowSQI:
    """The indices of one window; per-channel sequences, ``bsqi`` and ``snr_db`` for
    the stream."""

    kurtosis: Sequence[float]
    skewness: Sequence[float]
    bw_ratio: Sequence[float]
    hf_ratio: Sequence[float]
    flat_fraction: Sequence[float]
    sat_fraction: Sequence[float]
    std_mv: Sequence[float]
    bsqi: float
    snr_db: float | None = None  # beat-to-beat SNR of the detection channel (.repeat)


@dataclass(frozen=True, slots=True)
class StepRows:
    """Per-channel values of many steps (windows) at once, as nested lists [step][channel]:
    the window indices, and for the last second of each step its flat and lead-off
    flags."""

    kurtosis: list[list[float]]
    skewness: list[list[float]]
    bw_ratio: list[list[float]]
    hf_ratio: list[list[float]]
    sat_fraction: list[list[float]]
    std_mv: list[list[float]]
    flat: list[list[bool]]
    lead_off: list[list[bool]]
    any_off: list[bool]  # per step: a channel lead off ...
    any_flat: list[bool]  # ... flat but not lead off ...
    any_clipped: list[bool]  # ... clipped but not lead off


def step_rows(window: F64, sums: F64, n: I64, step_n: I64, *,
              flatline_mv: float, out_of_range_mv: float, lead_off_fraction: float) -> StepRows:
    """The indices of k windows in one numpy pass: *window* and *sums* (k, features,
    channels) are the feature sums over each window and over its last step; *n* and
    *step_n* (k,) their sample counts.

    - a second is flat when the standard deviation of the signal (mV) is below
      ``flatline_mv``; it is lead off when flat at a rail (|mean| beyond
      ``out_of_range_mv``) or when at least ``lead_off_fraction`` of it is clipped.
    """
    w = window / n[:, None, None]
    f, f2, f3, f4, bw, bw2, hf2, sat = (w[:, k] for k in range(8))
    var = np.maximum(f2 - f * f, 0.0)
    safe = np.maximum(var, _EPS)
    m3 = f3 - 3 * f * f2 + 2 * f ** 3
    m4 = f4 - 4 * f * f3 + 6 * f * f * f2 - 3 * f ** 4
    bw_var = np.maximum(bw2 - bw * bw, 0.0)
    step = sums[:, 7:] / np.maximum(step_n, 1)[:, None, None]
    clip, mean, sq = step[:, 0], step[:, 1], step[:, 2]
    flat = np.sqrt(np.maximum(sq - mean * mean, 0.0)) < flatline_mv
    lead_off = (flat & (np.abs(mean) > out_of_range_mv)) | (clip >= lead_off_fraction)
    return StepRows(
        kurtosis=_r(np.where(var > _EPS, m4 / (safe * safe), 0.0)),
        skewness=_r(np.where(var > _EPS, m3 / safe ** 1.5, 0.0)),
        bw_ratio=_r(bw_var / np.maximum(bw_var + var, _EPS)),
        hf_ratio=_r(hf2 / np.maximum(hf2 + var, _EPS)),
        sat_fraction=_r(sat), std_mv=_r(np.sqrt(var)),
        flat=flat.tolist(), lead_off=lead_off.tolist(),
        any_off=_any(lead_off), any_flat=_any(flat & ~lead_off),
        any_clipped=_any((clip > 0) & ~lead_off),
    )


def _any(x: npt.NDArray[np.bool_]) -> list[bool]:
    out: list[bool] = np.any(x, axis=1).tolist()
    return out


def _r(x: F64) -> list[list[float]]:
    out: list[list[float]] = np.round(x, 4).tolist()
    return out


def bsqi(a: Sequence[int], b: Sequence[int], tol: int) -> float:
    """Agreement of two beat lists (sorted R indices): matched / (|a| + |b| - matched),
    matching one to one within *tol* samples. 1 when both are empty: they agree that
    there is no beat (asystole must stay detectable on a clean, beatless signal)."""
    matched = match_count(a, b, tol)
    union = len(a) + len(b) - matched
    return matched / union if union else 1.0


def match_count(ref: Sequence[int], test: Sequence[int], tol: int) -> int:
    """One-to-one matches of sorted *test* to sorted *ref* within *tol* samples."""
    i = j = hits = 0
    n_ref, n_test = len(ref), len(test)
    while i < n_ref and j < n_test:
        x, y = test[j], ref[i]
        if abs(x - y) <= tol:
            hits, i, j = hits + 1, i + 1, j + 1
        elif x < y:
            j += 1
        else:
            i += 1
    return hits


def classify(q: WindowSQI, channel: int, *, beats: bool = True) -> str:
    """good / acceptable / unusable for the detection *channel* (:data:`THRESHOLDS`).

    Without *beats* (neither detector found one) the kurtosis rule is left out: a
    clean beatless line is Gaussian-like, and must stay usable for asystole. Nor does
    it apply when the two detectors agree well (bsqi at least ``good_bsqi``)."""
    t = THRESHOLDS
    if (q.flat_fraction[channel] >= t["unusable_flat"]
            or q.sat_fraction[channel] >= t["unusable_sat"]
            or q.bsqi < t["unusable_bsqi"] or q.hf_ratio[channel] >= t["unusable_hf"]
            or (beats and q.kurtosis[channel] < t["unusable_kurtosis"]
                and q.bsqi < t["good_bsqi"])):
        return "unusable"
    if (q.bsqi >= t["good_bsqi"] and q.kurtosis[channel] >= t["good_kurtosis"]
            and q.bw_ratio[channel] < t["good_bw"] and q.hf_ratio[channel] < t["good_hf"]
            and (q.snr_db is None or q.snr_db >= t["good_snr_db"])):
        return "good"
    return "acceptable"


def score(q: WindowSQI, channel: int) -> float:
    """One quality number in [0, 1] (higher is cleaner): a logistic of the beat-to-beat
    SNR (0.5 at 10 dB, 0.99 at 28 dB: a clean ECG), or without one (fewer than three
    measured beats) a saturating function of the excess kurtosis (0 for Gaussian noise,
    0.86 at kurtosis 13); times min(1, bSQI / 0.75) and the share of the window
    neither flat nor clipped."""
    if q.snr_db is not None:
        clean = 1.0 / (1.0 + math.exp(-(q.snr_db - SNR_MID_DB) / SNR_WIDTH_DB))
    else:
        clean = 1.0 - math.exp(-max(q.kurtosis[channel] - 3.0, 0.0) / 5.0)
    usable = 1.0 - max(q.flat_fraction[channel], q.sat_fraction[channel])
    value = min(1.0, q.bsqi / SCORE_BSQI) * clean * usable
    return round(value, 4) if math.isfinite(value) else 0.0
