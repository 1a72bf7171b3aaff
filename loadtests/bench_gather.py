"""What gathering the screen's per-stream state costs, by layout.

    python -m loadtests.bench_gather --streams 1000 --per-call 190

The screen (``vital_actors.quality.front.run_front``) keeps each stream's detector
state, 1,165 float64 rows at 360 Hz, as a column of the (rows, streams) array of the
call that last had it, and computes on (rows, streams) arrays. When a call's streams
are not the ones of one earlier call (in a server they never are: frames arrive in
another order each time) it gathers their columns anew. This times that gather, with
the caches warm or cold (a 64 MB read before each), per stream, for:

- ``columns``: the screen's way, ``np.concatenate`` of each stream's column view, from
  packs of earlier calls;
- ``columns-fancy``: the same columns by fancy indexing, one call per pack;
- ``rows``: one (streams, rows) array with each stream's state in a row, gathered by
  fancy indexing, as a layout with time along the rows would;
- ``rows+transpose``: the same, then transposed to (rows, streams) for today's code;
- ``rows-scatter``: writing the rows back.

Each way allocates its result afresh, as the screen does. glibc returns freed big
blocks to the system and takes page faults to get them back, which in a loop this
tight costs more than the copy itself (``rows+transpose`` 9-11 µs per stream
against 2-3). The server does not pay that: its own allocations keep glibc's
adaptive thresholds up (about 860 minor faults a second at N = 500 replays). So the
benchmark keeps freed memory in the heap (``mallopt``) unless ``--glibc-defaults``.
"""

from __future__ import annotations

import argparse
import ctypes
import time
from collections.abc import Callable

import numpy as np

from vital_actors.store.libc import libc_function

__all__ = ["main"]

ROWS = 1165  # run_front's detector state per stream at 360 Hz (_det_parts)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def keep_freed_memory() -> None:
    """Big blocks from the heap, and freed ones kept there (no page faults anew)."""
    mallopt = libc_function("mallopt", ctypes.c_int, ctypes.c_int)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, 32 << 20)
        mallopt(M_TRIM_THRESHOLD, 256 << 20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--per-call", type=int, default=190)
    p.add_argument("--packs", type=int, default=8, help="earlier calls' packs to gather from")
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--glibc-defaults", action="store_true",
                   help="leave glibc's allocator as it is (page faults on each big result)")
    args = p.parse_args()
    if not args.glibc_defaults:
        keep_freed_memory()
    rng = np.random.default_rng(0)
    width = -(-args.streams // args.packs)
    packs = [rng.random((ROWS, width)) for _ in range(args.packs)]
    table = rng.random((args.streams, ROWS))
    junk = np.ones(8 << 20)
    k = args.per_call

    def pick() -> tuple[list[tuple[int, int]], np.ndarray]:
        idx = rng.choice(args.streams, k, replace=False)
        return [(int(i) // width, int(i) % width) for i in idx], idx

    def columns() -> None:
        where, _ = pick()
        np.concatenate([packs[p][:, c:c + 1] for p, c in where], axis=1)

    def columns_fancy() -> None:
        where, _ = pick()
        out = np.empty((ROWS, k))
        by: dict[int, tuple[list[int], list[int]]] = {}
        for d, (p, c) in enumerate(where):
            src, dst = by.setdefault(p, ([], []))
            src.append(c)
            dst.append(d)
        for p, (src, dst) in by.items():
            out[:, dst] = packs[p][:, src]

    def rows() -> None:
        table[pick()[1]]

    def rows_transpose() -> None:
        np.ascontiguousarray(table[pick()[1]].T)

    def rows_scatter() -> None:
        table[pick()[1]] = 1.0

    ways: dict[str, Callable[[], None]] = {
        "columns": columns, "columns-fancy": columns_fancy, "rows": rows,
        "rows+transpose": rows_transpose, "rows-scatter": rows_scatter}
    print(f"{'layout':>16} {'warm µs/stream':>15} {'cold µs/stream':>15}")
    for name, way in ways.items():
        got = []
        for cold in (False, True):
            spent = 0.0
            for _ in range(args.calls):
                if cold:
                    junk.sum()
                t = time.perf_counter()
                way()
                spent += time.perf_counter() - t
            got.append(spent / args.calls / k * 1e6)
        print(f"{name:>16} {got[0]:15.2f} {got[1]:15.2f}")


if __name__ == "__main__":
    main()
