"""Detector A against artefact spikes: Se and +P of each DS1 record's first seconds,
clean and with one spike (5 samples at full scale) at given times.

    python -m loadtests.eval_artefacts              # all DS1, 120 s, spikes at 1 and 60 s
    python -m loadtests.eval_artefacts --records 101 230 --at 1 30 60 --seconds 120

Each record runs through a fresh :class:`QualityChain` in 100-ms frames (the server's
device framing) once clean and once per spike time. Beats are matched one to one within
150 ms to the reference annotations; the spike's own beat (within 150 ms of it) is
left out, since the spike is no beat and no reference either. Prints, per record and
pooled, reference / detected / matched and the pooled Se and +P per case.
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path(__file__).parents[1] / "../shared/data/mitdb")
    p.add_argument("--records", nargs="+", help="record names (default: all in --data)")
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--at", type=float, nargs="+", default=[1.0, 60.0],
                   help="spike times (s), one run each")
    a = p.parse_args()
    cases: list[float | None] = [None, *a.at]
    pooled = np.zeros((len(cases), 3), dtype=np.int64)
    print("record  " + "  ".join(f"{'clean' if c is None else f'spike@{c:g}s':>16}"
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
            if at is None:
                det = detected(rec, mv)
            else:
                i = round(at * rec.fs)
                mv[i:i + 5] = (32767 - np.asarray(rec.baseline)) / np.asarray(rec.gain)
                det = [r for r in detected(rec, mv) if abs(r - i) > tol]
            tp = match_count(ref, det, tol)
            pooled[k] += (len(ref), len(det), tp)
            row.append(f"{len(ref)}/{len(det)}/{tp}")
        print(f"{name:<7} " + "  ".join(f"{c:>16}" for c in row), flush=True)
    for k, at in enumerate(cases):
        n_ref, n_det, tp = (int(v) for v in pooled[k])
        label = "clean" if at is None else f"spike at {at:g} s"
        print(f"{label:<16} Se {100 * tp / n_ref:6.2f} %  +P {100 * tp / max(1, n_det):6.2f} %")


if __name__ == "__main__":
    main()
