"""The vectorized front end: one numpy pass over the blocks of many streams.

For a group of streams with the same :class:`~.design.Design` and block length, the
blocks are stacked side by side (one column per channel) and every per-sample step
runs once for the whole group: the QRS band-pass, derivative, squaring and moving
window integration of detector A, the |x| envelope of detector B, the baseline and
high-frequency filters and the sums behind the window SQIs. Per stream only the few
candidate peaks and each 1-s step's sums come out.

Framing does not matter: filters carry their state (``zi``), sums are continued from
the last partial sum (the same additions in the same order as over the whole step;
a step's sums start from zero at its first sample) and a peak is judged only once the
samples it needs (up to ``ahead`` after it) have all arrived; so any split of a signal
gives the same output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import scipy.ndimage
import scipy.signal

from .design import FEATURES, Design, sosfilt_columns

__all__ = ["B_FACTOR", "FrontOut", "FrontState", "Member", "Pack", "StaleStateError",
           "joined", "run_front"]

F64 = npt.NDArray[np.float64]
B_FACTOR = 3.0  # detector B: a peak of |x| must exceed this many times its envelope

# The per-stream state arrays, by name and shape without the column (last) axis.
# Each stream keeps them packed, row after row, in two arrays (``det``: one column,
# ``sqi``: one per channel), so a batch stacks and splits two arrays per stream.
def _det_parts(d: Design) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return (("zi_qrs", (d.qrs_sos.shape[0], 2)), ("bp", (d.bp_keep,)), ("cs", (d.mwi,)),
            ("mwi", (d.back + d.ahead,)), ("zi_env", (1,)), ("ab", (2 * d.b_half,)),
            ("env", (2 * d.b_half,)), ("hist", (d.snr_keep,)))


def _sqi_parts(d: Design) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return (("zi_bw", (d.bw_sos.shape[0], 2)), ("zi_hf", (d.hf_sos.shape[0], 2)),
            ("tot", (1, len(FEATURES))), ("last", (1,)))


def _unpack(packed: F64, parts: tuple[tuple[str, tuple[int, ...]], ...],
            into: dict[str, F64]) -> None:
    row = 0
    for name, lead in parts:
        rows = math.prod(lead)
        into[name] = packed[row:row + rows].reshape(*lead, packed.shape[1])
        row += rows


def _pack(arrays: dict[str, F64], parts: tuple[tuple[str, tuple[int, ...]], ...]) -> F64:
    return np.concatenate([arrays[name].reshape(math.prod(lead), -1)
                           for name, lead in parts], axis=0)

CLIP_MV = 1.0  # a sample stuck (equal to the one before) this far from the baseline clips
CHUNK_VALUES = 1 << 16  # big blocks' SQI features go in chunks of this many (512 KB)


class StaleStateError(ValueError):
    """A pickled chain from code that kept other state: it cannot resume exactly."""


@dataclass(slots=True, eq=False)
class Pack:
    """The packed states of a group of streams, side by side: ``det`` one column per
    stream, ``sqi`` one per channel. A group that comes back with the same streams in
    the same order uses its pack as it is, without stacking and splitting 2 x streams
    small arrays per call."""

    det: F64
    sqi: F64
    streams: int


@dataclass(slots=True, eq=False)
class FrontState:
    """One stream's filter states and histories (see ``_det_parts``): column ``index``
    of its pack's ``det``, columns ``col`` to ``col + width`` of its ``sqi``."""

    pack: Pack
    index: int
    col: int
    width: int
    next_t: int  # the sample index the next block must start at

    @classmethod
    def fresh(cls, d: Design, channels: int, t0: int) -> FrontState:
        det = np.zeros((sum(math.prod(lead) for _, lead in _det_parts(d)), 1))
        sqi = np.zeros((sum(math.prod(lead) for _, lead in _sqi_parts(d)), channels))
        sqi[-1] = np.nan  # "last": no sample before the first
        return cls(Pack(det, sqi, 1), 0, 0, channels, t0)

    @property
    def det(self) -> F64:
        """(rows, 1): detector A and B state of the detection channel."""
        return self.pack.det[:, self.index:self.index + 1]

    @property
    def sqi(self) -> F64:
        """(rows, channels): SQI filter states and the step's partial sums."""
        return self.pack.sqi[:, self.col:self.col + self.width]

    def __getstate__(self) -> tuple[F64, F64, int]:
        """Pickles its own columns only (not the whole group's pack)."""
        return self.det.copy(), self.sqi.copy(), self.next_t

    def __setstate__(self, state: tuple[F64, F64, int]) -> None:
        if not isinstance(state, tuple) or len(state) != 3:
            raise StaleStateError("front state pickled by older code: start over")
        det, sqi, self.next_t = state
        self.pack, self.index, self.col, self.width = Pack(det, sqi, 1), 0, 0, sqi.shape[1]


