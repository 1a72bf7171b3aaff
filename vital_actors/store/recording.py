"""One recording on disk: its metadata, its writer and its reader.

Layout of a recording directory::

    meta.json     fs, channels, dtype, gain, baseline, frames, duration, source, checksum
    samples.bin   interleaved little-endian frames (frames x channels) in ``dtype``
    pyr<k>.bin    pyramid level k: (buckets, channels, 2) min/max in ``dtype``
    events.jsonl  optional: beats, quality and alerts of a processing job

Physical values in mV are ``(sample - baseline) / gain``, as in WFDB. A writer fills a
private directory chunk by chunk and renames it into place only when complete, so a
reader never sees half a recording. Its state is small and plain (byte counts, the
CRC, the pyramid's pending frames), so a job can checkpoint and resume it exactly.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from .libc import libc_function
from .pyramid import LEVELS, PyramidBuilder, bucket

__all__ = ["DTYPES", "Meta", "Reader", "Writer", "WriterState", "fsync_path", "write_synced"]

DTYPES = ("int16", "float32", "float64")
Array = npt.NDArray[Any]


class Meta(BaseModel):
    """What ``meta.json`` holds (and GET /api/v1/recordings/{id} returns)."""

    model_config = ConfigDict(frozen=True)
    id: str
    fs: float
    channels: list[str]
    dtype: str = Field(description="int16 or float32, little-endian, interleaved")
    gain: list[float] = Field(description="units per mV: mV = (sample - baseline) / gain")
    baseline: list[float]
    frames: int = Field(description="samples per channel")
    duration_s: float
    source_format: str = Field(description="npy, csv, edf, wfdb, or job")
    source_name: str | None = None
    checksum: str | None = Field(description="crc32 of samples.bin, as crc32:<8 hex "
                                 "digits>; null for a live archive, which still grows")
    source_sha256: str | None = Field(None, description="of the uploaded bytes")
    created: float
    bytes: int
    job: str | None = Field(None, description="the job whose result this is")
    live: bool = Field(False, description="a live stream's archive run (source_format "
                       "live): it grows while its device sends")
    first_frame: int = Field(0, description="the first frame still stored: archive "
                             "retention deleted those before it (live archive runs only)")


class WriterState(BaseModel):
    """A writer's resumable state: everything but the bytes already on disk."""

    frames: int = 0
    crc: int = 0
    level_entries: list[int] = Field(default_factory=lambda: [0] * LEVELS)


