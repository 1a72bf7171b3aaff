"""A processing job's work, chunk by chunk: pure and synchronous (it runs in a worker
thread), with a checkpoint after every chunk.

Each chunk is read from the recording, converted to mV, filtered with ``sosfilt``
carrying its state ``zi`` (so any chunking equals one pass over the whole signal),
screened, and its filtered signal appended to the result recording (float32 mV)
while beats, quality and alerts go to ``events.jsonl``. The checkpoint holds the next
frame, ``zi``, the result writer's state, the screening state and the events file's
length, and is rewritten (one checked pwrite, see :func:`read_checkpoint`) once the
chunk's bytes are flushed: a job killed at any point resumes from its last checkpoint,
truncating whatever the unfinished chunk wrote, and ends byte-identical to an
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.signal

from protocol import Event

from .filtering import design
from .quality.chain import QualityChain, StaleStateError
from .settings import FilterSettings, ScreenSettings
from .store import Meta, Reader, RecordingStore, Writer, WriterState

__all__ = ["Computed", "Processing", "screen_chunk"]

F64 = npt.NDArray[np.float64]
_CHECKPOINT = "checkpoint.pkl"
_HEADER = struct.Struct("<4sQI")  # magic, payload length, crc32 of the payload
_MAGIC = b"VCK1"


def checkpoint_bytes(saved: dict[str, Any]) -> bytes:
    """A checkpoint as written: a header that lets a reader tell it whole."""
    payload = pickle.dumps(saved, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload


def read_checkpoint(raw: bytes) -> dict[str, Any] | None:
    """The checkpoint in *raw*, or None when it is not whole (then the job starts over,
    which ends in the same bytes).

    The file is rewritten in place with one ``pwrite`` (no rename: replacing a file on
    ext4 while the result is being written took ~3 ms a chunk, most of the job's
    overhead over its filtering), so it may hold a longer, older checkpoint's tail
    after the header's length, and a write cut short would fail the CRC.
    """
    if len(raw) < _HEADER.size:
        return None
    magic, length, crc = _HEADER.unpack_from(raw)
    payload = raw[_HEADER.size:_HEADER.size + length]
    if magic != _MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
        return None
    saved: dict[str, Any] = pickle.loads(payload)  # our own file
    return saved


def sosfilt_inplace(sos: F64, x: F64, zi: F64) -> F64:
    """Filter the rows of *x* (channels, n), C-contiguous float64, in place, from state
    *zi* (sections, channels, 2), as ``scipy.signal.sosfilt(sos, x, axis=-1, zi=zi)``
    does, bit for bit; returns the state after.

    scipy's own wrapper copies *x* (and moves axes) on every call; its kernel filters
    in place and releases the GIL for the whole call, so one call per chunk leaves the
    event loop free and makes no copy. Falls back to the public function if the kernel
    is not where scipy 1.x keeps it.
    """
    if _kernel is None:
        y, zf = scipy.signal.sosfilt(sos, x, axis=-1, zi=zi)
        x[...] = y
        return np.asarray(zf)
    state = np.ascontiguousarray(zi.transpose(1, 0, 2))  # (channels, sections, 2)
    _kernel(sos, x, state)
    return state.transpose(1, 0, 2).copy()


#: Nice value of a job's threads (Linux: per thread). The server's event loop thread
#: stays at the process's own, so on a busy machine (2 cores: a job's two threads and
#: the loop) the scheduler runs the loop first when it wakes, a view or an ack is not
#: queued behind the job's numpy, and the job takes what CPU is left.
JOB_NICE = 10


def lower_priority() -> None:
    """Lower the calling thread's CPU priority by JOB_NICE (where the OS allows)."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + JOB_NICE)


def _load_kernel() -> Any:
    try:
        from scipy.signal._sosfilt import _sosfilt
    except ImportError:  # pragma: no cover - another scipy layout
        return None
    return _sosfilt


_kernel = _load_kernel()