class _Group(Protocol):
    @property
    def streams(self) -> int: ...


G = TypeVar("G", bound=_Group)
G_co = TypeVar("G_co", bound=_Group, covariant=True)


class Member(Protocol[G_co]):
    """A stream's state kept as stream ``index`` of a group's ``pack``."""

    @property
    def pack(self) -> G_co: ...

    @property
    def index(self) -> int: ...


def joined(states: Sequence[Member[G]]) -> G | None:
    """The pack *states* make up, as its streams in order, or None (then they are
    joined anew): a check per stream instead of a copy per stream."""
    pack = states[0].pack
    if pack.streams != len(states):
        return None
    for k, st in enumerate(states):
        if st.pack is not pack or st.index != k:
            return None
    return pack


@dataclass(slots=True)
class FrontOut:
    """What one block yields for one stream, all indices are global sample indices.

    ``t0``: the block's first sample index; ``full``: the group's filtered detection
    channels, the last ``snr_keep`` samples before the block and then the block, this
    stream's in column ``k``; ``peaks_a``: (decision index, MWI value, R index) of detector A's
    candidate peaks;
    ``beats_b``: detector B's candidate beats (R index, |x|); ``snaps``: (boundary, sums) at every
    1-s boundary in the block, sums of shape (features, channels) over the step's samples
    (from the previous boundary to this one; not a running total since the start,
    whose rounding grows with all it has summed: after one sample of 1e30, or a long
    artefact at the filter's limit, every later window's kurtosis was noise).
    """

    t0: int
    full: F64
    k: int
    peaks_a: list[tuple[int, float, int]]
    beats_b: list[tuple[int, float]]
    snaps: list[tuple[int, F64]]


def run_front(d: Design, states: Sequence[FrontState], det: F64, det_f: F64,
              mv: F64, filtered: F64, widths: Sequence[int], waiting: Sequence[bool],
              scratch: dict[tuple[int, ...], F64] | None = None) -> list[FrontOut | None]:
    """Process one block per stream, stacked: *det* / *det_f* (n, streams) hold each
    stream's detection channel (in mV / filtered), *mv* / *filtered* (n, channels)
    all channels, ``widths[s]`` channels for stream *s*. Updates *states*; returns
    what each stream got, None for a stream with no peak and no step in the block
    unless ``waiting[s]`` (it has beats waiting for their segment). *scratch* keeps
    the big work array between calls (one per caller: not shared by threads)."""
    n = det.shape[0]
    old: dict[str, F64] = {}
    new: dict[str, F64] = {}
    pack = joined(states)
    if pack is None:
        _unpack(np.concatenate([s.det for s in states], axis=1), _det_parts(d), old)
        _unpack(np.concatenate([s.sqi for s in states], axis=1), _sqi_parts(d), old)
    else:
        _unpack(pack.det, _det_parts(d), old)
        _unpack(pack.sqi, _sqi_parts(d), old)
    t0s = np.array([s.next_t for s in states], np.int64)
    peaks_a = _detector_a(d, old, det, new, t0s)
    peaks_b = _detector_b(d, old, det_f, new, t0s)
    full = np.vstack([old["hist"], det_f])  # the beat-to-beat SNR's history (.repeat)
    new["hist"] = full[-d.snr_keep:]
    # Each stream's first step end in the block (a row index; >= n when none), and
    # the columns of the streams that share it: their totals are summed together.
    firsts = [(-(s.next_t + 1)) % d.step for s in states]
    phases: dict[int, list[int]] = {}
    col = 0
    for first, width in zip(firsts, widths, strict=True):
        phases.setdefault(first, []).extend(range(col, col + width))
        col += width
    at_step = _totals(d, old, mv, filtered, new, phases, {} if scratch is None else scratch)
    det_new, sqi_new = _pack(new, _det_parts(d)), _pack(new, _sqi_parts(d))
    if pack is None:
        pack = Pack(det_new, sqi_new, len(states))
        col = 0
        for k, (state, width) in enumerate(zip(states, widths, strict=True)):
            state.pack, state.index, state.col, state.width = pack, k, col, width
            col += width
    else:
        pack.det, pack.sqi = det_new, sqi_new
    out: list[FrontOut | None] = []
    offsets: dict[int, int] = {}  # per phase, the next stream's column in its array
    for k, (state, width, first) in enumerate(zip(states, widths, firsts, strict=True)):
        t0 = state.next_t
        state.next_t = t0 + n
        a, b = peaks_a.get(k), peaks_b.get(k)
        if first >= n and a is None and b is None and not waiting[k]:
            out.append(None)
            continue
        snaps = []
        if first < n:
            at = offsets.get(first, 0)
            offsets[first] = at + width
            rows = at_step[first][:, :, at:at + width]
            snaps = [(t0 + first + 1 + j * d.step, rows[j]) for j in range(len(rows))]
        out.append(FrontOut(t0, full, k, a or [], b or [], snaps))
    return out


