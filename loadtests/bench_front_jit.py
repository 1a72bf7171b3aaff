"""The compiled front end (vital_actors/quality/front_jit.py) against run_front.

    python -m loadtests.bench_front_jit --check               # bit-identical to run_front?
    python -m loadtests.bench_front_jit --per-call 50 200     # µs per frame, side by side
    python -m loadtests.bench_front_jit --compile-time        # numba's compile, cache load
    python -m loadtests.bench_front_jit --split               # where the time goes

Begun here as a feasibility prototype (3f186f3), now the chain's front end by
default (``screen.front``). :func:`~vital_actors.quality.front_jit.run_compiled` does
the per-sample work of :func:`vital_actors.quality.front.run_front`, all of it:
detector A (the QRS band-pass, derivative, |.|, running sum, moving-window
integration, candidate MWI peaks and their R peaks), detector B (|x|, its envelope,
candidate beats), the SQI filters and sums of each 1-s step, and the SNR history
(``full``). It loops over the samples of one stream at a time in compiled code
(:mod:`vital_actors.quality.front_kernel`, ``@njit``, no fastmath: every float
operation in the order front.py's numpy calls make it), one call for a whole group.
Each stream's state is one row of a :class:`JitTable`, updated in place: nothing is
gathered or scattered. It returns the same :class:`FrontOut` list as ``run_front``,
and a :class:`JitState` pickles what a :class:`FrontState` pickles.

``--check`` feeds slices of MIT-BIH records through both in 100-ms blocks (the streams
in a new order each call, with other step phases and channel counts) and compares the
outputs and the states bit for bit. The timing feeds ``--streams`` replays in calls of
``--per-call`` frames, each round's frames in a new order (as ``bench_screen_cache
--shuffle``), and times (``process_time``) each call from its frames to its FrontOut
list: stacking the blocks (as ``QualityChain._group``), gathering and storing the
state, the work. ``cold``: a 64-MB read between calls (the server's other work).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.signal

from vital_actors.filtering import design as filter_design
from vital_actors.quality import front, front_kernel
from vital_actors.quality.design import design_for
from vital_actors.quality.front import FrontOut, FrontState, run_front
from vital_actors.quality.front_jit import JitTable, layout, run_compiled
from vital_actors.settings import FilterSettings
from vital_actors.sources import data_dir, list_records, load_record

__all__ = ["check", "main"]

F64 = npt.NDArray[np.float64]
FS = 360.0
CHECK_RECORDS = ("101", "108", "203", "207")  # 100 is not in the shared DS1 folder


# ---- the check: bit for bit against run_front ------------------------------------

@dataclass(frozen=True, slots=True)
class Signal:
    """One stream to feed: samples in mV and band-passed (n, channels), the detection
    channel, and its first sample index (which sets the phase of its 1-s steps)."""

    mv: F64
    filtered: F64
    det: int
    t0: int


def signals(records: Sequence[str], seconds: float) -> list[Signal]:
    """Slices of *records* (each from another offset, some single-channel, some
    detecting on lead 1) ready to feed."""
    root = data_dir()
    if root is None or not (root / "mitdb").is_dir():
        raise FileNotFoundError("the MIT-BIH folder (shared/data/mitdb) is not there")
    out = []
    for k, name in enumerate(records):
        start = 3600 * k
        rec = load_record(root / "mitdb" / name, start=start,
                          stop=start + round(seconds * FS))
        mv = (rec.samples - np.asarray(rec.baseline)) / np.asarray(rec.gain)
        if k % 4 == 3:
            mv = mv[:, :1]
        out.append(Signal(np.ascontiguousarray(mv), _bandpass(mv), int(k % 4 == 2),
                          [0, 97, 1000, 35][k % 4] + start))
    return out


def _bandpass(mv: F64) -> F64:
    sos = filter_design(FilterSettings(), FS, fallback=FilterSettings()).sos
    out: F64 = np.ascontiguousarray(scipy.signal.sosfilt(sos, mv, axis=0))
    return out


class MismatchError(AssertionError):
    """The compiled front end and run_front disagree."""


def check(sigs: Sequence[Signal], block: int = 36, seed: int = 0, fs: float = FS) -> int:
    """Feed *sigs* through run_front and run_compiled in blocks of *block* samples (the
    streams in a new order each call), as sampled at *fs* (another rate: the same
    samples through another design); raise :class:`MismatchError` at the first output
    or state that differs in any bit. Returns the number of candidates and snapshots
    compared."""
    d = design_for(fs)
    table = JitTable(layout(d), 1, 1)  # grown as the streams come (rows and width)
    fronts = [FrontState.fresh(d, s.mv.shape[1], s.t0) for s in sigs]
    jits = [table.fresh(s.mv.shape[1], s.t0) for s in sigs]
    rng, compared = np.random.default_rng(seed), 0
    for a in range(0, min(len(s.mv) for s in sigs) - block + 1, block):
        order = rng.permutation(len(sigs)).tolist()
        mv, filt, det_cols = _stack([sigs[i] for i in order], a, block)
        waiting = [False] * len(order)
        want = run_front(d, [fronts[i] for i in order], mv[:, det_cols], filt[:, det_cols],
                         mv, filt, [sigs[i].mv.shape[1] for i in order], waiting, {})
        got = run_compiled(table, [jits[i] for i in order], det_cols, mv, filt, waiting)
        for k, i in enumerate(order):
            compared += _same(want[k], got[k], f"stream {i}, block at {a}")
            (w_det, w_sqi, w_t), (g_det, g_sqi, g_t) = (fronts[i].__getstate__(),
                                                        jits[i].__getstate__())
            where = f"stream {i}'s state after the block at {a}"
            _same_bits(w_det, g_det, f"{where}: det")
            _same_bits(w_sqi, g_sqi, f"{where}: sqi")
            if w_t != g_t:
                raise MismatchError(f"{where}: next_t {w_t} against {g_t}")
    return compared


def _stack(sigs: Sequence[Signal], a: int, n: int) -> tuple[F64, F64, list[int]]:
    """The blocks stacked as ``QualityChain._group`` does, and the detection columns."""
    mv = np.concatenate([s.mv[a:a + n] for s in sigs], axis=1)
    filt = np.concatenate([s.filtered[a:a + n] for s in sigs], axis=1)
    cols, at = [], 0
    for s in sigs:
        cols.append(at + s.det)
        at += s.mv.shape[1]
    return mv, filt, cols


def _same(want: FrontOut | None, got: FrontOut | None, where: str) -> int:
    if want is None or got is None:
        if want is not got:
            raise MismatchError(f"{where}: {want!r} against {got!r}")
        return 0
    if (want.t0, want.peaks_a, want.beats_b) != (got.t0, got.peaks_a, got.beats_b):
        raise MismatchError(f"{where}: peaks {want.peaks_a} {want.beats_b} against "
                            f"{got.peaks_a} {got.beats_b}")
    _same_bits(want.full[:, want.k], got.full[:, got.k], f"{where}: full")
    if [b for b, _ in want.snaps] != [b for b, _ in got.snaps]:
        raise MismatchError(f"{where}: snapshots at {want.snaps} against {got.snaps}")
    for (b, x), (_, y) in zip(want.snaps, got.snaps, strict=True):
        _same_bits(x, y, f"{where}: totals at {b}")
    return len(want.peaks_a) + len(want.beats_b) + len(want.snaps)


def _same_bits(want: F64, got: F64, where: str) -> None:
    w, g = np.ascontiguousarray(want), np.ascontiguousarray(got)
    if w.shape != g.shape or not np.array_equal(w.view(np.uint64), g.view(np.uint64)):
        with np.errstate(all="ignore"):
            rel = np.nanmax(np.abs(w - g) / np.maximum(np.abs(w), 1e-300)) \
                if w.shape == g.shape else math.nan
        raise MismatchError(f"{where} differs (max relative difference {rel:.3g})")


# ---- timing -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Load:
    """*streams* replays of the DS1 records, each its own offset."""

    sigs: list[Signal]
    rounds: int


def load(streams: int, seconds: float) -> Load:
    root = data_dir()
    if root is None or not (root / "mitdb").is_dir():
        raise SystemExit("the MIT-BIH folder (shared/data/mitdb) is not there")
    n, extra = round(seconds * FS), round(60 * FS)
    recs = []
    for path in list_records(root / "mitdb"):
        rec = load_record(path, stop=n + extra)
        mv = np.ascontiguousarray((rec.samples - np.asarray(rec.baseline))
                                  / np.asarray(rec.gain))
        recs.append((mv, _bandpass(mv)))
    sigs = []
    for i in range(streams):
        mv, filt = recs[i % len(recs)]
        start = (i // len(recs)) * 7919 % extra
        sigs.append(Signal(mv[start:start + n], filt[start:start + n], 0, 0))
    return Load(sigs, n // 36)


class _Way:
    """One version's streams and its call, timed per call."""

    def __init__(self, lo: Load, jit: bool) -> None:
        d = design_for(FS)
        self.d, self.jit = d, jit
        self.table = JitTable(layout(d), len(lo.sigs), 2)
        self.fronts = [FrontState.fresh(d, 2, 0) for _ in lo.sigs]
        self.jits = [self.table.fresh(2, 0) for _ in lo.sigs]

    def call(self, sigs: Sequence[Signal], ids: Sequence[int], a: int, n: int) -> int:
        mv, filt, det_cols = _stack(sigs, a, n)
        waiting = [False] * len(ids)
        if self.jit:
            out = run_compiled(self.table, [self.jits[i] for i in ids], det_cols, mv, filt,
                            waiting)
        else:
            step = mv.shape[1] // len(ids)  # as _group: evenly spaced, views
            out = run_front(self.d, [self.fronts[i] for i in ids], mv[:, 0::step],
                            filt[:, 0::step], mv, filt, [2] * len(ids), waiting, {})
        return len(out)


