"""The quality chain: beats, heart rate, SQIs and alerts for many streams, pure.

:class:`QualityChain` is the one entry point for the live screen and for batch jobs
over recordings. It is plain Python, numpy and numba (no trio, no I/O)::

    chain = QualityChain(settings.screen)
    events = chain.feed_one("s1", fs=360.0, t0=0, mv=block_mv, filtered=block_filtered)
    # or, batched over many streams (much faster per sample):
    per_frame = chain.feed([Frame("s1", 360.0, 0, mv1, f1), Frame("s2", ...), ...])

Feed each stream's samples in order: ``t0`` is the sample index of the block's first
sample (0 at the start of a run); a ``t0`` that does not continue the stream, a new
``run``, or a different rate or channel count starts the stream afresh. ``mv`` is the
signal in mV and ``filtered`` the band-passed signal (the filter bank's output), both
float64 of shape (n, channels). Identical samples give identical events whatever the
framing. Events, in sample order per stream:

- ``beat`` on ``stream/<id>/beats`` (HIGH), one per detected beat;
- ``quality`` on ``stream/<id>/quality`` (NORMAL) once per ``window_s`` step: heart
  rate, HRV and the SQIs of the last ``sqi_window_s`` with the class and score;
- ``alert`` on ``alerts`` and ``stream/<id>/quality`` (CRITICAL) when one starts or ends.
"""

from __future__ import annotations

import gc
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from protocol import Event

from ..settings import ScreenSettings
from .design import FILTERED_LIMIT, MV_LIMIT, Design, beyond, design_for
from .front import FrontOut, FrontState, StaleStateError, run_front
from .front_jit import JitState, JitTable, available, layout, run_compiled, to_front_state
from .repeat import measure
from .sqi import StepRows, step_rows
from .stream import Step, StreamQuality

__all__ = ["STATE_FORMAT", "Frame", "QualityChain", "StaleStateError", "compiled_front",
           "gc_deferred", "warm_up"]

F64 = npt.NDArray[np.float64]


#: What a pickled chain holds; changes with the state its streams keep (2: the
#: sorted window medians, the group-packed front state and SNR history; 3: the
#: settings' screened rates, the fourth speed pass's state; 4: detector A's beats of
#: the last window kept for the bSQI; 5: each step's feature sums, not running totals;
#: 6: detector A's recent candidates, for a relearn).
STATE_FORMAT = 6


@dataclass(slots=True, eq=False)
class Frame:
    """One block of one stream: see :class:`QualityChain`. (Not frozen: one is made
    per block, and a frozen dataclass sets each field through ``object.__setattr__``,
    3x the cost; the chain never changes a frame.)"""

    key: str
    fs: float
    t0: int
    mv: F64
    filtered: F64
    run: int = 0


@dataclass(slots=True)
class _Entry:
    design: Design
    run: int
    front: FrontState | JitState  # as the chain's front end keeps it (or as unpickled)
    quality: StreamQuality
    channel: int