def _detector_a(d: Design, old: dict[str, F64], x: F64, new: dict[str, F64],
                t0s: npt.NDArray[np.int64]) -> dict[int, list[tuple[int, float, int]]]:
    """Pan-Tompkins front end: band-pass, 5-point derivative, |.|, integrate over
    ``mwi`` samples; candidates are MWI peaks that are the largest in [i-back, i+ahead].

    Returns, per stream (column) that has any, the sample index where each candidate
    is decided (the last sample it needed), its MWI value and the sample index of its
    R peak (block rows plus the column's first sample index in *t0s*).
    """
    n = x.shape[0]
    bp, new["zi_qrs"] = sosfilt_columns(d.qrs_sos, x, old["zi_qrs"])
    hist = old["bp"]
    keep = hist.shape[0]
    full_bp = np.vstack([hist, bp])
    new["bp"] = full_bp[-keep:]
    tail = full_bp[keep - 4:]
    # The running sum's history, then the block's |derivative| summed on from its last
    # row, in one array (in place: no temporaries, no stacking).
    cs_hist = old["cs"]
    h = cs_hist.shape[0]
    full_cs = np.empty((h + n, x.shape[1]))
    full_cs[:h] = cs_hist
    deriv = full_cs[h:]
    np.multiply(tail[4:], 2, out=deriv)  # 2 t[i+4] + t[i+3] - t[i+1] - 2 t[i], in that order
    deriv += tail[3:-1]
    deriv -= tail[1:-3]
    deriv -= 2 * tail[:-4]
    # |derivative| rather than its square: PVCs and artefacts then do not dwarf the
    # normal beats after them (DS1: Se 99.8 % against 98.8 % with the square).
    np.abs(deriv, out=deriv)
    np.cumsum(full_cs[h - 1:], axis=0, out=full_cs[h - 1:])
    new["cs"] = full_cs[-d.mwi:]
    m_hist = old["mwi"]
    full_m = np.empty((m_hist.shape[0] + n, x.shape[1]))
    full_m[:m_hist.shape[0]] = m_hist
    np.subtract(full_cs[d.mwi:], full_cs[:-d.mwi], out=full_m[m_hist.shape[0]:])
    new["mwi"] = full_m[-(d.back + d.ahead):]
    elig = full_m[d.back:d.back + n]
    cand = (elig == _window_max(full_m, d.back, d.ahead)) & (
        elig > full_m[d.back - 1:d.back + n - 1])
    cand &= elig > 0
    rows, cols = _nonzero(cand)
    out: dict[int, list[tuple[int, float, int]]] = {}
    if not len(rows):
        return out
    # Decided at block row ``row``, a peak sits at block row ``row - ahead``, which is
    # row ``at`` of full_bp; its R peak is the largest |band-pass| in the integration
    # window before it (rows lo..at), less the band-pass delay. All candidates at once.
    span = d.mwi + 5
    lo = rows - d.ahead + keep - (span - 1)
    segs = np.abs(full_bp[lo[:, None] + np.arange(span), cols[:, None]])
    r_rows = lo + np.argmax(segs, axis=1) - keep - d.qrs_delay
    t0 = t0s[cols]
    for at, k, value, r in zip((rows + t0).tolist(), cols.tolist(), elig[rows, cols].tolist(),
                               (r_rows + t0).tolist(), strict=True):
        out.setdefault(k, []).append((at, value, r))
    return out