def us_per_frame(lo: Load, per_call: int, jit: bool, junk: F64 | None) -> float:
    """µs of CPU per frame, calls of *per_call* frames in a new order each round."""
    way, rng, spent, frames = _Way(lo, jit), np.random.default_rng(0), 0.0, 0
    for k in range(lo.rounds):
        order = rng.permutation(len(lo.sigs)).tolist()
        for c in range(0, len(order), per_call):
            ids = order[c:c + per_call]
            sigs = [lo.sigs[i] for i in ids]
            if junk is not None:
                junk.sum()
            gc.disable()
            t = time.process_time()
            frames += way.call(sigs, ids, 36 * k, 36)
            spent += time.process_time() - t
            gc.enable()
    return spent / frames * 1e6


def split(lo: Load, per_call: int, jit: bool) -> dict[str, float]:
    """µs per frame in each part of a version's calls (its helpers timed in place):
    for run_front, the blocks' stacking, its module's helpers and the rest (gathering
    the states' columns, the SNR history, the outputs); for the compiled front,
    the stacking, the compiled call and the rest (its arguments and outputs)."""
    spent: dict[str, float] = {}
    this = sys.modules[__name__]
    names = [(this, "_stack")] + ([(front_kernel, "group")] if jit else [
        (front, name) for name in ("_unpack", "_detector_a", "_detector_b", "_totals",
                                   "_pack")])
    saved = [(mod, name, getattr(mod, name)) for mod, name in names]

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            t = time.process_time()
            try:
                return fn(*args)
            finally:
                spent[name] = spent.get(name, 0.0) + time.process_time() - t
        return wrapper

    for mod, name, fn in saved:
        setattr(mod, name, timed(name.lstrip("_"), fn))
    try:
        total = us_per_frame(lo, per_call, jit, None)
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
    frames = lo.rounds * len(lo.sigs)
    parts = {name: t / frames * 1e6 for name, t in spent.items()}
    parts["rest"] = total - sum(parts.values())
    return parts


