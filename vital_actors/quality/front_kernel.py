"""The compiled kernel of the quality front end (numba): every per-sample step of
:func:`.front.run_front`, one stream at a time, one call for a whole group.

Plain functions, compiled by ``numba.njit(cache=True)`` below (a typed name for each:
numba has no type stubs). No fastmath: every float expression is written in the order
of front.py's numpy calls (and scipy's C kernels), so the results are the same bits
(tests/test_front_jit.py). A stream's state is one row of a table (``r``), laid out by
``front_jit.layout``: front.py's ``det`` column, then each channel's ``sqi`` rows;
``g`` holds the offsets and lengths (``front_jit.layout``'s ``geom``).

Without numba the same functions run as plain Python (far too slow to serve, but
importable: :mod:`.front_jit` then reports the compiled front unavailable). numba
caches what it compiles next to this file, or in ``$NUMBA_CACHE_DIR``, or in the
user's cache folder; where none of them is writable it compiles in memory at each
start (~6 s) rather than fail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from .front import CLIP_MV

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; a broken install
    numba = None  # type: ignore[assignment]

__all__ = ["NUMBA", "group"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
NUMBA = numba is not None  # whether the kernel is compiled (else plain Python)
_log = logging.getLogger(__name__)



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
    if numba is None:  # pragma: no cover
        return fn
    try:
        jitted: Callable[..., Any] = numba.njit(cache=True)(fn)
    except RuntimeError as exc:  # "cannot cache function ...: no locator available"
        if not _uncached:
            _log.warning("numba cannot cache the quality front end (%s): it compiles it at "
                         "each start (~6 s); set NUMBA_CACHE_DIR to a writable folder", exc)
        _uncached.append(fn.__name__)
        jitted = numba.njit(fn)
    return jitted


_uncached: list[str] = []  # the functions numba could not cache (all or none)


# The compiled functions; numba resolves these module globals when it compiles the
# functions that call them (on the first call, or from its cache).
_sos_step = _compile(_py_sos_step)
_sos_block = _compile(_py_sos_block)
_peak_at = _compile(_py_peak_at)
_detector_a = _compile(_py_detector_a)
_detector_b = _compile(_py_detector_b)
_totals = _compile(_py_totals)
group = _compile(_py_group)
