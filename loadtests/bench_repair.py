"""What a restart costs per archived run (``archive.repair`` on long runs), and what
retention's trim of a long run costs and frees.

    python -m loadtests.bench_repair --days 1 7
    python -m loadtests.bench_repair --days 1 7 --against /tmp/old   # another checkout
    python -m loadtests.bench_repair --days --trim-days 1              # trim only

At start-up the server repairs each stream's latest run (``scan``): a crash can have
cut its end. A device that stays connected keeps one run for as long as it does, so
the run's index (``frames.bin``, 28 bytes per frame) grows by 24 MB a day of 100-ms
frames. This writes such a run (2 leads, int16, 100-ms frames at 360 Hz; the samples
file is sparse, so nothing but the index costs disk), cuts its last frame in half as a
crash would, and times ``repair`` on it, here and optionally with the code of another
checkout (a child process), side by side.

``--trim-days D`` writes a run of D days with every sample on disk (125 MB a day) and
its view pyramid, stamped as if it had come in over the last D days, and times
``_Writer.trim`` keeping its last hour, with the bytes it frees.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from .against import run_in

__all__ = ["main", "make_run"]

FRAME = 36  # samples per 100-ms frame at 360 Hz
WIDTH = 2 * 2  # 2 leads of int16
_RECORDS = np.dtype([("seq", "<u8"), ("t0", "<u8"), ("n", "<u4"), ("t", "<f8")])

_CHILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from protocol import Hello
from vital_actors.archive import repair
hello = Hello("s", 360.0, ("MLII", "V1"), "int16", (200.0, 200.0), (0.0, 0.0))
t = time.perf_counter()
got = repair(Path(sys.argv[2]), hello)
print(time.perf_counter() - t, *got)
"""


def make_run(path: Path, frames: int, *, dense: bool = False, end: float = 1.8e9) -> None:
    """A run of *frames* 100-ms frames, the last stamped at *end*. Sparse: the last
    frame lost half its samples and the rest are a hole; *dense*: all written."""
    path.mkdir(parents=True, exist_ok=True)
    rec = np.zeros(frames, _RECORDS)
    rec["seq"] = np.arange(frames)
    rec["t0"] = np.arange(frames) * FRAME
    rec["n"] = FRAME
    rec["t"] = end - (frames - 1 - np.arange(frames)) * 0.1
    (path / "frames.bin").write_bytes(rec.tobytes())
    (path / "meta.json").write_text('{"stream": "s", "fs": 360.0, "channels": ["MLII", "V1"], '
                                    '"dtype": "int16", "gain": [200, 200], '
                                    '"baseline": [0, 0]}')
    with open(path / "samples.bin", "wb") as f:
        if not dense:
            f.truncate((frames * FRAME - FRAME // 2) * WIDTH)
            return
        chunk = np.arange(FRAME * 10_000 * 2, dtype="<i2").tobytes()  # 10,000 frames
        for k in range(0, frames, 10_000):
            f.write(chunk[:min(10_000, frames - k) * FRAME * WIDTH])


def time_trim(days: float) -> None:
    """Trim a *days*-long run, every sample on disk, to its last hour."""
    from vital_actors.archive import _Writer
    from vital_actors.store.live import PyramidFiles

    frames = round(days * 86400 * 10)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "s" / "run-000000"
        now = time.time()
        make_run(run, frames, dense=True, end=now)
        PyramidFiles(run, 2, "int16", frames * FRAME).close()  # built from the samples
        size = sum(f.stat().st_size for f in run.iterdir() if f.suffix == ".bin")
        t = time.perf_counter()
        freed = _Writer(Path(tmp)).trim(3600, now)
        took = time.perf_counter() - t
        print(f"trim {days:g} days ({frames} frames, {size / 1e6:.0f} MB) to its last hour: "
              f"{took:.4f} s, {freed / 1e6:.0f} MB freed ({(run / 'trim.json').read_text()})")


def _time(root: str, path: Path) -> tuple[float, str]:
    seconds, *got = run_in(root, _CHILD, path).split()
    return float(seconds), " ".join(got)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--days", type=float, nargs="*", default=[1.0, 7.0])
    p.add_argument("--against", help="another checkout to run side by side")
    p.add_argument("--trim-days", type=float, nargs="*", default=[],
                   help="also time retention's trim of a run this long, to its last hour")
    args = p.parse_args()
    here = str(Path(__file__).resolve().parent.parent)
    roots = [("this", here)] + ([("other", args.against)] if args.against else [])
    print(f"{'days':>6} {'frames':>9} {'code':>6} {'repair s':>9}  (next_seq, t0, frames)")
    for days in args.days:
        frames = round(days * 86400 * 10)
        for name, root in roots:
            with tempfile.TemporaryDirectory() as tmp:
                run = Path(tmp) / "run-000000"
                make_run(run, frames)
                seconds, got = _time(root, run)
            print(f"{days:6g} {frames:9d} {name:>6} {seconds:9.4f}  ({got})")
    for days in args.trim_days:
        time_trim(days)


if __name__ == "__main__":
    main()
