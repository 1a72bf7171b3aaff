"""Would a numba-compiled front end make the screen's per-frame work small enough?

    python -m loadtests.bench_front_jit --check               # bit-identical to run_front?
    python -m loadtests.bench_front_jit --per-call 50 200     # µs per frame, side by side
    python -m loadtests.bench_front_jit --compile-time        # numba's compile, cache load
    python -m loadtests.bench_front_jit --split               # where the time goes

A feasibility prototype, not the server's path. ``front_jit`` does the per-sample work
of :func:`vital_actors.quality.front.run_front`, all of it: detector A (the QRS
band-pass, derivative, |.|, running sum, moving-window integration, candidate MWI
peaks and their R peaks), detector B (|x|, its envelope, candidate beats), the SQI
filters and sums of each 1-s step, and the SNR history (``full``).
It loops over the samples of one stream at a time in compiled code (``@njit``, no
fastmath: every float operation in the order front.py's numpy calls make it), one
call for a whole group. Each stream's state is one row of a :class:`JitTable`,
updated in place: nothing is gathered or scattered. The row holds front.py's numbers
(``_det_parts`` then ``_sqi_parts`` channel by channel), so :func:`row_of` and
:func:`state_of` convert a :class:`FrontState` either way. It returns the same
:class:`FrontOut` list as ``run_front``.

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

import numba
import numpy as np
import numpy.typing as npt
import scipy.signal

from vital_actors.filtering import design as filter_design
from vital_actors.quality import front
from vital_actors.quality.design import FEATURES, Design, design_for
from vital_actors.quality.front import CLIP_MV, FrontOut, FrontState, run_front
from vital_actors.settings import FilterSettings
from vital_actors.sources import data_dir, list_records, load_record

__all__ = ["JitState", "JitTable", "check", "front_jit", "main", "row_of", "state_of"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
FS = 360.0
assert len(FEATURES) == 10, "the kernel keeps ten running totals"
CHECK_RECORDS = ("101", "108", "203", "207")  # 100 is not in the shared DS1 folder


# ---- the compiled kernel ----------------------------------------------------------
# Plain functions, compiled below by numba.njit (a typed name for each: numba has no
# type stubs). Every float expression is written in the order of front.py's numpy
# calls (and scipy's C kernels), so the results are the same bits.

def _py_sos_step(sos: F64, z: F64, at: int, x: float) -> float:
    """One sample through scipy's ``_sosfilt`` kernel (direct form II transposed,
    section by section); the sections' state ``z[at + 2 s + j]``, updated."""
    for s in range(sos.shape[0]):
        y = sos[s, 0] * x + z[at + 2 * s]
        z[at + 2 * s] = sos[s, 1] * x - sos[s, 4] * y + z[at + 2 * s + 1]
        z[at + 2 * s + 1] = sos[s, 2] * x - sos[s, 5] * y
        x = y
    return x


def _py_sos_block(sos: F64, z: F64, at: int, x: F64, y: F64, n: int) -> None:
    """``y[:n]``: ``x[:n]`` through the sections (as ``_sos_step`` sample by sample),
    their state in locals for the block (one or two sections, as every design has)."""
    if sos.shape[0] == 1:
        b0, b1, b2, a1, a2 = sos[0, 0], sos[0, 1], sos[0, 2], sos[0, 4], sos[0, 5]
        z0, z1 = z[at], z[at + 1]
        for i in range(n):
            x0 = x[i]
            y0 = b0 * x0 + z0
            z0 = b1 * x0 - a1 * y0 + z1
            z1 = b2 * x0 - a2 * y0
            y[i] = y0
        z[at], z[at + 1] = z0, z1
    elif sos.shape[0] == 2:
        b0, b1, b2, a1, a2 = sos[0, 0], sos[0, 1], sos[0, 2], sos[0, 4], sos[0, 5]
        c0, c1, c2, d1, d2 = sos[1, 0], sos[1, 1], sos[1, 2], sos[1, 4], sos[1, 5]
        z0, z1, w0, w1 = z[at], z[at + 1], z[at + 2], z[at + 3]
        for i in range(n):
            x0 = x[i]
            y0 = b0 * x0 + z0
            z0 = b1 * x0 - a1 * y0 + z1
            z1 = b2 * x0 - a2 * y0
            y1 = c0 * y0 + w0
            w0 = c1 * y0 - d1 * y1 + w1
            w1 = c2 * y0 - d2 * y1
            y[i] = y1
        z[at], z[at + 1], z[at + 2], z[at + 3] = z0, z1, w0, w1
    else:
        for i in range(n):
            y[i] = _sos_step(sos, z, at, x[i])


