"""Scoring the quality chain against MIT-BIH: ``vital-actors eval qrs|sqi DIR``.

Both run the same :class:`~.chain.QualityChain` as the live screen, fed in frames
(``frame_s``) exactly as a device would, after the server's default band-pass.

- QRS: detections against the reference beat annotations (``.atr``), matched one to
  one within 150 ms; per-record and gross sensitivity (Se) and positive predictivity
  (+P), and the detection latency: the sample that decided a beat minus the reference
  R peak it matched.
- SQI: on the noise-stress records (``118e*``), whose electrode-motion noise is added
  from minute 5 in alternating 2-minute blocks, the AUC of the quality score for
  10-s windows wholly inside noisy blocks versus wholly inside clean ones.
"""

from __future__ import annotations

import math
import statistics
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
import numpy.typing as npt
import scipy.signal

from protocol import Event

from ..filtering import design
from ..settings import FilterSettings, ScreenSettings
from ..sources import list_records, load_record
from .chain import Frame, QualityChain
from .sqi import match_count

__all__ = ["BEAT_SYMBOLS", "NoRecordsError", "QrsScore", "SqiScore", "auc", "eval_qrs",
           "eval_sqi", "noisy_label", "reference_beats", "run_record", "score_qrs",
           "score_sqi", "scored_records"]

F64 = npt.NDArray[np.float64]
BEAT_SYMBOLS = frozenset("NLRBAaJSVrFejnE/fQ?")
MATCH_S = 0.15


def run_record(path: Path, *, frame_s: float = 1.0, stop: int | None = None,
               settings: ScreenSettings | None = None) -> tuple[float, list[Event]]:
    """Replay the WFDB record at *path* through a fresh chain; return (fs, events)."""
    rec = load_record(path, stop=stop)
    mv: F64 = (rec.samples - np.asarray(rec.baseline)) / np.asarray(rec.gain)
    sos = design(FilterSettings(), rec.fs).sos
    filtered: F64 = scipy.signal.sosfilt(sos, mv, axis=0)
    chain = QualityChain(settings or ScreenSettings())
    step = max(1, round(frame_s * rec.fs))
    frames = (Frame(rec.name, rec.fs, t, mv[t:t + step], filtered[t:t + step])
              for t in range(0, len(mv), step))
    events = [e for f in frames for e in chain.feed([f])[0]]
    return rec.fs, events


def reference_beats(path: Path, stop: int | None = None) -> list[int]:
    """The R indices of the reference beats in *path*'s ``.atr`` (up to *stop*)."""
    with warnings.catch_warnings():
        # wfdb trips pandas deprecations; they are not ours to fix.
        warnings.simplefilter("ignore")
        import wfdb

        ann = wfdb.rdann(str(path), "atr", sampto=stop)
    return [int(s) for s, sym in zip(ann.sample, ann.symbol, strict=True) if sym in BEAT_SYMBOLS]


@dataclass(frozen=True, slots=True)
class QrsScore:
    record: str
    reference: int
    detected: int
    tp: int
    latencies_ms: tuple[float, ...]

    @property
    def se(self) -> float:
        return 100.0 * self.tp / self.reference if self.reference else 100.0

    @property
    def ppv(self) -> float:
        return 100.0 * self.tp / self.detected if self.detected else 100.0


def score_qrs(path: Path, *, frame_s: float = 1.0, stop: int | None = None) -> QrsScore:
    fs, events = run_record(path, frame_s=frame_s, stop=stop)
    beats = [(int(e.body["r"]), float(e.body["latency_ms"])) for e in events
             if e.type == "beat"]
    ref = reference_beats(path, stop)
    det = [r for r, _ in beats]
    tol = round(MATCH_S * fs)
    lat = []
    j = 0
    for r, lat_ms in beats:  # latency against the matched reference R peak
        while j < len(ref) and ref[j] < r - tol:
            j += 1
        if j < len(ref) and abs(ref[j] - r) <= tol:
            lat.append(lat_ms + 1000 * (r - ref[j]) / fs)
    return QrsScore(path.name, len(ref), len(det), match_count(ref, det, tol), tuple(lat))


class NoRecordsError(ValueError):
    """A folder holds no record the evaluation scores."""


def scored_records(folder: Path, what: Literal["qrs", "sqi"]) -> list[Path]:
    """The records of *folder* that ``eval`` scores: those with reference annotations
    (``.atr``); for ``sqi``, only the noise stress test's ``*e*`` ones.

    Raises:
        NoRecordsError: there is none (a wrong folder, or the wrong evaluation for it).
    """
    out = [p for p in list_records(folder) if p.with_suffix(".atr").exists()
           and (what == "qrs" or "e" in p.name)]
    if not out:
        raise NoRecordsError(f"no annotated WFDB records (*.hea with *.atr) for {what} "
                             f"in {folder}")
    return out


