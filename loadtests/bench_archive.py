"""What the live archive's writer spends per frame, by how many frames reach it at once.

    python -m loadtests.bench_archive [--runs 150] [--seconds 10] [--repeat 3]

``--runs`` streams each send a 100-ms frame (36 samples x 2 int16 channels) ten times
a second; every 0.2 s (the default ``archive.commit_delay_s``) the writer syncs. Two
ways, side by side in one process, alternating:

- ``per frame``: each frame written by its own ``_Writer.write`` call, as the writer
  did when each batch held a frame or two (and a worker-thread trip each);
- ``window``: the window's frames in one ``_Writer.commit`` (write, then sync), as the
  ``interval`` policy does now.

Reports CPU µs per frame (``time.process_time``: the write calls and the sync), after
a first window that opens the files. No trio: the thread trips are not counted here.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from protocol import Hello
from vital_actors.archive import Append, ArchiveItem, Durable, _Writer

__all__ = ["main"]

HELLO = Hello("s", 360.0, ("MLII", "V1"), "int16", (200.0, 200.0), (1024.0, 1024.0))
FRAME = 36


def run(runs: int, seconds: float, per_frame: bool) -> float:
    """CPU µs per frame of one way, on fresh files."""
    root = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    try:
        writer = _Writer(root)
        durables = [Durable() for _ in range(runs)]
        data = np.random.default_rng(1).integers(-500, 500, (FRAME, 2)).astype("<i2").tobytes()
        windows = round(seconds * 5)
        cpu = 0.0
        for w in range(windows + 1):  # window 0 opens the files: not counted
            items: list[ArchiveItem] = [
                Append(f"s{i}", 0, HELLO, 2 * w + k, (2 * w + k) * FRAME, FRAME, data,
                       durables[i])
                for k in range(2) for i in range(runs)]
            t = time.process_time()
            if per_frame:
                for item in items:
                    writer.write([item])
                writer.sync()
            else:
                writer.commit(items)
            if w:
                cpu += time.process_time() - t
        writer.close_all()
        return cpu / (windows * 2 * runs) * 1e6
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=150)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeat", type=int, default=3, help="runs of each, the fastest counts")
    args = p.parse_args()
    found: dict[str, list[float]] = {"per frame": [], "window": []}
    for _ in range(args.repeat):
        for way in found:
            found[way].append(run(args.runs, args.seconds, way == "per frame"))
    print(f"{args.runs} runs x {args.seconds:g} s of 100-ms frames, a sync every 0.2 s "
          f"(CPU µs per frame, fastest of {args.repeat})")
    for way, us in found.items():
        print(f"{way:>10} {min(us):8.1f}   all: {' '.join(f'{x:.1f}' for x in us)}")
    print(f"{'ratio':>10} {min(found['per frame']) / min(found['window']):8.2f}x")


if __name__ == "__main__":
    main()
