"""The recording store: a directory of complete recordings, and private work areas.

::

    <root>/recordings/<id>/   committed recordings (see recording.py)
    <root>/partial/<id>/      uploads being written; swept when a server starts (but
                              not what another process is writing)
    <root>/jobs/<id>/         processing jobs: spec, checkpoint and their unfinished result
    <root>/uploads/<id>/      resumable uploads (resumable.py): kept across restarts for
                              UPLOAD_TTL_S after their last byte

Only :meth:`Writer.commit` moves a directory into ``recordings/``, with one rename.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .recording import Meta, Reader, Writer
from .resumable import sweep

__all__ = ["RecordingNotFoundError", "RecordingStore", "new_id"]

UPLOAD_TTL_S = 7 * 86400  # a resumable upload left alone this long is deleted at start
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class RecordingNotFoundError(KeyError):
    """No committed recording has this id."""


def new_id(prefix: str = "rec") -> str:
    return f"{prefix}-{secrets.token_hex(5)}"


@contextmanager
def hold(directory: Path) -> Iterator[None]:
    """Hold an exclusive flock on *directory* (a work area in partial/) while inside:
    a store opened meanwhile by another process (a worker starting on the same
    store.dir) does not sweep it."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def _in_use(directory: Path, *, grace_s: float = 60.0) -> bool:
    """Whether a live process holds *directory* (:func:`hold`); one made less than
    *grace_s* ago and still empty counts too (its maker may not hold it yet)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    try:
        return time.time() - directory.stat().st_mtime < grace_s and not any(
            directory.iterdir())
    except FileNotFoundError:  # another process swept it meanwhile
        return False


class RecordingStore:
    """Committed recordings under *root*, with cached metadata."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.recordings = root / "recordings"
        self.partial = root / "partial"
        self.jobs = root / "jobs"
        self.uploads = root / "uploads"
        for d in (self.recordings, self.partial, self.jobs, self.uploads):
            d.mkdir(parents=True, exist_ok=True)
        sweep(self.uploads, older_than_s=UPLOAD_TTL_S)
        # What was being written when a server stopped is incomplete; what another
        # process (a worker sharing this store) is writing now is not.
        for leftover in self.partial.iterdir():
            if not _in_use(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
        self._meta: dict[str, Meta] = {}

    def __iter__(self) -> Iterator[Meta]:
        for path in sorted(self.recordings.iterdir()):
            try:
                yield self.meta(path.name)
            except RecordingNotFoundError:
                continue

    def path(self, rec_id: str) -> Path:
        if not _ID.match(rec_id):
            raise RecordingNotFoundError(rec_id)
        return self.recordings / rec_id

    def meta(self, rec_id: str) -> Meta:
        meta = self._meta.get(rec_id)
        if meta is None:
            file = self.path(rec_id) / "meta.json"
            try:
                meta = Meta.model_validate_json(file.read_text())
            except FileNotFoundError:
                raise RecordingNotFoundError(rec_id) from None
            self._meta[rec_id] = meta
        return meta

    def reader(self, rec_id: str) -> Reader:
        return Reader(self.path(rec_id), self.meta(rec_id))

    def delete(self, rec_id: str) -> None:
        path = self.path(rec_id)
        self.meta(rec_id)  # raises when there is no such recording
        self._meta.pop(rec_id, None)
        trash = self.partial / f"deleted-{rec_id}-{secrets.token_hex(3)}"
        path.rename(trash)  # gone from the listing at once; the bytes go next
        shutil.rmtree(trash, ignore_errors=True)

    def writer(self, *, fs: float, channels: list[str], dtype: str, gain: list[float],
               baseline: list[float]) -> tuple[str, Writer]:
        """A new recording id and a writer in a private directory for it (not held
        against another process's sweep: wrap its use in :func:`hold` for that)."""
        rec_id = new_id()
        return rec_id, Writer(self.partial / rec_id, fs=fs, channels=channels, dtype=dtype,
                              gain=gain, baseline=baseline)

    def commit(self, rec_id: str, writer: Writer, **source: str | None) -> Meta:
        meta = writer.commit(self.recordings / rec_id, id=rec_id, **source)  # type: ignore[arg-type]
        self._meta[rec_id] = meta
        return meta
