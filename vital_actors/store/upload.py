"""Turn a streamed request body into a committed recording, or into nothing.

The body is gathered into chunks of ``write_chunk_bytes``; each chunk is decoded,
written, hashed and added to the pyramid in a worker thread (numpy, zlib and file
writes release the GIL), so the event loop only moves bytes. Memory is bounded by one
chunk plus a decoder's partial record: the ASGI ``receive`` that feeds us parks
hypercorn, and with it the socket, while a chunk is being written.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from .formats import Decoder, FormatError, UploadParams, make_decoder, resolve
from .recording import Meta, Writer
from .store import RecordingStore, new_id

__all__ = ["TooLargeError", "receive_upload"]

_SNIFF = 512


class TooLargeError(FormatError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"upload larger than the limit of {limit} bytes")


@dataclass(slots=True)
class _Upload:
    store: RecordingStore
    workdir: Path
    decoder: Decoder
    sha: Any
    fmt: str
    writer: Writer | None = None

    def write(self, data: bytes, *, final: bool) -> None:
        """Decode *data* and append its frames (runs in a worker thread)."""
        self.sha.update(data)
        for frames in self.decoder.feed(data):
            self._append(frames)
        if final:
            for frames in self.decoder.finish():
                self._append(frames)

    def _append(self, frames: Any) -> None:
        if self.writer is None:
            info = self.decoder.info
            assert info is not None  # decoders emit frames only after their header
            self.writer = Writer(self.workdir / "rec", fs=info.fs, channels=info.channels,
                                 dtype=info.dtype, gain=info.gain, baseline=info.baseline)
        self.writer.append(frames)


async def receive_upload(store: RecordingStore, body: AsyncIterator[bytes], *,
                         declared: str | None, params: UploadParams, chunk_bytes: int,
                         max_bytes: int) -> Meta:
    """Decode *body* into a new recording in *store* and commit it.

    Raises:
        FormatError: with the HTTP status; nothing of the upload is left on disk.
    """
    rec_id = new_id()
    workdir = store.partial / rec_id
    workdir.mkdir()
    up: _Upload | None = None
    try:
        buf, total = bytearray(), 0
        async for data in body:
            total += len(data)
            if total > max_bytes:
                raise TooLargeError(max_bytes)
            buf += data
            if up is None and len(buf) >= _SNIFF:
                up = _start(store, workdir, declared, params, bytes(buf[:_SNIFF]))
            if up is not None and len(buf) >= chunk_bytes:
                chunk, buf = bytes(buf), bytearray()
                await trio.to_thread.run_sync(partial(up.write, chunk, final=False))
        if up is None:
            if not buf:
                raise FormatError(422, "empty upload")
            up = _start(store, workdir, declared, params, bytes(buf[:_SNIFF]))
        await trio.to_thread.run_sync(partial(up.write, bytes(buf), final=True))
        if up.writer is None or up.writer.state.frames == 0:
            raise FormatError(422, "the upload holds no samples")
        return await trio.to_thread.run_sync(partial(
            store.commit, rec_id, up.writer, source_format=up.fmt, source_name=params.name,
            source_sha256=up.sha.hexdigest()))
    finally:
        aclose = getattr(body, "aclose", None)  # an async generator left half-read
        if aclose is not None:
            await aclose()
        # After a commit the recording has moved out of workdir; anything left is debris.
        if up is not None and up.writer is not None:
            up.writer.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _start(store: RecordingStore, workdir: Path, declared: str | None, params: UploadParams,
           head: bytes) -> _Upload:
    fmt = resolve(declared, head)
    return _Upload(store, workdir, make_decoder(fmt, params, workdir), hashlib.sha256(), fmt)
