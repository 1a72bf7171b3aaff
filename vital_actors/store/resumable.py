"""Resumable uploads (tus-like): the body is kept on disk, byte for byte, as it arrives.

::

    <store>/uploads/<id>/upload.json   length, offset (bytes durable), query, checksum
    <store>/uploads/<id>/body          the bytes received, fsynced up to ``offset``

``offset`` in ``upload.json`` only ever names bytes that were fsynced before it was
written (atomically), so after a cut connection or a killed server the upload continues
from there; anything past it in ``body`` is cut off when the next PATCH begins. Once
``offset == length`` the body is decoded into a recording like a plain upload
(:func:`receive_upload`, its sha-256 checked against the one declared at creation);
then the bytes are deleted and the final answer (201 and the recording, or the
refusal) is kept in ``upload.json`` for a client whose connection broke before it got
it, until the session expires (:func:`sweep`).

Blocking file I/O; the API runs these in worker threads. The protocol itself (headers,
statuses) is in api/recordings.py and docs/protocol.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio
from pydantic import BaseModel, Field

from .formats import FormatError
from .recording import start_writeback, write_synced

__all__ = ["ChecksumError", "GoneError", "OffsetError", "Session", "UploadState", "parse_checksum"]

SYNC_BYTES = 8 << 20  # received bytes between two fsyncs (and offset updates)
_ID = re.compile(r"^up-[0-9a-f]{10}$")
_CHECKSUM = re.compile(r"^sha256 ([0-9a-fA-F]{64})$")


class OffsetError(FormatError):
    """A PATCH that does not start where the stored bytes end (409)."""

    def __init__(self, got: int, have: int) -> None:
        super().__init__(409, f"Upload-Offset {got} does not match the {have} bytes stored: "
                         f"HEAD the upload and continue from {have}")
        self.have = have


class BusyError(OffsetError):
    """Another process (a worker sharing the store) is writing this upload (409)."""

    def __init__(self, have: int) -> None:
        FormatError.__init__(self, 409, "another PATCH, on another worker, is writing this "
                             f"upload: retry from Upload-Offset {have} in a moment")
        self.have = have


class GoneError(FormatError):
    """The upload was deleted (DELETE /api/v1/uploads/{id}) under a PATCH (404)."""

    def __init__(self, upload_id: str) -> None:
        super().__init__(404, f"upload {upload_id!r} was deleted while this PATCH wrote "
                         "it; nothing of it is kept")


class ChecksumError(FormatError):
    def __init__(self, what: str, want: str, got: str) -> None:
        super().__init__(460, f"checksum mismatch on {what}: declared sha256 {want}, "
                         f"received bytes hash to {got}; nothing of them was kept")


def parse_checksum(value: str | None) -> str | None:
    """``sha256 <64 hex digits>`` (the Upload-Checksum header) -> the hex digest."""
    if value is None:
        return None
    m = _CHECKSUM.match(value.strip())
    if m is None:
        raise FormatError(400, f"Upload-Checksum must be 'sha256 <64 hex digits>', got "
                          f"{value!r}")
    return m.group(1).lower()


class UploadState(BaseModel):
    """``upload.json``; also what GET /api/v1/uploads/{id} returns."""

    id: str
    length: int = Field(description="bytes the whole upload has (Upload-Length)")
    offset: int = Field(0, description="bytes stored durably: the next PATCH starts here")
    query: str = Field("", description="the creation's query string: format, fs, channels…")
    content_type: str | None = None
    sha256: str | None = Field(None, description="of the whole upload, checked at the end")
    created: float = Field(default_factory=time.time)
    status: int | None = Field(None, description="once complete and decoded: the final "
                               "answer's status (201, or the refusal's 4xx)")
    answer: dict[str, Any] | None = Field(None, description="and its body (the "
                                          "recording's metadata, or the error)")


class Session:
    """One resumable upload on disk."""

    def __init__(self, path: Path, state: UploadState) -> None:
        self.path, self.state = path, state

    @classmethod
    def create(cls, root: Path, *, length: int, query: str, content_type: str | None,
               sha256: str | None) -> Session:
        state = UploadState(id=f"up-{secrets.token_hex(5)}", length=length, query=query,
                            content_type=content_type, sha256=sha256)
        path = root / state.id
        path.mkdir(parents=True)
        (path / "body").touch()
        session = cls(path, state)
        session._save()
        return session

    @classmethod
    def open(cls, root: Path, upload_id: str) -> Session:
        """Raises: KeyError when there is no such upload."""
        path = root / upload_id
        try:
            if not _ID.match(upload_id):
                raise FileNotFoundError(upload_id)
            state = UploadState.model_validate_json((path / "upload.json").read_text())
        except FileNotFoundError:
            raise KeyError(upload_id) from None
        return cls(path, state)

    @property
    def complete(self) -> bool:
        return self.state.offset == self.state.length

    def _save(self) -> None:
        # Synced: the offset it holds says which bytes of the body are on disk.
        try:
            write_synced(self.path / "upload.json", self.state.model_dump_json())
        except FileNotFoundError:  # deleted meanwhile: its directory is gone
            raise GoneError(self.state.id) from None

    def writer(self, offset: int, sha256: str | None) -> PatchWriter:
        """Begin a PATCH at *offset*.

        Raises:
            OffsetError: *offset* is not where the durable bytes end.
        """
        if offset != self.state.offset:
            raise OffsetError(offset, self.state.offset)
        return PatchWriter(self, sha256)

    async def body(self, chunk: int) -> AsyncIterator[bytes]:
        """The stored bytes, *chunk* at a time (read in a worker thread)."""
        async with await trio.open_file(self.path / "body", "rb") as f:
            while data := await f.read(chunk):
                yield data

    def done(self, status: int, answer: dict[str, Any]) -> None:
        """Keep the final answer (for a client that lost it), drop the bytes."""
        self.state.status, self.state.answer = status, answer
        self._save()
        (self.path / "body").unlink(missing_ok=True)

    def delete(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class PatchWriter:
    """Appends one PATCH's bytes; :meth:`commit` makes them count, :meth:`abandon`
    drops them. Without a per-PATCH checksum, what arrived before a cut connection
    is kept (commit); with one, only a whole, matching body is."""

    def __init__(self, session: Session, sha256: str | None) -> None:
        self.session, self.want = session, sha256
        self.start = session.state.offset
        self.written = 0
        self._unsynced = 0
        self._hash = hashlib.sha256() if sha256 is not None else None
        try:
            self._fd = os.open(session.path / "body", os.O_WRONLY)
        except FileNotFoundError:  # deleted since it was opened
            raise GoneError(session.state.id) from None
        try:  # one writer across processes too (workers sharing store.dir)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise BusyError(self.start) from None
        os.ftruncate(self._fd, self.start)  # whatever a cut PATCH left past the offset
        os.lseek(self._fd, self.start, os.SEEK_SET)

    def write(self, data: bytes) -> None:
        """Append *data*; fsync and advance the offset every ``SYNC_BYTES`` (only
        without a per-PATCH checksum, which must see the whole body first).

        Raises:
            FormatError: 413, *data* goes past the upload's length (what is within it
            is written).
        """
        room = self.session.state.length - self.start - self.written
        if len(data) > room:  # keep what is within the length (commit), refuse the rest
            self.write(data[:room])
            raise FormatError(413, f"the body goes past Upload-Length "
                              f"{self.session.state.length}")
        os.write(self._fd, data)
        start_writeback(self._fd, self.start + self.written, self.start + self.written +
                        len(data))
        self.written += len(data)
        self._unsynced += len(data)
        if self._hash is not None:
            self._hash.update(data)
        elif self._unsynced >= SYNC_BYTES:
            self._sync()

    def _sync(self) -> None:
        os.fsync(self._fd)
        self._unsynced = 0
        self.session.state.offset = self.start + self.written
        self.session._save()

    def commit(self, *, whole: bool) -> None:
        """Make the bytes received durable and count them; *whole*: the body ended
        as the client sent it (not cut), as a per-PATCH checksum requires.

        Raises:
            ChecksumError: the PATCH's checksum does not match (its bytes are dropped).
        """
        try:
            if self._hash is not None:
                got = self._hash.hexdigest()
                if not whole:
                    self.written = 0  # a cut body cannot be checked: keep none of it
                elif got != self.want:
                    self.written = 0
                    raise ChecksumError("this PATCH", self.want or "", got)
            os.ftruncate(self._fd, self.start + self.written)
            self._sync()
        finally:
            os.close(self._fd)

    def abandon(self) -> None:
        os.close(self._fd)


def sweep(root: Path, *, older_than_s: float) -> int:
    """Delete uploads untouched for *older_than_s*; how many went."""
    gone = 0
    now = time.time()
    for path in root.glob("up-*"):
        try:
            age = now - (path / "upload.json").stat().st_mtime
        except FileNotFoundError:
            age = now - path.stat().st_mtime
        if age > older_than_s:
            shutil.rmtree(path, ignore_errors=True)
            gone += 1
    return gone