def _nonzero(mask: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """``np.nonzero`` of a 2-D *mask*: the same indices in the same (row-major) order,
    10x faster (the flat indices' fast path, then rows and columns by division)."""
    rows, cols = np.divmod(np.flatnonzero(mask), mask.shape[1])
    return rows, cols


def _window_max(x: F64, before: int, after: int) -> F64:
    """The running maximum of each column of *x* over rows ``i - before`` to
    ``i + after``, for the rows ``i`` that have all of them (``before`` to
    ``len(x) - after - 1``).

    By doubling windows (a sparse table): maxima over 2, 4, 8, ... rows, then two
    overlapping power-of-two windows cover each window; log2(size) + 1 element-wise
    maxima in all, 5-10x faster than ``scipy.ndimage.maximum_filter1d`` and exactly
    its values (a maximum is exact). With a NaN in a window, whose ordering is
    ``maximum_filter1d``'s own, that is used instead."""
    size = before + after + 1
    n = x.shape[0] - size + 1
    m, span = x, 1
    work = np.empty((2, max(0, x.shape[0] - 1), x.shape[1]))  # the levels, in turn
    while 2 * span <= size:
        # row j: the maximum of rows j .. j + 2 span - 1
        m = np.maximum(m[:-span], m[span:], out=work[0, :m.shape[0] - span])
        work = work[::-1]
        span *= 2
    top: F64 = np.maximum(m[:n], m[size - span:size - span + n])
    if np.isnan(top).any():
        run = scipy.ndimage.maximum_filter1d(x, size, axis=0, origin=before - size // 2)
        top = run[before:before + n]
    return top


def _detector_b(d: Design, old: dict[str, F64], x_f: F64, new: dict[str, F64],
                t0s: npt.NDArray[np.int64]) -> dict[int, list[tuple[int, float]]]:
    """An independent amplitude detector on the wide-band filtered signal: a beat is a
    peak of |x| that is the largest within +-``b_half`` and above ``B_FACTOR`` times
    the slow envelope of |x|. Returns sample indices (block rows plus the column's
    first sample index in *t0s*) and heights, per stream (column) that has any."""
    n = x_f.shape[0]
    ab = np.abs(x_f)
    env, new["zi_env"] = scipy.signal.lfilter(d.env_b, d.env_a, ab, axis=0,
                                              zi=old["zi_env"])
    h = d.b_half
    full_a = np.vstack([old["ab"], ab])
    full_e = np.vstack([old["env"], env])
    new["ab"], new["env"] = full_a[-2 * h:], full_e[-2 * h:]
    elig = full_a[h:h + n]
    cand = (elig == _window_max(full_a, h, h)) & (elig > full_a[h - 1:h + n - 1])
    cand &= elig > B_FACTOR * full_e[h:h + n]
    rows, cols = _nonzero(cand)
    out: dict[int, list[tuple[int, float]]] = {}
    for at, k, value in zip((rows - h + t0s[cols]).tolist(), cols.tolist(),
                            elig[rows, cols].tolist(), strict=True):
        out.setdefault(k, []).append((at, value))
    return out


def _totals(d: Design, old: dict[str, F64], mv: F64, f: F64, new: dict[str, F64],
            phases: dict[int, list[int]],
            scratch: dict[tuple[int, ...], F64]) -> dict[int, F64]:
    """Sums of the SQI features over each step ending in the block: per phase (the block
    row of the first step end, see :func:`run_front`), an array (step ends, features,
    the phase's columns). Updates ``new["tot"]``, the partial sums of the step under way
    after the block.

    Each sum is the step's samples added one by one, in order, from zero at the step's
    first sample: the first row of a stretch gets the carried partial sum added, then
    ``np.add.reduce`` over axis 0 adds the rows in order (bit-identical to a row-by-row
    loop, unlike a pairwise sum along a contiguous axis), so any framing gives the
    same sums. A big block goes through in chunks of rows whose features fit in the
    core's cache (written, then summed while still there, ~5 % of the chain with 200
    streams' 1-s blocks): a stretch cut at a chunk's edge goes on from the carried
    partial sum, the same additions in the same order."""
    n, c = mv.shape
    bw, new["zi_bw"] = sosfilt_columns(d.bw_sos, mv, old["zi_bw"])
    hf, new["zi_hf"] = sosfilt_columns(d.hf_sos, mv, old["zi_hf"])
    clip = np.empty(mv.shape, np.bool_)  # equal to the sample before ...
    np.equal(mv[:1], old["last"], out=clip[:1])
    np.equal(mv[1:], mv[:-1], out=clip[1:])
    new["last"] = mv[-1:]
    width = len(FEATURES) * c
    rows = n if n * width <= 4 * CHUNK_VALUES else max(1, CHUNK_VALUES // width)
    g, work = scratch.get((rows, len(FEATURES), c)), scratch.get((len(_WORK), rows, c))
    if g is None or work is None:  # a fresh array per call costs its page faults every time
        scratch.clear()
        g = scratch[(rows, len(FEATURES), c)] = np.empty((rows, len(FEATURES), c))
        work = scratch[(len(_WORK), rows, c)] = np.empty((len(_WORK), rows, c))
    whole = len(phases) == 1
    carries = {first: old["tot"][0] if whole else old["tot"][0][:, cols]
               for first, cols in phases.items()}
    found: dict[int, list[F64]] = {first: [] for first in phases}
    zero = np.zeros((len(FEATURES), 1))
    for a in range(0, n, rows):
        b = min(n, a + rows)
        x = g[:b - a]
        _features(x, work[:, :b - a], f[a:b], bw[a:b], hf[a:b], mv[a:b], clip[a:b])
        for first, cols in phases.items():
            y = x if whole else x[:, :, cols]  # the chunk itself, or a copy
            start, carry = 0, carries[first]
            top = first if a <= first else first - (first - a) // d.step * d.step
            for end in range(top, b, d.step):  # the phase's step ends in the chunk
                y[start] += carry
                found[first].append(np.add.reduce(y[start:end + 1 - a], axis=0))
                carry = zero  # the next step starts from nothing
                start = end + 1 - a
            if start < b - a:
                y[start] += carry
                carry = np.add.reduce(y[start:], axis=0)
            carries[first] = carry
    tot = np.empty_like(old["tot"][0])
    out: dict[int, F64] = {}
    for first, cols in phases.items():
        tot[:, cols] = carries[first]
        ends = found[first]
        out[first] = np.array(ends) if ends else np.empty((0, len(FEATURES), len(cols)))
    new["tot"] = tot[None]
    return out


#: The work area of :func:`_features`: the rows' inputs in C order, and f squared.
_WORK = ("f", "f2", "bw", "hf", "mv")


def _features(x: F64, work: F64, f: F64, bw: F64, hf: F64, mv: F64,
              clip: npt.NDArray[np.bool_]) -> None:
    """The per-sample features (``FEATURES``) of some rows into *x* (rows, features,
    channels); *clip*: the rows' samples equal to the one before.

    The inputs are copied into *work* (``_WORK``, (5, rows, channels)) first, in C
    order whatever theirs: a ufunc reading one order and writing the other runs 3x
    slower. Every product reads from *work*, never from *x*: a ufunc reading one
    feature of *x* and writing another (interleaved in memory) copies its input
    first, for fear of overlap."""
    fc, f2, bwc, hfc, mvc = work
    np.copyto(fc, f)
    np.multiply(fc, fc, out=f2)
    x[:, 0] = fc
    x[:, 1] = f2
    np.multiply(f2, fc, out=x[:, 2])
    np.multiply(f2, f2, out=x[:, 3])
    np.copyto(bwc, bw)
    x[:, 4] = bwc
    np.multiply(bwc, bwc, out=x[:, 5])
    np.copyto(hfc, hf)
    np.multiply(hfc, hfc, out=x[:, 6])
    np.copyto(mvc, mv)
    x[:, 8] = mvc
    np.multiply(mvc, mvc, out=x[:, 9])
    far = hfc  # ... and far from the baseline: clipped (hf's place is free now)
    np.subtract(mvc, bwc, out=far)
    np.abs(far, out=far)
    clip &= far > CLIP_MV  # in bools: a ufunc casting into floats runs buffered, 2x slower
    x[:, 7] = clip
