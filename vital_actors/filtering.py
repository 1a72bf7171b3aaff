"""Causal streaming filters: Butterworth band-pass plus optional mains notch, as SOS.

:class:`FilterBank` carries each stream's state across frames, so the output equals
``scipy.signal.sosfilt`` over the whole signal for any frame split. ``sosfilt`` costs
tens of microseconds per call, mostly overhead, so the bank filters the blocks of all
streams with the same coefficients and frame length in one call.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import numpy.typing as npt
import scipy.signal
import trio

from .messages import Block, Filtered, Item, run_batches
from .quality.design import MV_LIMIT, beyond, sosfilt_columns
from .quality.front import joined
from .settings import FilterSettings

__all__ = ["FilterBank", "FilterDesign", "FilterSettingsError", "design", "run_filter"]

_versions = itertools.count(1)
F64 = npt.NDArray[np.float64]


class FilterSettingsError(ValueError):
    """Settings that cannot run at the stream's sampling rate; ``problems`` lists why."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True, eq=False)
class FilterDesign:
    """Settings designed for one sampling rate. ``version`` is unique per design."""

    settings: FilterSettings
    fs: float
    sos: F64 = field(repr=False)
    version: int

    @property
    def key(self) -> bytes:
        """Identical coefficients give identical keys: such streams filter in one call."""
        return self.sos.tobytes()


def design(settings: FilterSettings, fs: float, *,
           fallback: FilterSettings | None = None) -> FilterDesign:
    """Design *settings* at *fs*.

    With a *fallback*, settings that cannot run at *fs* are replaced by the fallback
    fitted to *fs* (its corners clamped below Nyquist); without one they raise.

    Raises:
        FilterSettingsError: the settings cannot run at *fs* and there is no fallback.
    """
    problems = settings.problems_at(fs)
    if problems:
        if fallback is None:
            raise FilterSettingsError(problems)
        settings = _fit(fallback, fs)
    sos = scipy.signal.butter(settings.order, [settings.low_hz, settings.high_hz],
                              btype="bandpass", fs=fs, output="sos")
    if settings.notch_hz is not None:
        b, a = scipy.signal.iirnotch(settings.notch_hz, settings.notch_q, fs=fs)
        sos = np.vstack([sos, scipy.signal.tf2sos(b, a)])
    return FilterDesign(settings, fs, np.ascontiguousarray(sos, dtype=np.float64),
                        next(_versions))


def _fit(settings: FilterSettings, fs: float) -> FilterSettings:
    nyquist = fs / 2
    high = min(settings.high_hz, 0.9 * nyquist)
    low = min(settings.low_hz, high / 2)
    notch = settings.notch_hz if settings.notch_hz and settings.notch_hz < nyquist else None
    return settings.model_copy(update={"high_hz": high, "low_hz": low, "notch_hz": notch})


@dataclass(slots=True, eq=False)
class _Zi:
    """The filter states of a group of streams side by side, (sections, 2, channels): a
    group that comes back with the same streams in the same order filters from it
    as it is, without joining and splitting a state per stream per call."""

    zi: F64
    streams: int
    scale: F64 | None = None  # the streams' mV scales and offsets as one column each
    offset: F64 | None = None  # (made on the group's second call, then kept)


@dataclass(slots=True, eq=False)
class _State:
    """A stream's filter state: stream ``index`` of ``pack``, its columns ``col`` to
    ``col + width``."""

    run: int
    version: int
    pack: _Zi
    index: int
    col: int
    width: int

    @property
    def zi(self) -> F64:
        return self.pack.zi[:, :, self.col:self.col + self.width]