def _py_peak_at(x: F64, j: int, before: int, after: int) -> bool:
    """``x[j + before]`` is the largest of ``x[j .. j + before + after]`` (front's
    ``elig == _window_max(...)`` for finite samples, as int16 input always is). From
    the middle outwards: a larger neighbour, if any, is most often near."""
    c = j + before
    v = x[c]
    for i in range(1, max(before, after) + 1):
        if (i <= after and x[c + i] > v) or (i <= before and x[c - i] > v):
            return False
    return True


def _py_detector_a(r: F64, g: I64, sos: F64, det: F64, n: int, t0: int,
                fb: F64, fc: F64, fm: F64, out_at: I64, out_v: F64, out_r: I64,
                found: int) -> int:
    """Detector A of one stream (front's ``_detector_a``) on *det* (n samples):
    updates its state in *r*; appends candidates from *found* on; returns the count."""
    o_zq, o_bp, o_cs, o_m, keep, mwi, back, ahead, delay = g[0], g[1], g[2], g[3], \
        g[4], g[5], g[6], g[7], g[8]
    m_keep = back + ahead
    for i in range(keep):
        fb[i] = r[o_bp + i]
    for i in range(mwi):
        fc[i] = r[o_cs + i]
    for i in range(m_keep):
        fm[i] = r[o_m + i]
    _sos_block(sos, r, o_zq, det, fb[keep:], n)
    for i in range(n):
        k = keep + i
        # 2 t[i+4] + t[i+3] - t[i+1] - 2 t[i], in that order; |.|; summed on
        fc[mwi + i] = fc[mwi + i - 1] + abs(2.0 * fb[k] + fb[k - 1] - fb[k - 3]
                                            - 2.0 * fb[k - 4])
        fm[m_keep + i] = fc[mwi + i] - fc[i]
    span = mwi + 5
    for j in range(n):
        v = fm[back + j]
        if v > fm[back + j - 1] and v > 0.0 and _peak_at(fm, j, back, ahead):
            lo = j - ahead + keep - (span - 1)
            best, arg = abs(fb[lo]), 0
            for q in range(1, span):
                if abs(fb[lo + q]) > best:
                    best, arg = abs(fb[lo + q]), q
            out_at[found], out_v[found] = j + t0, v
            out_r[found] = lo + arg - keep - delay + t0
            found += 1
    for i in range(keep):
        r[o_bp + i] = fb[n + i]
    for i in range(mwi):
        r[o_cs + i] = fc[n + i]
    for i in range(m_keep):
        r[o_m + i] = fm[n + i]
    return found


def _py_detector_b(r: F64, g: I64, b0: float, a1: float, x_f: F64, n: int, t0: int,
                fa: F64, fe: F64, out_at: I64, out_v: F64, found: int) -> int:
    """Detector B of one stream (front's ``_detector_b``; the envelope as scipy's
    ``lfilter`` computes it, b padded with a zero); returns the count."""
    o_ze, o_ab, o_env, h = g[9], g[10], g[11], g[12]
    for i in range(2 * h):
        fa[i], fe[i] = r[o_ab + i], r[o_env + i]
    z = r[o_ze]
    for i in range(n):
        a = abs(x_f[i])
        y = z + b0 * a
        z = a * 0.0 - y * a1
        fa[2 * h + i], fe[2 * h + i] = a, y
    r[o_ze] = z
    for j in range(n):
        v = fa[h + j]
        if v > fa[h + j - 1] and v > 3.0 * fe[h + j] and _peak_at(fa, j, h, h):
            out_at[found], out_v[found] = j - h + t0, v
            found += 1
    for i in range(2 * h):
        r[o_ab + i], r[o_env + i] = fa[n + i], fe[n + i]
    return found


