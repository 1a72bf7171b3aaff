"""The recording store: a directory of complete recordings, and private work areas.

::

    <root>/recordings/<id>/   committed recordings (see recording.py)
    <root>/partial/<id>/      uploads being written; swept when the server starts
    <root>/jobs/<id>/         processing jobs: spec, checkpoint and their unfinished result
    <root>/uploads/<id>/      resumable uploads (resumable.py): kept across restarts for
                              UPLOAD_TTL_S after their last byte

Only :meth:`Writer.commit` moves a directory into ``recordings/``, with one rename.
"""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Iterator
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
        # Whatever was being uploaded when the last server stopped is incomplete.
        for leftover in self.partial.iterdir():
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
        """A new recording id and a writer in a private directory for it."""
        rec_id = new_id()
        return rec_id, Writer(self.partial / rec_id, fs=fs, channels=channels, dtype=dtype,
                              gain=gain, baseline=baseline)

    def commit(self, rec_id: str, writer: Writer, **source: str | None) -> Meta:
        meta = writer.commit(self.recordings / rec_id, id=rec_id, **source)  # type: ignore[arg-type]
        self._meta[rec_id] = meta
        return meta