@dataclass(slots=True)
class _Screening:
    """What the screening of one job carries from chunk to chunk (pickled)."""

    chain: QualityChain | None  # None: a filter-only job
    key: str
    fs: float


def _new_screening(job_id: str, meta: Meta, settings: ScreenSettings | None) -> _Screening:
    chain = QualityChain(settings) if settings is not None else None
    return _Screening(chain, f"job-{job_id}", meta.fs)


def screen_chunk(state: _Screening, t0: int, mv: F64, filtered: F64) -> list[Event]:
    """Screen one chunk (frames from *t0*): the one place a job calls the quality chain
    (issue 4's :class:`QualityChain`, the same code as the live screen)."""
    if state.chain is None:
        return []
    return state.chain.feed_one(state.key, state.fs, t0, mv, filtered)


@dataclass(slots=True)
class Computed:
    """One chunk, filtered and screened, waiting to be written (see Processing)."""

    start: int
    end: int
    out: npt.NDArray[np.float32]
    events: list[Event]
    state: bytes  # pickled (zi, screening) after this chunk: its checkpoint's state


class Processing:
    """Processes one recording into a result recording inside *jobdir*.

    :meth:`compute` (read, filter, screen) and :meth:`write` (append, checkpoint) may
    run in two threads at once, compute on chunk k+1 while write finishes chunk k:
    compute alone touches ``zi`` and the screening, write alone the writer and the
    events file, and each checkpoint holds the state *compute* snapshotted right after
    the chunk it records. :meth:`step` does both in turn.
    """

    def __init__(self, jobdir: Path, reader: Reader, *, job_id: str, filter_settings:
                 FilterSettings, screen_settings: ScreenSettings | None,
                 chunk_frames: int) -> None:
        self.jobdir, self.reader, self.job_id = jobdir, reader, job_id
        self.chunk_frames = chunk_frames
        meta = reader.meta
        self.sos = design(filter_settings, meta.fs).sos
        self._gain = np.asarray(meta.gain, dtype=np.float64)
        self._base = np.asarray(meta.baseline, dtype=np.float64)
        out = jobdir / "out"
        saved = self._load()
        restored: tuple[Any, Any] | None = None
        if saved is not None:
            try:
                restored = pickle.loads(saved["state"])
            except StaleStateError:  # pickled by code that keeps other state: start over
                saved = None
        if saved is None:
            self.next_frame = 0
            self.zi = np.zeros((self.sos.shape[0], len(meta.channels), 2))
            self.screening = _new_screening(job_id, meta, screen_settings)
            state, pending, events_bytes = WriterState(), None, 0
            shutil.rmtree(out, ignore_errors=True)
        else:
            assert restored is not None
            self.next_frame = saved["next_frame"]
            self.zi, self.screening = restored
            state, pending = WriterState.model_validate(saved["writer"]), saved["pending"]
            events_bytes = saved["events_bytes"]
        n = len(meta.channels)
        self.writer = Writer(out, fs=meta.fs, channels=list(meta.channels), dtype="float32",
                             gain=[1.0] * n, baseline=[0.0] * n, state=state, pending=pending)
        self._events = open(jobdir / "events.jsonl", "ab+")  # noqa: SIM115 - see close()
        self._events.truncate(events_bytes)
        self._events.seek(events_bytes)
        self.events = 0
        self.computed_to = self.next_frame  # compute's position; write's is next_frame
        self._work: F64 = np.empty(0)
        self._checkpoint: int | None = None  # its file, open for pwrite
        # The work itself runs on two threads of our own at a lower CPU priority (see
        # lower_priority); compute and write may be called at once, from any threads.
        self._pool = ThreadPoolExecutor(2, "job", initializer=lower_priority)

    @property
    def total(self) -> int:
        return self.reader.frames

    @property
    def done(self) -> bool:
        return self.next_frame >= self.total

    @property
    def computed_all(self) -> bool:
        return self.computed_to >= self.total

    def _load(self) -> dict[str, Any] | None:
        try:
            raw = (self.jobdir / _CHECKPOINT).read_bytes()
        except FileNotFoundError:
            return None
        return read_checkpoint(raw)

    def step(self) -> list[Event]:
        """Process the next chunk and checkpoint; return its events."""
        chunk = self.compute()
        self.write(chunk)
        return chunk.events

    def compute(self) -> Computed:
        """Read, filter and screen the next chunk (not yet written)."""
        return self._pool.submit(self._compute).result()

    def write(self, chunk: Computed) -> None:
        """Append a computed chunk to the result and checkpoint after it."""
        self._pool.submit(self._write, chunk).result()

    def _compute(self) -> Computed:
        start = self.computed_to
        end = min(self.total, start + self.chunk_frames)
        raw = self.reader.read(start, end)
        # Channel-major (channels, n), in one buffer kept from chunk to chunk: the
        # filter runs along contiguous rows, and no chunk allocates (and page-faults)
        # fresh megabytes. Every numpy call here releases the GIL.
        mv_t = self._buffer(raw.shape[1], len(raw))
        np.subtract(raw.T, self._base[:, None], out=mv_t)
        np.divide(mv_t, self._gain[:, None], out=mv_t)
        screened = self.screening.chain is not None
        filtered_t = mv_t.copy() if screened else mv_t  # screening needs both
        self.zi = sosfilt_inplace(self.sos, filtered_t, self.zi)
        events = screen_chunk(self.screening, start, mv_t.T, filtered_t.T) if screened else []
        out = np.empty((len(raw), raw.shape[1]), np.float32)
        np.copyto(out, filtered_t.T, casting="same_kind")
        self.computed_to = end
        state = pickle.dumps((self.zi, self.screening), protocol=pickle.HIGHEST_PROTOCOL)
        return Computed(start, end, out, events, state)

    def _buffer(self, channels: int, n: int) -> F64:
        """A (channels, n) float64 work array, C-contiguous, reused across chunks."""
        if self._work.size < channels * n:
            self._work = np.empty(channels * n)
        return self._work[:channels * n].reshape(channels, n)

    def _write(self, chunk: Computed) -> None:
        assert chunk.start == self.next_frame, "chunks are written in order"
        self.writer.append(chunk.out)
        for e in chunk.events:
            line = {"type": e.type, "topic": e.topic, "priority": int(e.priority), **e.body}
            self._events.write(json.dumps(line).encode() + b"\n")
        self.events += len(chunk.events)
        self.next_frame = chunk.end
        self.writer.flush()
        self._events.flush()
        saved = {"next_frame": self.next_frame, "state": chunk.state,
                 "writer": self.writer.state.model_dump(), "pending": self.writer.pyramid.pending,
                 "events_bytes": self._events.tell()}
        if self._checkpoint is None:
            self._checkpoint = os.open(self.jobdir / _CHECKPOINT, os.O_WRONLY | os.O_CREAT)
        os.pwrite(self._checkpoint, checkpoint_bytes(saved), 0)

    def commit(self, store: RecordingStore, rec_id: str) -> Meta:
        """Finish the result recording (with its events) and move it into *store*."""
        self._events.close()
        os.replace(self.jobdir / "events.jsonl", self.writer.path / "events.jsonl")
        meta = store.commit(rec_id, self.writer, source_format="job",
                            source_name=self.reader.meta.id, job=self.job_id)
        self._close_checkpoint()
        self._pool.shutdown(wait=False)
        (self.jobdir / _CHECKPOINT).unlink(missing_ok=True)
        return meta

    def close(self) -> None:
        self.writer.close()
        self._events.close()
        self._close_checkpoint()
        self._pool.shutdown(wait=False)

    def _close_checkpoint(self) -> None:
        if self._checkpoint is not None:
            os.close(self._checkpoint)
            self._checkpoint = None
