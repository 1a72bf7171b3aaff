"""A noise stress test of the quality score on every DS1 record, not only on 118.

    python -m vital_actors.quality.stress ../shared/data [--minutes 13] [--noise em24 ma24 em12]

The MIT-BIH noise stress test ships record 118 (and 119, not here) with noise added;
this builds the same test for every record in ``mitdb/``: the electrode-motion noise
of the stress test (``nstdb/118e00`` less ``mitdb/118``, the 0 dB noise), or the
muscle (``ma``) or baseline-wander (``bw``) noise recordings, added from minute 5 in
alternating 2-minute blocks and scaled to the SNR asked for. SNR as the stress test
defines it: the mean QRS peak-to-peak amplitude squared over 8, over the noise power;
both measured here after the server's band-pass, and calibrated so that the
electrode-motion noise added to 118 at 0 dB is exactly ``118e00``'s.

Prints per noise and record the AUC of the quality score for noisy against clean
10-s windows (as ``eval sqi``), and the share of clean windows classed unusable.
With ``--classes``: the classes of the full 10-s windows of the first 5 minutes of
each DS1 record as it is (no noise added).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np
import numpy.typing as npt
import scipy.signal

from ..filtering import design
from ..settings import FilterSettings, ScreenSettings
from ..sources import list_records, load_record
from .chain import Frame, QualityChain
from .evaluate import auc, noisy_label, reference_beats

__all__ = ["classes", "main", "stress_auc"]

F64 = npt.NDArray[np.float64]
FS = 360.0


def _mv(path: Path, stop: int) -> F64:
    rec = load_record(path, stop=stop)
    out: F64 = (rec.samples - np.asarray(rec.baseline)) / np.asarray(rec.gain)
    return out


def _band(x: F64) -> F64:
    out: F64 = scipy.signal.sosfilt(design(FilterSettings(), FS).sos, x, axis=0)
    return out


def _schedule(n: int) -> npt.NDArray[np.bool_]:
    noisy = np.zeros(n, bool)
    for start in range(round(300 * FS), n, round(240 * FS)):
        noisy[start:start + round(120 * FS)] = True
    return noisy


def _signal_power(path: Path, x: F64) -> F64:
    """Per channel: the median QRS peak-to-peak (band-passed, -70/+100 ms) squared / 8."""
    f = _band(x)
    a, b = round(0.07 * FS), round(0.10 * FS)
    ref = [r for r in reference_beats(path, len(x)) if a <= r < len(x) - b]
    ptp = np.median([np.ptp(f[r - a:r + b], axis=0) for r in ref], axis=0)
    out: F64 = ptp ** 2 / 8
    return out


def stress_auc(data: Path, record: str, noise: str, snr_db: float,
               minutes: float = 13.0) -> tuple[float, float]:
    """(AUC of the score, share of clean windows unusable) for *record* with *noise*
    (``em``, ``ma`` or ``bw``) at *snr_db*."""
    stop = round(minutes * 60 * FS)
    mitdb, nstdb = data / "mitdb", data / "nstdb"
    noisy = _schedule(stop)
    em = _mv(nstdb / "118e00", stop) - _mv(mitdb / "118", stop)
    raw = em if noise == "em" else _mv(nstdb / noise, stop) * noisy[:, None]
    raw = raw - raw[noisy].mean(axis=0)
    raw[~noisy] = 0.0
    # Calibration: our SNR of the 0-dB electrode-motion noise on 118.
    c118 = _mv(mitdb / "118", stop)
    offset = 10 * math.log10(_signal_power(mitdb / "118", c118)[0]
                             / _band(em)[noisy, 0].var())
    x = _mv(mitdb / record, stop)
    gain = np.sqrt(_signal_power(mitdb / record, x) / _band(raw)[noisy].var(axis=0)
                   / 10 ** ((snr_db + offset) / 10))
    y = x + raw * gain
    f = _band(y)
    chain = QualityChain(ScreenSettings())
    step = round(FS)
    clean_s: list[float] = []
    noisy_s: list[float] = []
    unusable = 0
    full = round(ScreenSettings().sqi_window_s * FS)
    for t in range(0, stop, step):
        for e in chain.feed([Frame(record, FS, t, y[t:t + step], f[t:t + step])])[0]:
            if e.type != "quality" or e.body["n"] != full:
                continue
            label = noisy_label(int(e.body["t0"]), full, FS)
            if label is True:
                noisy_s.append(float(e.body["score"]))
            elif label is False:
                clean_s.append(float(e.body["score"]))
                unusable += e.body["class"] == "unusable"
    return auc(clean_s, noisy_s), unusable / max(len(clean_s), 1)


def classes(data: Path, minutes: float = 5.0) -> dict[str, dict[str, int]]:
    """Per DS1 record, how many full windows of its first *minutes* fall in each class."""
    stop = round(minutes * 60 * FS)
    full = round(ScreenSettings().sqi_window_s * FS)
    out: dict[str, dict[str, int]] = {}
    for path in list_records(data / "mitdb"):
        x = _mv(path, stop)
        f = _band(x)
        chain = QualityChain(ScreenSettings())
        counts = out[path.name] = {"good": 0, "acceptable": 0, "unusable": 0}
        for t in range(0, stop, round(FS)):
            for e in chain.feed([Frame(path.name, FS, t, x[t:t + 360], f[t:t + 360])])[0]:
                if e.type == "quality" and e.body["n"] == full:
                    counts[e.body["class"]] += 1
    return out


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="the folder with mitdb/ and nstdb/")
    p.add_argument("--minutes", type=float, default=13.0)
    p.add_argument("--noise", nargs="+", default=["em24", "ma24", "em12"],
                   help="noise kind (em, ma, bw) and SNR in dB, e.g. em24")
    p.add_argument("--classes", action="store_true",
                   help="only the classes of the first 5 minutes of each DS1 record")
    args = p.parse_args(argv)
    out = out or sys.stdout
    if args.classes:
        found = classes(args.data)
        for name, c in found.items():
            print(f"{name:<6}" + "  ".join(f"{k} {v}" for k, v in c.items()), file=out)
        total = {k: sum(c[k] for c in found.values()) for k in ("good", "acceptable", "unusable")}
        n = sum(total.values())
        print("all   " + "  ".join(f"{k} {v} ({100 * v / n:.1f} %)" for k, v in total.items()),
              file=out)
        return
    records = [r.name for r in list_records(args.data / "mitdb")]
    for spec in args.noise:
        kind, snr = spec[:2], float(spec[2:])
        aucs, bad = [], []
        for name in records:
            a, u = stress_auc(args.data, name, kind, snr, args.minutes)
            aucs.append(a)
            bad.append(u)
            print(f"{spec:<6}{name:<6}AUC {a:.3f}  clean unusable {100 * u:5.1f} %", file=out,
                  flush=True)
        print(f"{spec:<6}all   AUC median {np.median(aucs):.3f}, mean {np.mean(aucs):.3f}, "
              f">= 0.9 in {sum(a >= 0.9 for a in aucs)} of {len(aucs)}; clean unusable "
              f"{100 * np.mean(bad):.1f} %", file=out, flush=True)


if __name__ == "__main__":
    main()
