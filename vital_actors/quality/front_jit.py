"""The compiled front end: :func:`.front.run_front`'s work in one numba call per group.

The same outputs (:class:`~.front.FrontOut`) and the same states, bit for bit
(tests/test_front_jit.py), at about a third of run_front's CPU time per frame
(docs/benchmarks.md). Where run_front gathers a group's states into arrays and
splits them again, here each stream's state is one row of a :class:`JitTable` (one
table per design, owned by the chain), updated in place by the kernel
(:mod:`.front_kernel`): nothing is gathered or scattered.

A row holds front.py's numbers: its ``det`` column (``_det_parts``), then each
channel's ``sqi`` rows (``_sqi_parts``). A table's rows are as wide as its widest
stream's; a stream of fewer channels leaves the rest of its row alone. A
:class:`JitState` pickles exactly what a :class:`~.front.FrontState` pickles (det
column, sqi, next_t), so a chain's pickle resumes on either front end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from . import front_kernel
from .design import Design
from .front import FrontOut, FrontState, StaleStateError, _det_parts, _sqi_parts

__all__ = ["JitState", "JitTable", "Layout", "available", "layout", "run_compiled",
           "to_front_state"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def available() -> bool:
    """Whether numba imports here (else the kernel would run as plain Python)."""
    return front_kernel.NUMBA


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each part of a stream's state sits in its row (``geom``: the kernel's
    offsets and lengths). The row: front's ``det`` column, then per channel its
    ``sqi_rows`` numbers."""

    design: Design
    geom: I64
    det_rows: int
    sqi_rows: int

    def width(self, channels: int) -> int:
        return self.det_rows + self.sqi_rows * channels

    @property
    def last(self) -> int:
        """Where "last" (the sample before the block; NaN at first) sits in a channel's
        rows."""
        return int(self.geom[17])


_layouts: dict[tuple[float, int], Layout] = {}


def layout(d: Design) -> Layout:
    """The layout of *d*'s rows (one per rate and step: designs compare by value, a
    chain restored from a pickle holds copies)."""
    lay = _layouts.get((d.fs, d.step))
    if lay is None:
        det, sqi = _offsets(_det_parts(d)), _offsets(_sqi_parts(d))
        det_rows = sum(math.prod(lead) for _, lead in _det_parts(d))
        sqi_rows = sum(math.prod(lead) for _, lead in _sqi_parts(d))
        geom = np.array([det["zi_qrs"], det["bp"], det["cs"], det["mwi"], d.bp_keep, d.mwi,
                         d.back, d.ahead, d.qrs_delay, det["zi_env"], det["ab"], det["env"],
                         d.b_half, d.step, sqi["zi_bw"], sqi["zi_hf"], sqi["tot"],
                         sqi["last"], det["hist"], d.snr_keep, det_rows, sqi_rows], np.int64)
        lay = _layouts[(d.fs, d.step)] = Layout(d, geom, det_rows, sqi_rows)
    return lay


def _offsets(parts: tuple[tuple[str, tuple[int, ...]], ...]) -> dict[str, int]:
    out, at = {}, 0
    for name, lead in parts:
        out[name] = at
        at += math.prod(lead)
    return out


@dataclass(slots=True, eq=False)
class JitState:
    """A stream's row ``slot`` of *table* (its first ``width`` channels), and the
    sample index its next block starts at. Unpickled, it holds its numbers itself
    (``table`` None) until a chain puts them in a table (:meth:`JitTable.adopt`)."""

    table: JitTable | None
    slot: int
    width: int
    next_t: int
    held: tuple[F64, F64] | None = None

    @property
    def det(self) -> F64:
        """(rows, 1): detector A and B state, as :attr:`FrontState.det` (a copy)."""
        if self.table is None:
            assert self.held is not None, "a freed state"
            return self.held[0]
        return self.table.rows[self.slot, :self.table.lay.det_rows, None].copy()

    @property
    def sqi(self) -> F64:
        """(rows, channels): SQI filter states and the step's partial sums, as
        :attr:`FrontState.sqi` (a copy)."""
        if self.table is None:
            assert self.held is not None, "a freed state"
            return self.held[1]
        lay = self.table.lay
        row = self.table.rows[self.slot, lay.det_rows:lay.width(self.width)]
        return row.reshape(self.width, lay.sqi_rows).T.copy()

    def __getstate__(self) -> tuple[F64, F64, int]:
        """What :class:`FrontState` pickles: its pickles and ours are interchangeable."""
        return self.det, self.sqi, self.next_t

    def __setstate__(self, state: tuple[F64, F64, int]) -> None:
        if not isinstance(state, tuple) or len(state) != 3:
            raise StaleStateError("front state pickled by older code: start over")
        det, sqi, self.next_t = state
        self.table, self.slot, self.width, self.held = None, -1, sqi.shape[1], (det, sqi)