def eval_qrs(folder: Path, *, frame_s: float = 1.0,
             out: TextIO | None = None) -> list[QrsScore]:
    """Score every record in *folder* that has annotations; print the table (to *out*,
    default stdout)."""
    out = out or sys.stdout
    records = scored_records(folder, "qrs")
    scores = []
    print(f"{'record':<8}{'beats':>7}{'TP':>7}{'FN':>6}{'FP':>6}{'Se %':>8}{'+P %':>8}"
          f"{'lat ms':>8}", file=out)
    for path in records:
        s = score_qrs(path, frame_s=frame_s)
        scores.append(s)
        print(f"{s.record:<8}{s.reference:>7}{s.tp:>7}{s.reference - s.tp:>6}"
              f"{s.detected - s.tp:>6}{s.se:>8.2f}{s.ppv:>8.2f}"
              f"{_median(s.latencies_ms):>8.0f}", file=out, flush=True)
    ref, det = sum(s.reference for s in scores), sum(s.detected for s in scores)
    tp = sum(s.tp for s in scores)
    lat = [x for s in scores for x in s.latencies_ms]
    print(f"{'gross':<8}{ref:>7}{tp:>7}{ref - tp:>6}{det - tp:>6}"
          f"{100 * tp / max(ref, 1):>8.2f}{100 * tp / max(det, 1):>8.2f}{_median(lat):>8.0f}",
          file=out)
    if lat:
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        print(f"latency, reference R to deciding sample: median {p50:.0f} ms, 90th percentile "
              f"{p90:.0f} ms, 99th {p99:.0f} ms, max {max(lat):.0f} ms (a device frame's wait "
              "comes on top)", file=out)
    return scores


def _median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def noisy_label(t0: int, n: int, fs: float) -> bool | None:
    """True if samples [t0, t0+n) lie wholly in a noise block of the nstdb schedule
    (from minute 5, 2 minutes noisy, 2 clean, ...), False if wholly clean, else None."""
    block, start = round(120 * fs), round(300 * fs)

    def index(i: int) -> int:  # -1 before the first noise block, then 0, 1, 2, ...
        return -1 if i < start else (i - start) // block

    first, last = index(t0), index(t0 + n - 1)
    if first != last:
        return None
    return first >= 0 and first % 2 == 0


def auc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """P(score of a positive > score of a negative), ties counting half."""
    if not pos or not neg:
        return float("nan")
    allv = np.concatenate([np.asarray(pos, float), np.asarray(neg, float)])
    ranks = _ranks(allv)
    r_pos = float(ranks[:len(pos)].sum())
    return (r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def _ranks(x: F64) -> F64:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


@dataclass(frozen=True, slots=True)
class SqiScore:
    record: str
    clean: tuple[Mapping[str, Any], ...]
    noisy: tuple[Mapping[str, Any], ...]

    def auc(self, key: str = "score", channel: int | None = None) -> float:
        def val(b: Mapping[str, Any]) -> float:
            v = b[key]
            v = v[channel] if channel is not None else v
            return -math.inf if v is None else float(v)  # no estimate ranks lowest
        return auc([val(b) for b in self.clean], [val(b) for b in self.noisy])


def _windows(fs: float, events: Sequence[Event],
             full: int) -> Iterator[tuple[bool, Mapping[str, Any]]]:
    for e in events:
        if e.type == "quality" and e.body["n"] == full:
            label = noisy_label(int(e.body["t0"]), full, fs)
            if label is not None:
                yield label, e.body


def score_sqi(path: Path, *, frame_s: float = 1.0) -> SqiScore:
    fs, events = run_record(path, frame_s=frame_s)
    full = round(ScreenSettings().sqi_window_s * fs)
    clean: list[Mapping[str, Any]] = []
    noisy: list[Mapping[str, Any]] = []
    for label, body in _windows(fs, events, full):
        (noisy if label else clean).append(body)
    return SqiScore(path.name, tuple(clean), tuple(noisy))


_SQI_KEYS = (("score", None), ("snr_db", None), ("bsqi", None), ("kurtosis", 0), ("skewness", 0),
             ("bw_ratio", 0), ("hf_ratio", 0))


def eval_sqi(folder: Path, *, frame_s: float = 1.0,
             out: TextIO | None = None) -> list[SqiScore]:
    """AUC of the quality score (and of each index) for the ``*e*`` records in *folder*."""
    out = out or sys.stdout
    scores = [score_sqi(p, frame_s=frame_s) for p in scored_records(folder, "sqi")]
    head = "".join(f"{k:>10}" for k, _ in _SQI_KEYS)
    print(f"{'record':<8}{'clean':>6}{'noisy':>6}{head}{'unusable%':>10}{'good%':>7}", file=out)
    for s in [*scores, _pooled(scores)]:
        aucs = "".join(f"{s.auc(k, c):>10.3f}" for k, c in _SQI_KEYS)
        bad = _share(s.noisy, "unusable")
        good = _share(s.clean, "good")
        print(f"{s.record:<8}{len(s.clean):>6}{len(s.noisy):>6}{aucs}{bad:>10.1f}{good:>7.1f}",
              file=out)
    print("AUC: clean windows scoring above noisy ones; unusable% of noisy windows, "
          "good% of clean ones.", file=out)
    return scores


def _pooled(scores: Sequence[SqiScore]) -> SqiScore:
    return SqiScore("pooled", tuple(b for s in scores for b in s.clean),
                    tuple(b for s in scores for b in s.noisy))


def _share(bodies: Sequence[Mapping[str, Any]], cls: str) -> float:
    return 100.0 * sum(1 for b in bodies if b["class"] == cls) / max(len(bodies), 1)
