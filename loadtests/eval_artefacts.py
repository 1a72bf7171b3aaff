"""Detector A against artefacts: Se and +P of each DS1 record's first seconds, clean
and with an artefact at given times.

    python -m loadtests.eval_artefacts              # all DS1, 120 s, spikes at 1 and 60 s
    python -m loadtests.eval_artefacts --shape pops --at 0.3 60
    python -m loadtests.eval_artefacts --shape drop --at 60
    python -m loadtests.eval_artefacts --records 101 230 --at 1 30 60 --seconds 120

Shapes: ``spike``, 5 samples at full scale ((32767 - baseline) / gain mV, both leads);
``pops``, three electrode pops (5 samples at 30 mV) 0.7 s apart; ``drop``, the signal
ten times smaller from then on (a lead that comes back weak). Each record runs
through a fresh :class:`QualityChain` in 100-ms frames (the server's device framing),
once clean and once per time. Beats are matched one to one within 150 ms to the
reference annotations; beats, detected or reference, at the spike or the pops
(within 150 ms) are left out: they are the artefact's. Prints, per record and pooled,
reference / detected / matched and the pooled Se and +P per case.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import numpy.typing as npt

from vital_actors.filtering import design
from vital_actors.quality import Frame, QualityChain
from vital_actors.quality.evaluate import reference_beats, scored_records
from vital_actors.quality.sqi import match_count
from vital_actors.settings import FilterSettings, ScreenSettings
from vital_actors.sources import Recording, load_record

F64 = npt.NDArray[np.float64]
MATCH_S = 0.15


def detected(rec: Recording, mv: F64) -> list[int]:
    """The R indices of detector A's beats on *mv*, fed in 100-ms frames."""
    import scipy.signal

    filtered: F64 = scipy.signal.sosfilt(design(FilterSettings(), rec.fs).sos, mv, axis=0)
    chain = QualityChain(ScreenSettings())
    step = round(0.1 * rec.fs)
    out = []
    for t in range(0, len(mv), step):
        for e in chain.feed([Frame("s", rec.fs, t, mv[t:t + step], filtered[t:t + step])])[0]:
            if e.type == "beat":
                out.append(int(e.body["r"]))
    return out


def _doctor(mv: F64, rec: Recording, i: int, shape: str) -> list[tuple[int, int]]:
    """Put the artefact *shape* into *mv* at sample *i*; return the spans (first, last
    sample) whose beats are the artefact's."""
    if shape == "spike":
        mv[i:i + 5] = (32767 - np.asarray(rec.baseline)) / np.asarray(rec.gain)
        return [(i, i + 4)]
    if shape == "pops":
        gap = round(0.7 * rec.fs)
        for k in range(3):
            mv[i + k * gap:i + k * gap + 5] = 30.0
        return [(i + k * gap, i + k * gap + 4) for k in range(3)]
    mv[i:] *= 0.1
    return []


def _within(r: int, spans: list[tuple[int, int]], tol: int) -> bool:
    return any(lo - tol <= r <= hi + tol for lo, hi in spans)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path(__file__).parents[1] / "../shared/data/mitdb")
    p.add_argument("--records", nargs="+", help="record names (default: all in --data)")
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--at", type=float, nargs="+", default=[1.0, 60.0],
                   help="artefact times (s), one run each")
    p.add_argument("--shape", choices=("spike", "pops", "drop"), default="spike")
    a = p.parse_args()
    cases: list[float | None] = [None, *a.at]
    pooled = np.zeros((len(cases), 3), dtype=np.int64)
    print("record  " + "  ".join(f"{'clean' if c is None else f'{a.shape}@{c:g}s':>16}"
                                 for c in cases) + "   (reference/detected/matched)")
    folder = a.data.resolve()
    for path in [folder / r for r in a.records] if a.records else scored_records(folder, "qrs"):
        name = path.name
        rec = load_record(path, stop=round(a.seconds * 360))
        stop = len(rec.samples)
        ref = reference_beats(path, stop)
        tol = round(MATCH_S * rec.fs)
        row = []
        for k, at in enumerate(cases):
            mv: F64 = (rec.samples - np.asarray(rec.baseline)) / np.asarray(rec.gain)
            det = []
            want = ref
            if at is None:
                det = detected(rec, mv)
            else:
                spans = _doctor(mv, rec, round(at * rec.fs), a.shape)
                det = [r for r in detected(rec, mv) if not _within(r, spans, tol)]
                want = [r for r in ref if not _within(r, spans, tol)]
            tp = match_count(want, det, tol)
            pooled[k] += (len(want), len(det), tp)
            row.append(f"{len(want)}/{len(det)}/{tp}")
        print(f"{name:<7} " + "  ".join(f"{c:>16}" for c in row), flush=True)
    for k, at in enumerate(cases):
        n_ref, n_det, tp = (int(v) for v in pooled[k])
        label = "clean" if at is None else f"{a.shape} at {at:g} s"
        print(f"{label:<16} Se {100 * tp / n_ref:6.2f} %  +P {100 * tp / max(1, n_det):6.2f} %")


if __name__ == "__main__":
    main()