class Writer:
    """Writes one recording into *path* (a private directory), then commits it.

    Not thread-safe; one thread at a time (a job runs it in a worker thread).
    """

    def __init__(self, path: Path, *, fs: float, channels: list[str], dtype: str,
                 gain: list[float], baseline: list[float],
                 state: WriterState | None = None, pending: list[Array] | None = None) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.path = path
        self.fs, self.channels, self.gain, self.baseline = fs, channels, gain, baseline
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.state = state or WriterState()
        self.pyramid = PyramidBuilder(len(channels), self.dtype, pending)
        path.mkdir(parents=True, exist_ok=True)
        self._samples = self._open("samples.bin", self.state.frames * self.frame_bytes)
        self._written_back = self.state.frames * self.frame_bytes
        self._levels = [self._open(f"pyr{k}.bin", n * self.entry_bytes)
                        for k, n in enumerate(self.state.level_entries)]

    @property
    def frame_bytes(self) -> int:
        return len(self.channels) * self.dtype.itemsize

    @property
    def entry_bytes(self) -> int:
        return 2 * self.frame_bytes

    def _open(self, name: str, size: int) -> Any:
        """Open for appending at *size*, dropping anything past it (a resumed writer)."""
        f = open(self.path / name, "ab+")  # noqa: SIM115 - closed in close()
        f.truncate(size)
        f.seek(size)
        return f

    def append(self, frames: Array) -> None:
        """Append frames (n, channels), converted to the recording's dtype."""
        if frames.ndim != 2 or frames.shape[1] != len(self.channels):
            raise ValueError(f"frames must be (n, {len(self.channels)}), got {frames.shape}")
        data = np.ascontiguousarray(frames, dtype=self.dtype)
        raw = data.data.cast("B")  # no copy: written and hashed where it lies
        self._samples.write(raw)
        self._samples.flush()  # (a chunk is far bigger than the file's buffer anyway)
        end = self._samples.tell()
        start_writeback(self._samples.fileno(), self._written_back, end)
        self._written_back = end
        self.state.crc = zlib.crc32(raw, self.state.crc)
        self.state.frames += len(data)
        self._write_levels(self.pyramid.feed(data))

    def _write_levels(self, levels: list[Array]) -> None:
        for k, entries in enumerate(levels):
            if len(entries):
                self._levels[k].write(np.ascontiguousarray(entries).tobytes())
                self.state.level_entries[k] += len(entries)

    def flush(self) -> None:
        """Push what was written to the OS (enough to survive a killed process)."""
        for f in (self._samples, *self._levels):
            f.flush()

    def close(self) -> None:
        for f in (self._samples, *self._levels):
            f.close()

    def commit(self, target: Path, *, id: str, source_format: str,
               source_name: str | None = None, source_sha256: str | None = None,
               job: str | None = None) -> Meta:
        """Finish the pyramid, write meta.json and rename the directory to *target*."""
        self._write_levels(self.pyramid.finish())
        self.flush()
        for f in (self._samples, *self._levels):
            os.fsync(f.fileno())
        self.close()
        frames = self.state.frames
        meta = Meta(id=id, fs=self.fs, channels=self.channels, dtype=self.dtype.name,
                    gain=self.gain, baseline=self.baseline, frames=frames,
                    duration_s=frames / self.fs, source_format=source_format,
                    source_name=source_name, checksum=f"crc32:{self.state.crc:08x}",
                    source_sha256=source_sha256, created=time.time(),
                    bytes=frames * self.frame_bytes, job=job)
        write_synced(self.path / "meta.json", meta.model_dump_json(indent=1))
        os.replace(self.path, target)  # atomic: the recording appears complete or not at all
        fsync_path(target.parent)
        return meta

    def abort(self) -> None:
        """Close and delete everything written."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)


def write_synced(path: Path, text: str) -> None:
    """Replace *path* with *text* atomically and durably: the bytes are synced before
    the rename, the directory after it. ext4 commits a rename before a new file's
    delayed blocks, so without the first sync a power loss can leave *path* empty."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """Make *path* durable: a file's data, or the entries added to or renamed in a
    directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SYNC_FILE_RANGE = libc_function("sync_file_range", ctypes.c_int, ctypes.c_int64,
                                  ctypes.c_int64, ctypes.c_uint)
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, start: int, end: int) -> None:
    """Ask the kernel to begin writing bytes [start, end) of *fd* to disk, without
    waiting (Linux sync_file_range; nothing elsewhere). Not for durability: a 2 GB
    job's 4 GB of result otherwise piles up as dirty pages until the kernel's
    threshold, then is written back in a burst that competes with the event loop for
    the cores and throttles every writer in the process."""
    if _SYNC_FILE_RANGE is not None and end > start:
        _SYNC_FILE_RANGE(fd, start, end - start, _SYNC_FILE_RANGE_WRITE)


class Reader:
    """Reads a committed recording: memory-mapped windows, mapped only while read, so
    the process's resident memory stays the size of what it asked for."""

    def __init__(self, path: Path, meta: Meta) -> None:
        self.path, self.meta = path, meta
        self.dtype = np.dtype(meta.dtype).newbyteorder("<")
        self.channels = len(meta.channels)

    @classmethod
    def open(cls, path: Path) -> Reader:
        meta = Meta.model_validate_json((path / "meta.json").read_text())
        return cls(path, meta)

    @property
    def frames(self) -> int:
        return self.meta.frames

    @property
    def first_frame(self) -> int:
        """The first frame it holds (archive retention deletes a live run's oldest)."""
        return self.meta.first_frame

    def read(self, start: int, end: int) -> Array:
        """Frames [start, end) (clipped to the recording: from :attr:`first_frame`), a
        copy of shape (n, channels)."""
        start, end = max(self.first_frame, start), min(self.frames, end)
        if end <= start:
            return np.empty((0, self.channels), self.dtype)
        return self._window("samples.bin", start, end, (self.channels,))

    def level_entries(self, k: int) -> int:
        """How many entries level *k* has (the last one may cover a partial bucket)."""
        return -(-self.frames // bucket(k))

    def level(self, k: int, start: int, end: int) -> Array:
        """Pyramid entries [start, end) of level *k*: (n, channels, 2)."""
        total = self.level_entries(k)
        start, end = max(0, start), min(total, end)
        if end <= start:
            return np.empty((0, self.channels, 2), self.dtype)
        return self._window(f"pyr{k}.bin", start, end, (self.channels, 2))

    def _window(self, name: str, start: int, end: int, shape: tuple[int, ...]) -> Array:
        row = int(np.prod(shape)) * self.dtype.itemsize
        mm = np.memmap(self.path / name, dtype=self.dtype, mode="r", offset=start * row,
                       shape=(end - start, *shape))
        return np.array(mm)  # a plain copy; the map goes with *mm*, right here (refcount)

    def to_mv(self, frames: Array) -> npt.NDArray[np.float64]:
        gain = np.asarray(self.meta.gain)
        base = np.asarray(self.meta.baseline)
        out: npt.NDArray[np.float64] = (frames.astype(np.float64) - base) / gain
        return out