class JitTable:
    """The rows of every stream of one design. Slots are handed out and taken back;
    the table grows by copying (twice the rows when full, wider rows for a stream of
    more channels than any before)."""

    def __init__(self, lay: Layout, streams: int = 16, channels: int = 1) -> None:
        self.lay = lay
        self.rows = np.zeros((max(1, streams), lay.width(channels)))
        self._free = list(range(len(self.rows) - 1, -1, -1))  # popped lowest first

    @property
    def channels(self) -> int:
        """The most channels a row holds."""
        return (self.rows.shape[1] - self.lay.det_rows) // self.lay.sqi_rows

    @property
    def used(self) -> int:
        return len(self.rows) - len(self._free)

    def fresh(self, channels: int, t0: int) -> JitState:
        """A new stream's state (as :meth:`FrontState.fresh`), from sample *t0* on."""
        st = self._take(channels)
        lay, row = self.lay, self.rows[st.slot]
        row[:] = 0.0
        row[lay.det_rows + lay.last:lay.width(channels):lay.sqi_rows] = np.nan
        st.next_t = t0
        return st

    def adopt(self, det: F64, sqi: F64, next_t: int) -> JitState:
        """A state from its numbers (a :class:`FrontState`'s or an unpickled one's)."""
        channels = sqi.shape[1]
        st = self._take(channels)
        lay, row = self.lay, self.rows[st.slot]
        if det.shape != (lay.det_rows, 1) or sqi.shape[0] != lay.sqi_rows:
            self.free(st)
            raise StaleStateError("front state of another layout: start over")
        row[:] = 0.0
        row[:lay.det_rows] = det[:, 0]
        row[lay.det_rows:lay.width(channels)] = sqi.T.ravel()
        st.next_t = next_t
        return st

    def free(self, st: JitState) -> None:
        """Give *st*'s row back (a stream forgotten or started afresh)."""
        if st.table is self:
            self._free.append(st.slot)
            st.table, st.slot = None, -1

    def _take(self, channels: int) -> JitState:
        if channels > self.channels:
            wider = np.zeros((len(self.rows), self.lay.width(channels)))
            wider[:, :self.rows.shape[1]] = self.rows
            self.rows = wider
        if not self._free:
            n = len(self.rows)
            self.rows = np.concatenate([self.rows, np.zeros_like(self.rows)])
            self._free = list(range(2 * n - 1, n - 1, -1))
        return JitState(self, self._free.pop(), channels, 0)


def run_compiled(table: JitTable, states: Sequence[JitState], det_cols: Sequence[int],
                 mv: F64, filtered: F64, waiting: Sequence[bool]) -> list[FrontOut | None]:
    """``run_front`` on *table*'s rows: the same arguments (*det_cols*: each stream's
    detection channel among the columns of *mv* and *filtered*, C-ordered float64,
    instead of the stacked copies; no scratch), the same outputs; one compiled call
    for the group."""
    lay, n = table.lay, mv.shape[0]
    widths = [st.width for st in states]
    col0 = np.zeros(len(states), np.int64)
    np.cumsum(widths[:-1], out=col0[1:])
    t0_list = [st.next_t for st in states]
    d = lay.design
    a_n, a_at, a_v, a_r, b_n, b_at, b_v, snaps, full, firsts = front_kernel.group(
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


def to_front_state(st: FrontState | JitState) -> FrontState:
    """*st* as a :class:`FrontState` (itself if it is one; a JitState keeps its row)."""
    if isinstance(st, FrontState):
        return st
    out = FrontState.__new__(FrontState)
    out.__setstate__(st.__getstate__())
    return out