_COMPILE_CHILD = """
import time
t = time.perf_counter()
import loadtests.bench_front_jit as b
t1 = time.perf_counter()
sigs = [b.Signal(s.mv[:360], s.filtered[:360], s.det, s.t0) for s in
        b.signals(b.CHECK_RECORDS[:2], 2)]
t2 = time.perf_counter()
b.check(sigs)
print(t1 - t, time.perf_counter() - t2)
"""


def compile_times() -> list[tuple[float, float]]:
    """(import, first check) seconds in two child processes sharing a new numba cache
    folder: the first compiles, the second loads what the first cached."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = []
        for _ in range(2):
            got = subprocess.run([sys.executable, "-c", _COMPILE_CHILD], env=env, cwd=root,
                                 capture_output=True, text=True, check=True).stdout.split()
            out.append((float(got[-2]), float(got[-1])))
        return out


def _runs(lo: Load, per_call: int, repeat: int,
          junk: F64 | None) -> Iterator[tuple[str, list[float]]]:
    runs: dict[str, list[float]] = {"run_front": [], "jit": []}
    for _ in range(repeat):  # alternating, so that both see the same moments of the host
        runs["run_front"].append(us_per_frame(lo, per_call, False, junk))
        runs["jit"].append(us_per_frame(lo, per_call, True, junk))
    yield from runs.items()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare with run_front, bit for bit")
    p.add_argument("--check-seconds", type=float, default=60)
    p.add_argument("--compile-time", action="store_true")
    p.add_argument("--split", action="store_true", help="run_front's time by part")
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--per-call", type=int, nargs="*", default=[50, 200])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--pollute-mb", type=float, default=64)
    args = p.parse_args()
    if args.check:
        t = time.perf_counter()
        compared = check(signals(CHECK_RECORDS, args.check_seconds))
        print(f"check: records {', '.join(CHECK_RECORDS)}, {args.check_seconds:g} s each in "
              f"100-ms blocks: {compared} candidates and snapshots, all bit-identical, and the "
              f"states after every block ({time.perf_counter() - t:.1f} s, numba's compile or "
              f"cache load included)")
    if args.compile_time:
        for name, (imp, first) in zip(("compiled", "from cache"), compile_times(),
                                      strict=True):
            print(f"first call {name}: {first:.2f} s (import of the module {imp:.2f} s)")
    if not args.per_call:
        return
    lo = load(args.streams, args.seconds)
    check(lo.sigs[:4], seed=1)  # compiled (and correct) before any timing
    gc.freeze()
    if args.split:
        for n in args.per_call:
            for jit in (False, True):
                parts = split(lo, n, jit)
                print(f"{'jit' if jit else 'run_front'} at {n}/call, µs per frame: "
                      + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
    junk = np.ones(round(args.pollute_mb * 1e6 / 8))
    print(f"{args.streams} streams, {lo.rounds} rounds of 100-ms blocks, "
          f"each round in a new order")
    print(f"{'frames/call':>11} {'caches':>6} {'version':>9} {'µs/frame (each run)':>24}"
          f" {'ratio':>6}")
    for n in args.per_call:
        for caches, pollute in (("warm", None), ("cold", junk)):
            got = dict(_runs(lo, n, args.repeat, pollute))
            ratio = float(np.median(got["run_front"]) / np.median(got["jit"]))
            for version, xs in got.items():
                print(f"{n:11d} {caches:>6} {version:>9} "
                      f"{' '.join(f'{x:7.2f}' for x in xs):>24}"
                      + (f" {ratio:6.1f}" if version == "jit" else ""))


if __name__ == "__main__":
    main()