class QualityChain:
    """State of every stream; :meth:`feed` processes a batch of frames at once.

    ``compiled``: whether the per-sample work runs in the compiled front end
    (:mod:`.front_jit`, its states in one table per design) or in numpy's
    (:func:`.front.run_front`), as ``settings.front`` says (:func:`compiled_front`).
    The events are the same bit for bit, and so are the pickles' states: a chain
    pickled with one resumes with the other."""

    def __init__(self, settings: ScreenSettings) -> None:
        self.settings = settings
        self.compiled = compiled_front(settings.front)
        self._streams: dict[str, _Entry] = {}
        self._scratch: dict[tuple[int, ...], F64] = {}
        self._tables: dict[tuple[float, int], JitTable] = {}

    def __getstate__(self) -> dict[str, object]:
        """Pickles (job checkpoints) without the scratch array and the tables, which
        are rebuilt (each stream's state pickles its own numbers)."""
        return {"format": STATE_FORMAT, "settings": self.settings, "_streams": self._streams}

    def __setstate__(self, state: dict[str, object]) -> None:
        """Raises:
            StaleStateError: the state was pickled by code that keeps other state."""
        found = state.pop("format", 1)
        if found != STATE_FORMAT:
            raise StaleStateError(f"quality chain state of format {found}, this code "
                                  f"resumes format {STATE_FORMAT} only: start over")
        self.__dict__.update(state)
        self._scratch, self._tables = {}, {}
        # Settings pickled before ``front`` existed have none: auto. A chain pickled
        # where numba was asked for, restored where it is missing, goes on in numpy.
        front = getattr(self.settings, "front", "auto")
        self.compiled = compiled_front("auto" if front == "compiled" else front)

    def forget(self, key: str) -> None:
        e = self._streams.pop(key, None)
        if e is not None:
            _release(e.front)

    def feed_one(self, key: str, fs: float, t0: int, mv: F64, filtered: F64,
                 run: int = 0) -> list[Event]:
        """Process one block of one stream; return its events."""
        return self.feed([Frame(key, fs, t0, mv, filtered, run)])[0]

    def feed(self, frames: Sequence[Frame]) -> list[list[Event]]:
        """Process *frames* (any streams, each stream's in order); return the events
        of each frame. Frames of streams with the same rate and block length go
        through the front end together (``settings.front``). Frames of a rate outside
        ``settings.min_fs .. max_fs`` get no events (the QRS band needs fs > 12.5 Hz;
        the chain is validated at 125-1000 Hz). The cyclic garbage collector waits
        until the call returns (:func:`gc_deferred`)."""
        with gc_deferred():
            return self._feed(frames)

    def _feed(self, frames: Sequence[Frame]) -> list[list[Event]]:
        out: list[list[Event]] = [[] for _ in frames]
        seen: dict[str, int] = defaultdict(int)
        rounds: dict[int, list[int]] = defaultdict(list)
        lo, hi = self.settings.min_fs, self.settings.max_fs
        for i, f in enumerate(frames):  # a stream's k-th frame of the batch in round k
            if f.mv.shape[0] == 0 or not lo <= f.fs <= hi:
                continue  # nothing to do, and no state to move; or a rate not screened
            rounds[seen[f.key]].append(i)
            seen[f.key] += 1
        for k in sorted(rounds):
            # Looked up per round: a stream's state is where its previous frame left it.
            entries = {i: self._entry(frames[i]) for i in rounds[k]}
            groups: dict[tuple[float, int, int], list[int]] = defaultdict(list)
            for i in rounds[k]:
                groups[(*_key(entries[i].design), frames[i].mv.shape[0])].append(i)
            for members in groups.values():
                self._group([frames[i] for i in members], [entries[i] for i in members],
                            [out[i] for i in members])
        return out

    def _entry(self, f: Frame) -> _Entry:
        e = self._streams.get(f.key)
        channels = f.mv.shape[1]
        if (e is not None and e.front.next_t == f.t0 and e.run == f.run
                and e.design.fs == f.fs and e.quality.channels == channels):
            return e  # the stream goes on (a design is one per rate: fs decides)
        d = design_for(float(f.fs), self.settings.window_s)
        if (e is None or e.run != f.run or _key(e.design) != _key(d) or e.front.next_t != f.t0
                or e.quality.channels != channels):
            if e is not None:
                _release(e.front)
            channel = min(self.settings.detect_channel, channels - 1)
            front = (self._table(d).fresh(channels, f.t0) if self.compiled
                     else FrontState.fresh(d, channels, f.t0))
            e = self._streams[f.key] = _Entry(
                d, f.run, front, StreamQuality(f.key, d, self.settings, channels, channel,
                                               f.t0), channel)
        return e

    def _table(self, d: Design) -> JitTable:
        """The compiled front end's table of *d*'s streams."""
        table = self._tables.get(_key(d))
        if table is None:
            table = self._tables[_key(d)] = JitTable(layout(d))
        return table

    def _group(self, frames: list[Frame], entries: list[_Entry],
               out: list[list[Event]]) -> None:
        d = entries[0].design
        if len(frames) == 1:
            mv, filt = frames[0].mv, frames[0].filtered
        else:
            mv = np.concatenate([f.mv for f in frames], axis=1)
            filt = np.concatenate([f.filtered for f in frames], axis=1)
        cols, at = [], 0  # each stream's detection channel among all the columns
        for f, e in zip(frames, entries, strict=True):
            cols.append(at + e.channel)
            at += f.mv.shape[1]
        if beyond(mv, MV_LIMIT) or beyond(filt, FILTERED_LIMIT):
            mv, filt = np.clip(mv, -MV_LIMIT, MV_LIMIT), np.clip(filt, -FILTERED_LIMIT,
                                                                  FILTERED_LIMIT)
        waiting = [bool(e.quality.noise.waiting) for e in entries]
        run = self._compiled_front if self.compiled else self._numpy_front
        results = run(d, entries, cols, mv, filt, waiting)
        taken = [e.quality.take(res) if res is not None else []
                 for e, res in zip(entries, results, strict=True)]
        measure([e.quality.noise for e in entries])  # the beats cut by take, at once
        steps = [x for items in taken for x in items if isinstance(x, Step)]
        rows = self._rows(steps)
        for items, events in zip(taken, out, strict=True):
            for x in items:
                if isinstance(x, Step):
                    events.extend(x.owner.finish(x, *rows[id(x)]))
                else:
                    events.append(x)

    def _numpy_front(self, d: Design, entries: list[_Entry], cols: list[int], mv: F64,
                     filt: F64, waiting: list[bool]) -> list[FrontOut | None]:
        for e in entries:
            if isinstance(e.front, JitState):  # resumed from a compiled chain's pickle
                e.front, old = to_front_state(e.front), e.front
                _release(old)
        step = entries[0].quality.channels
        if cols == list(range(cols[0], mv.shape[1], step)):  # evenly spaced: views
            det, det_f = mv[:, cols[0]::step], filt[:, cols[0]::step]
        else:
            det, det_f = mv[:, cols], filt[:, cols]
        fronts = [e.front for e in entries if isinstance(e.front, FrontState)]
        return run_front(d, fronts, np.asarray(det, np.float64), np.asarray(det_f, np.float64),
                         np.asarray(mv, np.float64), np.asarray(filt, np.float64),
                         [e.quality.channels for e in entries], waiting, self._scratch)

    def _compiled_front(self, d: Design, entries: list[_Entry], cols: list[int], mv: F64,
                        filt: F64, waiting: list[bool]) -> list[FrontOut | None]:
        table = self._table(d)
        states = []
        for e in entries:
            st = e.front
            if not isinstance(st, JitState) or st.table is not table:  # from a pickle
                st = table.adopt(*st.__getstate__())
                _release(e.front)
                e.front = st
            states.append(st)
        return run_compiled(table, states, cols, _writable(mv), _writable(filt), waiting)

    def _rows(self, steps: list[Step]) -> dict[int, tuple[StepRows, int]]:
        """The indices of all *steps* in one numpy pass per channel count."""
        by_width: dict[int, list[Step]] = defaultdict(list)
        for st in steps:
            by_width[st.sums.shape[1]].append(st)
        s, found = self.settings, {}
        for group in by_width.values():
            rows = step_rows(np.array([st.window for st in group]),
                             np.array([st.sums for st in group]),
                             np.array([st.n for st in group]),
                             np.array([st.step_n for st in group]),
                             flatline_mv=s.flatline_mv, out_of_range_mv=s.out_of_range_mv,
                             lead_off_fraction=s.lead_off_fraction)
            found.update({id(st): (rows, i) for i, st in enumerate(group)})
        return found