class FilterBank:
    """Per-stream filter state; filters many streams' blocks in few calls."""

    def __init__(self) -> None:
        self._state: dict[str, _State] = {}
        self.calls = 0  # sosfilt calls made, for the stats

    def forget(self, stream_id: str) -> None:
        self._state.pop(stream_id, None)

    def apply(self, blocks: Sequence[Block]) -> list[Filtered]:
        """Filter *blocks* (any streams, in arrival order); return one result each."""
        mv: list[F64 | None] = [None] * len(blocks)
        out: list[F64 | None] = [None] * len(blocks)
        versions = [0] * len(blocks)
        # A stream's second block in a batch needs the state its first one leaves, so
        # blocks go in rounds: round k holds each stream's k-th block.
        seen: dict[str, int] = defaultdict(int)
        rounds: dict[int, list[int]] = defaultdict(list)
        for i, b in enumerate(blocks):
            rounds[seen[b.stream.id]].append(i)
            seen[b.stream.id] += 1
        keys: dict[int, bytes] = {}  # per design version: its key, made once a call
        for k in sorted(rounds):
            groups: dict[tuple[bytes, int], list[int]] = defaultdict(list)
            for i in rounds[k]:
                design = blocks[i].stream.filter
                key = keys.get(design.version)
                if key is None:
                    key = keys[design.version] = design.key
                groups[(key, blocks[i].n)].append(i)
            for members in groups.values():
                self._filter_group(blocks, mv, members, out, versions)
        return [Filtered(b, m, f, v)
                for b, m, f, v in zip(blocks, mv, out, versions, strict=True)
                if m is not None and f is not None]

    def _filter_group(self, blocks: Sequence[Block], mv: list[F64 | None], members: list[int],
                      out: list[F64 | None], versions: list[int]) -> None:
        states = [self._state_for(blocks[i]) for i in members]
        sos = blocks[members[0]].stream.filter.sos
        pack = joined(states)
        if len(members) == 1:
            x = _to_mv(blocks[members[0]])
        else:  # to mV in one pass for the group: the same operations per sample,
            # stored column by column (Fortran order): the layout sosfilt works in, and
            # one in which the quality chain joins the streams' columns again cheaply
            # (built transposed, (channels, n) in C order: the cheapest way there)
            raws = [blocks[i].raw.T for i in members]
            raw = np.empty((sum(r.shape[0] for r in raws), raws[0].shape[1]),
                           np.result_type(*(r.dtype for r in raws)))
            np.concatenate(raws, axis=0, out=raw)
            scale, offset = (pack.scale, pack.offset) if pack is not None else (None, None)
            if scale is None or offset is None:
                infos = [blocks[i].stream for i in members]
                scale = np.concatenate([info.scale for info in infos])[:, None]
                offset = np.concatenate([info.offset for info in infos])[:, None]
                if pack is not None:  # the same streams again: keep them
                    pack.scale, pack.offset = scale, offset
            xt = _as_float(raw)
            xt *= scale
            xt -= offset
            x = xt.T
        zi = pack.zi if pack is not None else np.concatenate([s.zi for s in states], 2)
        # Filtered from within the limit: a sample of 1e30 took the filter ~90 s to forget.
        y, zf = sosfilt_columns(sos, np.clip(x, -MV_LIMIT, MV_LIMIT)
                                if beyond(x, MV_LIMIT) else x, zi)
        self.calls += 1
        if pack is not None:
            pack.zi = zf
        else:
            pack = _Zi(zf, len(states))
            col = 0
            for k, state in enumerate(states):
                state.pack, state.index, state.col = pack, k, col
                col += state.width
        for i, state in zip(members, states, strict=True):
            col, width = state.col, state.width
            mv[i] = x[:, col:col + width]
            out[i] = y[:, col:col + width]
            versions[i] = state.version

    def _state_for(self, block: Block) -> _State:
        info, state = block.stream, self._state.get(block.stream.id)
        if state is None or state.run != block.run or state.version != info.filter.version:
            # New stream, fresh run or new settings: start from rest, as offline sosfilt does.
            zi = np.zeros((info.filter.sos.shape[0], 2, len(info.channels)))
            state = self._state[info.id] = _State(block.run, info.filter.version,
                                                  _Zi(zi, 1), 0, 0, len(info.channels))
        return state


def _to_mv(block: Block) -> F64:
    info = block.stream
    mv = _as_float(block.raw)
    mv *= info.scale
    mv -= info.offset
    return mv


def _unfiltered(bank: FilterBank, batch: list[Item], streams: list[str]) -> list[Item]:
    """A batch the bank failed on (a bug): its blocks are dropped (their raw samples went
    out at ingest) and its streams' filters start from rest; the rest goes on."""
    for key in streams:
        bank.forget(key)
    return [item for item in batch if not isinstance(item, Block)]


def _as_float(raw: npt.NDArray[np.generic]) -> F64:
    """*raw* as a fresh float64 array in C order, to be scaled in place: numpy 2.4's
    mixed-type ``np.multiply(int16, float64 column, dtype=float64)`` took 227 µs for
    400 x 360 values, the cast 44 and the cast then an in-place multiply 152 (the cast
    is exact, so the products are the same). A 2-D cast is as fast as a flat one."""
    flat: F64 = np.ascontiguousarray(raw).reshape(-1).astype(np.float64)
    return flat.reshape(raw.shape)


async def run_filter(
    inbox: trio.MemoryReceiveChannel[Item],
    outbox: trio.MemorySendChannel[Item],
    *,
    max_batch: int,
    linger: float = 0.0,
    bank: FilterBank | None = None,
    publish: Callable[[Filtered], object] | None = None,
    task_status: trio.TaskStatus[FilterBank] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Filter the blocks from *inbox*; pass everything else through, in order.

    Takes whatever is waiting (up to *max_batch* items, lingering *linger* s for more)
    as one batch. With *publish*, each filtered block is handed to it at once (the
    server publishes its filtered topic from here: a live view of it need not wait for
    the quality chain). Owns both ends: returns, closing *outbox*, when *inbox* ends.
    """
    bank = bank or FilterBank()
    task_status.started(bank)
    await run_batches(inbox, outbox, partial(_filter_batch, bank, publish),
                      max_batch=max_batch, linger=linger, on_failure=partial(_unfiltered, bank))


def _filter_batch(bank: FilterBank, publish: Callable[[Filtered], object] | None,
                  batch: list[Item]) -> list[Item]:
    blocks = [item for item in batch if isinstance(item, Block)]
    if not blocks:
        return batch
    filtered = bank.apply(blocks)
    if publish is not None:
        for item in filtered:
            publish(item)
    results = iter(filtered)
    return [next(results) if isinstance(item, Block) else item for item in batch]