def _py_totals(r: F64, at: int, g: I64, bw_sos: F64, hf_sos: F64, mv: F64, f: F64, n: int,
               first: int, snaps: F64, col: int, bw: F64, hf: F64) -> None:
    """One channel's SQI filters and per-step sums (front's ``_totals`` and
    ``_features``), sample by sample: *snaps* ``[j, :, col]`` at each step end, the
    step's sums, which then start again from zero;
    *bw*, *hf*: work arrays (n)."""
    step, o_bw, o_hf, o_tot, o_last = g[13], g[14], g[15], g[16], g[17]
    _sos_block(bw_sos, r, at + o_bw, mv, bw, n)
    _sos_block(hf_sos, r, at + o_hf, mv, hf, n)
    t = r[at + o_tot:at + o_tot + 10]
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9 = t[0], t[1], t[2], t[3], t[4], t[5], t[6], \
        t[7], t[8], t[9]
    last, end, j = r[at + o_last], first, 0
    for i in range(n):
        m, fv, b, h = mv[i], f[i], bw[i], hf[i]
        sat = 1.0 if m == last and abs(m - b) > CLIP_MV else 0.0
        last = m
        f2 = fv * fv
        s0 += fv
        s1 += f2
        s2 += f2 * fv
        s3 += f2 * f2
        s4 += b
        s5 += b * b
        s6 += h * h
        s7 += sat
        s8 += m
        s9 += m * m
        if i == end:
            snaps[j, 0, col], snaps[j, 1, col], snaps[j, 2, col] = s0, s1, s2
            snaps[j, 3, col], snaps[j, 4, col], snaps[j, 5, col] = s3, s4, s5
            snaps[j, 6, col], snaps[j, 7, col], snaps[j, 8, col] = s6, s7, s8
            snaps[j, 9, col] = s9
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = s9 = 0.0  # the next step's from 0
            end, j = end + step, j + 1
    t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9] = s0, s1, s2, s3, s4, s5, \
        s6, s7, s8, s9
    r[at + o_last] = last