def compiled_front(front: str) -> bool:
    """Whether ``ScreenSettings.front`` *front* means the compiled front end: "auto"
    does when numba imports (the settings refuse "compiled" where it does not)."""
    return front == "compiled" or (front == "auto" and available())


def warm_up(settings: ScreenSettings) -> None:
    """Compile the compiled front end (or load it from numba's cache: ~6 s the first
    time, ~0.2 s after) by screening a second of silence of two streams, one of two
    channels and one of one: a server calls this, in a worker thread, before it takes
    devices, so that no device's first frame waits for it."""
    chain = QualityChain(settings)
    if not chain.compiled:
        return
    fs = float(min(max(360.0, settings.min_fs), settings.max_fs))
    x = np.zeros((round(fs), 3))
    chain.feed([Frame("a", fs, 0, x[:, :2], x[:, :2]), Frame("b", fs, 0, x[:, 2:], x[:, 2:])])


def _writable(x: F64) -> F64:
    """*x* as C-ordered, writable float64 (a copy only if it is not): numba compiles
    anew (seconds) for each other array type, read-only ones included."""
    y = np.ascontiguousarray(x, np.float64)
    return y if y.flags.writeable else y.copy()


def _release(st: FrontState | JitState) -> None:
    """Give a compiled state's row back to its table (a FrontState holds its own)."""
    if isinstance(st, JitState) and st.table is not None:
        st.table.free(st)


def _key(d: Design) -> tuple[float, int]:
    """Designs compare by value: a chain restored from a pickle holds copies."""
    return (d.fs, d.step)


_gc_lock = threading.Lock()
_gc_depth = 0
_gc_was_enabled = False


@contextmanager
def gc_deferred() -> Iterator[None]:
    """Keep the cyclic garbage collector from running inside the block.

    A batch allocates thousands of short-lived containers (events, their bodies and
    lists) that are all alive until the batch is done: the collector, triggered every
    700 allocations, would walk them again and again and promote them, and each full
    collection then walks every object of the process (~125,000 after the imports).
    Deferred, it runs once after the block, when most of them are gone; reference
    counting frees memory as usual meanwhile. Nested and threaded uses count: the
    collector is re-enabled when the last block ends, and only if it was enabled when
    the first began. (10-20 % of the chain's CPU time: docs/benchmarks.md.)"""
    global _gc_depth, _gc_was_enabled
    with _gc_lock:
        if _gc_depth == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_depth += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_depth -= 1
            if _gc_depth == 0 and _gc_was_enabled:
                gc.enable()
