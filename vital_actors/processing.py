"""A processing job's work, chunk by chunk: pure and synchronous (it runs in a worker
thread), with a checkpoint after every chunk.

Each chunk is read from the recording, converted to mV, filtered with ``sosfilt``
carrying its state ``zi`` (so any chunking equals one pass over the whole signal),
screened, and its filtered signal appended to the result recording (float32 mV)
while beats, quality and alerts go to ``events.jsonl``. The checkpoint holds the next
frame, ``zi``, the result writer's state, the screening state and the events file's
length, and is replaced atomically once the chunk's bytes are flushed: a job killed at
any point resumes from its last checkpoint, truncating whatever the unfinished chunk
wrote, and ends byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.signal

from protocol import Event

from .filtering import design
from .quality import QualityChain
from .settings import FilterSettings, ScreenSettings
from .store import Meta, Reader, RecordingStore, Writer, WriterState

__all__ = ["Computed", "Processing", "screen_chunk"]

F64 = npt.NDArray[np.float64]
_CHECKPOINT = "checkpoint.pkl"
# scipy's sosfilt keeps the GIL for the whole call (~50 ns a frame per channel): slices
# of this many frames keep each hold near a millisecond, so the event loop stays prompt.
# Carrying zi across slices makes the result identical to one call.
_SOSFILT_FRAMES = 16384


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
        if saved is None:
            self.next_frame = 0
            self.zi = np.zeros((self.sos.shape[0], len(meta.channels), 2))
            self.screening = _new_screening(job_id, meta, screen_settings)
            state, pending, events_bytes = WriterState(), None, 0
            shutil.rmtree(out, ignore_errors=True)
        else:
            self.next_frame = saved["next_frame"]
            self.zi, self.screening = pickle.loads(saved["state"])
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
            with open(self.jobdir / _CHECKPOINT, "rb") as f:
                saved: dict[str, Any] = pickle.load(f)  # our own file, written below
        except FileNotFoundError:
            return None
        return saved

    def step(self) -> list[Event]:
        """Process the next chunk and checkpoint; return its events."""
        chunk = self.compute()
        self.write(chunk)
        return chunk.events

    def compute(self) -> Computed:
        """Read, filter and screen the next chunk (not yet written)."""
        start = self.computed_to
        end = min(self.total, start + self.chunk_frames)
        raw = self.reader.read(start, end)
        # Channel-major (channels, n): sosfilt then runs along contiguous rows, without
        # the axis moves and copies it makes for axis=0 (the same arithmetic, per sample).
        mv_t = (raw.T.astype(np.float64) - self._base[:, None]) / self._gain[:, None]
        filtered_t = np.empty_like(mv_t)
        for a in range(0, mv_t.shape[1], _SOSFILT_FRAMES):  # sosfilt keeps the GIL: short
            b = a + _SOSFILT_FRAMES
            filtered_t[:, a:b], self.zi = scipy.signal.sosfilt(self.sos, mv_t[:, a:b],
                                                               axis=-1, zi=self.zi)
        events = screen_chunk(self.screening, start, mv_t.T, filtered_t.T)
        self.computed_to = end
        state = pickle.dumps((self.zi, self.screening), protocol=pickle.HIGHEST_PROTOCOL)
        return Computed(start, end, np.ascontiguousarray(filtered_t.T, dtype=np.float32),
                        events, state)

    def write(self, chunk: Computed) -> None:
        """Append a computed chunk to the result and checkpoint after it."""
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
        tmp = self.jobdir / (_CHECKPOINT + ".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(saved, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, self.jobdir / _CHECKPOINT)

    def commit(self, store: RecordingStore, rec_id: str) -> Meta:
        """Finish the result recording (with its events) and move it into *store*."""
        self._events.close()
        os.replace(self.jobdir / "events.jsonl", self.writer.path / "events.jsonl")
        meta = store.commit(rec_id, self.writer, source_format="job",
                            source_name=self.reader.meta.id, job=self.job_id)
        (self.jobdir / _CHECKPOINT).unlink(missing_ok=True)
        return meta

    def close(self) -> None:
        self.writer.close()
        self._events.close()