def _py_group(table: F64, idx: I64, t0s: I64, col0: I64, widths: I64, dcol: I64,
           mv: F64, filt: F64, g: I64, qrs: F64, bw_sos: F64, hf_sos: F64,
           b0: float, a1: float) -> tuple[I64, I64, F64, I64, I64, I64, F64, F64, F64, I64]:
    """A group's blocks (*mv*, *filt*: (n, channels)), stream ``s`` in columns
    ``col0[s]`` on, its state in ``table[idx[s]]``. Returns detector A's candidates
    (stream's count, at, value, R), B's (count, at, value), the snapshots (step ends,
    features, channels), ``full`` (streams, snr_keep + n) and each stream's first
    step-end row."""
    n, streams = mv.shape[0], idx.shape[0]
    keep, mwi, m_keep, h, o_h, snr_keep, step, rows = g[4], g[5], g[6] + g[7], g[12], \
        g[18], g[19], g[13], g[20]
    fb, fc, fm = np.empty(keep + n), np.empty(mwi + n), np.empty(m_keep + n)
    fa, fe = np.empty(2 * h + n), np.empty(2 * h + n)
    det, det_f, bw, hf = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    a_n, a_at, a_v, a_r = np.zeros(streams, np.int64), np.empty(streams * n, np.int64), \
        np.empty(streams * n), np.empty(streams * n, np.int64)
    b_n, b_at, b_v = np.zeros(streams, np.int64), np.empty(streams * n, np.int64), \
        np.empty(streams * n)
    snaps = np.zeros(((n + step - 1) // step, 10, mv.shape[1]))
    full = np.empty((streams, snr_keep + n))
    firsts = np.empty(streams, np.int64)
    found_a, found_b = 0, 0
    for s in range(streams):
        r, t0 = table[idx[s]], t0s[s]
        for i in range(n):
            det[i], det_f[i] = mv[i, dcol[s]], filt[i, dcol[s]]
        got = _detector_a(r, g, qrs, det, n, t0, fb, fc, fm, a_at, a_v, a_r, found_a)
        a_n[s], found_a = got - found_a, got
        got = _detector_b(r, g, b0, a1, det_f, n, t0, fa, fe, b_at, b_v, found_b)
        b_n[s], found_b = got - found_b, got
        for i in range(snr_keep):
            full[s, i] = r[o_h + i]
        for i in range(n):
            full[s, snr_keep + i] = det_f[i]
        for i in range(snr_keep):
            r[o_h + i] = full[s, n + i]
        firsts[s] = ((-(t0 + 1)) % step + step) % step
        for c in range(widths[s]):
            col = col0[s] + c
            _totals(r, rows + c * g[21], g, bw_sos, hf_sos, mv[:, col], filt[:, col], n,
                    firsts[s], snaps, col, bw, hf)
    return a_n, a_at[:found_a], a_v[:found_a], a_r[:found_a], b_n, b_at[:found_b], \
        b_v[:found_b], snaps, full, firsts


def _compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    jitted: Callable[..., Any] = numba.njit(cache=True)(fn)
    return jitted


# The compiled functions; numba resolves these module globals when it compiles the
# functions that call them (on the first call, or from its cache).
_sos_step = _compile(_py_sos_step)
_sos_block = _compile(_py_sos_block)
_peak_at = _compile(_py_peak_at)
_detector_a = _compile(_py_detector_a)
_detector_b = _compile(_py_detector_b)
_totals = _compile(_py_totals)
_group = _compile(_py_group)


# ---- state: one row per stream --------------------------------------------------

@dataclass(frozen=True, slots=True)
class Layout:
    """Where each part of a stream's state sits in its row (``geom``: the kernel's
    offsets and lengths). The row: front's ``det`` column (``_det_parts``), then per
    channel its ``_sqi_parts`` rows (``sqi_rows``)."""

    design: Design
    geom: I64
    det_rows: int
    sqi_rows: int

    def width(self, channels: int) -> int:
        return self.det_rows + self.sqi_rows * channels


def layout(d: Design) -> Layout:
    det = _offsets(front._det_parts(d))
    sqi = _offsets(front._sqi_parts(d))
    det_rows = sum(math.prod(lead) for _, lead in front._det_parts(d))
    sqi_rows = sum(math.prod(lead) for _, lead in front._sqi_parts(d))
    geom = np.array([det["zi_qrs"], det["bp"], det["cs"], det["mwi"], d.bp_keep, d.mwi,
                     d.back, d.ahead, d.qrs_delay, det["zi_env"], det["ab"], det["env"],
                     d.b_half, d.step, sqi["zi_bw"], sqi["zi_hf"], sqi["tot"], sqi["last"],
                     det["hist"], d.snr_keep, det_rows, sqi_rows], np.int64)
    return Layout(d, geom, det_rows, sqi_rows)


def _offsets(parts: tuple[tuple[str, tuple[int, ...]], ...]) -> dict[str, int]:
    out, at = {}, 0
    for name, lead in parts:
        out[name] = at
        at += math.prod(lead)
    return out


def row_of(lay: Layout, st: FrontState) -> F64:
    """A :class:`FrontState`'s numbers as one row."""
    row = np.empty(lay.width(st.width))
    row[:lay.det_rows] = st.det[:, 0]
    row[lay.det_rows:] = st.sqi.T.ravel()
    return row


def state_of(lay: Layout, row: F64, channels: int, next_t: int) -> FrontState:
    """The :class:`FrontState` of a row (what pickles today's format)."""
    st = FrontState.fresh(lay.design, channels, next_t)
    st.pack.det[:, 0] = row[:lay.det_rows]
    st.pack.sqi[:] = row[lay.det_rows:lay.width(channels)].reshape(channels, -1).T
    return st


@dataclass(slots=True)
class JitState:
    """A stream's row in its table, and the sample index its next block starts at."""

    slot: int
    width: int
    next_t: int


class JitTable:
    """The rows of every stream of one design (as wide as the widest stream)."""

    def __init__(self, lay: Layout, streams: int, channels: int) -> None:
        self.lay = lay
        self.rows = np.zeros((streams, lay.width(channels)))
        self.used = 0

    def fresh(self, channels: int, t0: int) -> JitState:
        lay, slot = self.lay, self.used
        self.used += 1
        row = self.rows[slot]
        row[:] = 0.0
        last = lay.det_rows + int(lay.geom[17])
        row[last:last + lay.sqi_rows * channels:lay.sqi_rows] = np.nan  # as FrontState
        return JitState(slot, channels, t0)


def front_jit(table: JitTable, states: Sequence[JitState], det_cols: Sequence[int],
              mv: F64, filtered: F64, waiting: Sequence[bool]) -> list[FrontOut | None]:
    """``run_front`` on *table*'s rows: the same arguments (*det_cols*: each stream's
    detection channel among *mv*'s columns, instead of the stacked copies), the same
    outputs; one compiled call for the group."""
    lay, n = table.lay, mv.shape[0]
    widths = [st.width for st in states]
    col0 = np.zeros(len(states), np.int64)
    np.cumsum(widths[:-1], out=col0[1:])
    t0_list = [st.next_t for st in states]
    d = lay.design
    a_n, a_at, a_v, a_r, b_n, b_at, b_v, snaps, full, firsts = _group(
        table.rows, np.array([st.slot for st in states], np.int64),
        np.array(t0_list, np.int64), col0, np.array(widths, np.int64),
        np.array(det_cols, np.int64), mv, filtered, lay.geom, d.qrs_sos, d.bw_sos,
        d.hf_sos, float(d.env_b[0] / d.env_a[0]), float(d.env_a[1] / d.env_a[0]))
    full_t = full.T
    peaks_a = list(zip(a_at.tolist(), a_v.tolist(), a_r.tolist(), strict=True))
    beats_b = list(zip(b_at.tolist(), b_v.tolist(), strict=True))
    out: list[FrontOut | None] = []
    at_a = at_b = 0
    for k, (st, t0, first, na, nb, col) in enumerate(zip(
            states, t0_list, firsts.tolist(), a_n.tolist(), b_n.tolist(), col0.tolist(),
            strict=True)):
        st.next_t = t0 + n
        if first >= n and not na and not nb and not waiting[k]:
            out.append(None)
            continue
        rows = snaps[:, :, col:col + st.width]
        snaps_k = [(t0 + first + 1 + j * d.step, rows[j])
                   for j in range(0, (n - first + d.step - 1) // d.step if first < n else 0)]
        out.append(FrontOut(t0, full_t, k, peaks_a[at_a:at_a + na], beats_b[at_b:at_b + nb],
                            snaps_k))
        at_a, at_b = at_a + na, at_b + nb
    return out


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
    """The prototype and run_front disagree."""


def check(sigs: Sequence[Signal], block: int = 36, seed: int = 0, fs: float = FS) -> int:
    """Feed *sigs* through run_front and front_jit in blocks of *block* samples (the
    streams in a new order each call), as sampled at *fs* (another rate: the same
    samples through another design); raise :class:`MismatchError` at the first output
    or state that differs in any bit. Returns the number of candidates and snapshots
    compared."""
    d = design_for(fs)
    lay = layout(d)
    width = max(s.mv.shape[1] for s in sigs)
    table = JitTable(lay, len(sigs), width)
    fronts = [FrontState.fresh(d, s.mv.shape[1], s.t0) for s in sigs]
    jits = [table.fresh(s.mv.shape[1], s.t0) for s in sigs]
    rng, compared = np.random.default_rng(seed), 0
    for a in range(0, min(len(s.mv) for s in sigs) - block + 1, block):
        order = rng.permutation(len(sigs)).tolist()
        mv, filt, det_cols = _stack([sigs[i] for i in order], a, block)
        waiting = [False] * len(order)
        want = run_front(d, [fronts[i] for i in order], mv[:, det_cols], filt[:, det_cols],
                         mv, filt, [sigs[i].mv.shape[1] for i in order], waiting, {})
        got = front_jit(table, [jits[i] for i in order], det_cols, mv, filt, waiting)
        for k, i in enumerate(order):
            compared += _same(want[k], got[k], f"stream {i}, block at {a}")
            _same_bits(row_of(lay, fronts[i]), table.rows[jits[i].slot, :lay.width(
                sigs[i].mv.shape[1])], f"stream {i}'s state after the block at {a}")
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
            out = front_jit(self.table, [self.jits[i] for i in ids], det_cols, mv, filt,
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
    the states' columns, the SNR history, the outputs); for the prototype, the
    stacking, the compiled call and the rest (its arguments and outputs)."""
    spent: dict[str, float] = {}
    this = sys.modules[__name__]
    names = [(this, "_stack")] + ([(this, "_group")] if jit else [
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
