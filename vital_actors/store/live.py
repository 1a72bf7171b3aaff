"""A live stream's archive run read as a recording that grows (issue 5).

The archive writer (:mod:`vital_actors.archive`) appends each run's frames to
``samples.bin`` and, in the same worker-thread call, the complete buckets of the view
pyramid to ``pyr<k>.bin`` (:class:`PyramidFiles`): the layout of a committed recording
(store/recording.py), minus the partial last bucket of each level. Memory per run is the
builder's pending state: under 64 frames plus under 8 entries per level.

:class:`LiveReader` reads such a run up to a frame count the caller trusts (the frames
acked to the device), computing each level's partial last bucket on the fly from the
level below (at most 8 entries per level, 64 frames at the bottom), so a view of a
growing run equals the view of a recording committed from the same frames.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .pyramid import BASE, FACTOR, LEVELS, PyramidBuilder, bucket, minmax, reduce
from .recording import Meta, Reader

__all__ = ["TRIM", "LiveReader", "PyramidFiles", "Trim", "TrimmedError", "disk_frames",
           "live_meta", "read_trim"]

Array = npt.NDArray[Any]
_REBUILD_FRAMES = 1 << 20  # frames per read when a pyramid is rebuilt from the samples


class PyramidFiles:
    """The complete pyramid buckets of one growing ``samples.bin``, appended with plain
    ``os.write`` (so a reader's map sees them at once). Blocking; one thread at a time.

    Opening over existing files (a run continued after a restart or a reconnection)
    trims each level to the buckets the samples fill and restores the builder's pending
    frames and entries from disk; a level shorter than that (a crash between the two
    writes, or a run archived before pyramids) is rebuilt from the samples.
    """

    def __init__(self, path: Path, channels: int, dtype: str, frames: int) -> None:
        self.path, self.channels = path, channels
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.entry_bytes = 2 * channels * self.dtype.itemsize
        want = [frames // bucket(k) for k in range(LEVELS)]
        have = [_size(path / f"pyr{k}.bin") // self.entry_bytes for k in range(LEVELS)]
        self._fds = []
        try:  # a full disk can fail the rebuild: no descriptor is left behind
            for k in range(LEVELS):
                self._fds.append(os.open(path / f"pyr{k}.bin", os.O_RDWR | os.O_CREAT))
            if any(h < w for h, w in zip(have, want, strict=True)):
                self._rebuild(frames)
            else:
                for fd, w in zip(self._fds, want, strict=True):
                    os.ftruncate(fd, w * self.entry_bytes)
                self.builder = PyramidBuilder(channels, self.dtype, self._pending(frames))
            for fd in self._fds:
                os.lseek(fd, 0, os.SEEK_END)
        except BaseException:
            self.close()
            raise

    def _pending(self, frames: int) -> list[Array]:
        reader = _RawReader(self.path, self.channels, self.dtype, frames)
        whole = [frames // bucket(k) for k in range(LEVELS)]
        pending = [reader.read(whole[0] * BASE, frames)]
        for k in range(1, LEVELS):
            pending.append(reader.level(k - 1, whole[k] * FACTOR, whole[k - 1]))
        return pending

    def _rebuild(self, frames: int) -> None:
        for fd in self._fds:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        self.builder = PyramidBuilder(self.channels, self.dtype)
        reader = _RawReader(self.path, self.channels, self.dtype, frames)
        # What retention deleted reads as zeros: in its place, the first frame it kept,
        # so the buckets that straddle the cut hold the minimum and maximum of real data.
        first = min(read_trim(self.path).samples, frames)
        kept = reader.read(first, first + 1) if first else None
        for start in range(0, frames, _REBUILD_FRAMES):
            end = min(frames, start + _REBUILD_FRAMES)
            if kept is not None and end <= first:
                block = np.repeat(kept, end - start, axis=0)
            else:
                block = reader.read(start, end)
                if kept is not None and start < first:
                    block[:first - start] = kept
            self.append(block)

    def append(self, frames: Array) -> None:
        """Add frames (n, channels) in the run's dtype; write the buckets they complete."""
        for fd, entries in zip(self._fds, self.builder.feed(frames), strict=True):
            if len(entries):
                os.write(fd, np.ascontiguousarray(entries).tobytes())

    def sync(self) -> None:
        for fd in self._fds:
            os.fsync(fd)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


#: The file in a run that says what archive retention deleted from its start.
TRIM = "trim.json"


@dataclass(frozen=True, slots=True)
class Trim:
    """What archive retention deleted from the start of a run it keeps (``trim.json``):
    the samples (per channel) before ``samples`` and the index records before
    ``records``, whose first kept frame has seq ``seq``. Their bytes are holes in the
    files now (they read as zeros): readers start at these."""

    samples: int = 0
    records: int = 0
    seq: int = 0


def read_trim(path: Path) -> Trim:
    """The run at *path*'s :class:`Trim` (nothing deleted when it has none)."""
    try:
        data = json.loads((path / TRIM).read_text())
    except FileNotFoundError:
        return Trim()
    return Trim(int(data["samples"]), int(data["records"]), int(data["seq"]))


class TrimmedError(LookupError):
    """Archive retention deleted samples a read had asked for while it read them."""


def live_meta(path: Path, *, frames: int, id: str) -> Meta:
    """A run's ``meta.json`` (the device's hello) as a recording's metadata at *frames*
    (``first_frame``: where what retention kept begins)."""
    hello = json.loads((path / "meta.json").read_text())
    dtype = np.dtype(hello["dtype"])
    first = min(read_trim(path).samples, frames)
    return Meta(id=id, fs=hello["fs"], channels=hello["channels"], dtype=hello["dtype"],
                gain=hello["gain"], baseline=hello["baseline"], frames=frames,
                duration_s=frames / hello["fs"], source_format="live",
                source_name=hello.get("device"), checksum=None, created=_mtime(path),
                bytes=(frames - first) * len(hello["channels"]) * dtype.itemsize, live=True,
                first_frame=first)


def _mtime(path: Path) -> float:
    return (path / "meta.json").stat().st_mtime


def disk_frames(path: Path, channels: int, dtype: str) -> int:
    """Whole frames in a run's ``samples.bin``: all of them once the run is closed."""
    return _size(path / "samples.bin") // (channels * np.dtype(dtype).itemsize)


class LiveReader(Reader):
    """A :class:`Reader` of a run's first ``meta.frames`` frames, partial buckets
    included: what is past them on disk (written, not yet acked) is never read, nor
    what retention deleted (before ``meta.first_frame``)."""

    def read(self, start: int, end: int) -> Array:
        """As :meth:`Reader.read`.

        Raises:
            TrimmedError: retention deleted some of them while they were read (it
                records the new start before it deletes: the check after the read
                sees it).
        """
        out = super().read(start, end)
        start = max(start, self.first_frame)
        if len(out) and read_trim(self.path).samples > start:
            raise TrimmedError(f"samples from frame {start} of {self.path.name} were deleted "
                               "by archive retention while they were read")
        return out

    def level(self, k: int, start: int, end: int) -> Array:
        size = bucket(k)
        whole, total = self.frames // size, -(-self.frames // size)
        start, end = max(0, start), min(total, end)
        if end <= start:
            return np.empty((0, self.channels, 2), self.dtype)
        parts = []
        if start < whole:
            parts.append(self._window(f"pyr{k}.bin", start, min(end, whole),
                                      (self.channels, 2)))
        if end > whole:  # the partial bucket at the end
            parts.append(self._partial(k, whole)[None])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _partial(self, k: int, whole: int) -> Array:
        """Min/max of frames [whole * bucket(k), frames): from the level below."""
        if k == 0:
            out: Array = minmax(self.read(whole * BASE, self.frames), None)[0]
            return out
        below = self.level(k - 1, whole * FACTOR, -(-self.frames // bucket(k - 1)))
        out = reduce(below, None)[0]
        return out


class _RawReader(Reader):
    """A reader of a run's files without meta.json: what :class:`PyramidFiles` needs."""

    def __init__(self, path: Path, channels: int, dtype: np.dtype[Any], frames: int) -> None:
        self.path, self.channels, self.dtype, self._frames = path, channels, dtype, frames

    @property
    def frames(self) -> int:
        return self._frames

    @property
    def first_frame(self) -> int:
        return 0  # the pyramid's upkeep reads exactly what it asks for

    def level(self, k: int, start: int, end: int) -> Array:
        if end <= start:
            return np.empty((0, self.channels, 2), self.dtype)
        return self._window(f"pyr{k}.bin", start, end, (self.channels, 2))
