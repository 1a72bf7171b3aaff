"""Turn a streamed request body into a committed recording, or into nothing.

The body is gathered into chunks of ``write_chunk_bytes``; each chunk is decoded,
written, hashed and added to the pyramid in a worker thread (numpy, zlib and file
writes release the GIL), so the event loop only moves bytes. Memory is bounded by one
chunk plus a decoder's partial record: the ASGI ``receive`` that feeds us parks
hypercorn, and with it the socket, while a chunk is being written.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import trio

from .formats import Decoder, FormatError, SourceInfo, UploadParams, make_decoder, resolve
from .recording import Meta, Writer
from .resumable import ChecksumError
from .store import RecordingStore, hold, new_id

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
    fs_range: tuple[float, float]
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
            _check(info, self.fs_range)
            self.writer = Writer(self.workdir / "rec", fs=info.fs, channels=info.channels,
                                 dtype=info.dtype, gain=info.gain, baseline=info.baseline)
        if frames.dtype.kind == "f" and not np.isfinite(frames).all():
            raise FormatError(422, "samples must be finite numbers (and within float32 for "
                              f"CSV): NaN or infinity after frame {self.writer.state.frames}")
        self.writer.append(frames)


def _check(info: SourceInfo, fs_range: tuple[float, float]) -> None:
    """Refuse a header whose rate, gains or baselines no recording can have, or whose
    rate is outside *fs_range* (the server's ``limits.min_fs .. max_fs``, as a device's).

    Raises:
        FormatError: 422, naming the field.
    """
    if not (math.isfinite(info.fs) and info.fs > 0):
        raise FormatError(422, f"the sampling rate must be a positive number, not {info.fs}")
    lo, hi = fs_range
    if not lo <= info.fs <= hi:
        raise FormatError(422, f"the sampling rate {info.fs:g} Hz is outside the server's "
                          f"{lo:g}..{hi:g} Hz (limits.min_fs, max_fs)")
    if not info.channels:
        raise FormatError(422, "the recording has no channels")
    if not all(math.isfinite(g) and g != 0 for g in info.gain):
        raise FormatError(422, f"every channel's gain must be a non-zero number: {info.gain}")
    if not all(math.isfinite(b) for b in info.baseline):
        raise FormatError(422, f"every channel's baseline must be a number: {info.baseline}")


async def receive_upload(store: RecordingStore, body: AsyncIterator[bytes], *,
                         declared: str | None, params: UploadParams, chunk_bytes: int,
                         max_bytes: int, sha256: str | None = None,
                         fs_range: tuple[float, float] = (0.0, math.inf)) -> Meta:
    """Decode *body* into a new recording in *store* and commit it; its sampling rate
    must be within *fs_range*.

    Receiving and writing overlap: while a worker thread writes one chunk, the next one
    is received (a one-slot channel between them, so at most two chunks in memory).

    Raises:
        FormatError: with the HTTP status; nothing of the upload is left on disk.
        ChecksumError: the body's sha-256 is not *sha256* (hex), when given.
    """
    rec_id = new_id()
    workdir = store.partial / rec_id
    workdir.mkdir()
    writer = _ChunkWriter(store, workdir, declared, params, max_bytes, fs_range)
    with hold(workdir):
        return await _receive(store, body, rec_id, workdir, writer, chunk_bytes=chunk_bytes,
                              max_bytes=max_bytes, sha256=sha256, params=params)


async def _receive(store: RecordingStore, body: AsyncIterator[bytes], rec_id: str,
                   workdir: Path, writer: _ChunkWriter, *, chunk_bytes: int, max_bytes: int,
                   sha256: str | None, params: UploadParams) -> Meta:
    try:
        failure: Exception | None = None
        tx, rx = trio.open_memory_channel[tuple[bytes, bool]](1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run, rx)
            with tx:
                try:
                    await _feed(body, tx, chunk_bytes=chunk_bytes, max_bytes=max_bytes)
                except trio.BrokenResourceError:
                    pass  # the writer failed; its error is below
                except Exception as exc:  # too large, or the client went away
                    failure = exc
                    nursery.cancel_scope.cancel()
        if failure is not None or writer.error is not None:
            raise failure or writer.error  # type: ignore[misc]
        up = writer.up
        if up is None or up.writer is None or up.writer.state.frames == 0:
            raise FormatError(422, "the upload holds no samples")
        if sha256 is not None and up.sha.hexdigest() != sha256:
            raise ChecksumError("the whole upload", sha256, up.sha.hexdigest())
        return await trio.to_thread.run_sync(partial(
            store.commit, rec_id, up.writer, source_format=up.fmt, source_name=params.name,
            source_sha256=up.sha.hexdigest()))
    finally:
        aclose = getattr(body, "aclose", None)  # an async generator left half-read
        if aclose is not None:
            await aclose()
        # After a commit the recording has moved out of workdir; anything left is debris.
        if writer.up is not None and writer.up.writer is not None:
            writer.up.writer.close()
        shutil.rmtree(workdir, ignore_errors=True)


async def _feed(body: AsyncIterator[bytes], outbox: trio.MemorySendChannel[tuple[bytes, bool]],
                *, chunk_bytes: int, max_bytes: int) -> None:
    """Cut *body* into chunks of at least *chunk_bytes* (the last one flagged final)."""
    buf, total = bytearray(), 0
    async for data in body:
        total += len(data)
        if total > max_bytes:
            raise TooLargeError(max_bytes)
        buf += data
        if len(buf) >= chunk_bytes:
            chunk, buf = bytes(buf), bytearray()
            await outbox.send((chunk, False))
    if not total:
        raise FormatError(422, "empty upload")
    await outbox.send((bytes(buf), True))


@dataclass(slots=True)
class _ChunkWriter:
    """Takes chunks from a channel and writes them in a worker thread, one at a time.

    Never raises: an error is kept in ``error`` and closes the channel, which stops the
    sender (so the caller sees one plain exception, not an exception group).
    """

    store: RecordingStore
    workdir: Path
    declared: str | None
    params: UploadParams
    max_bytes: int  # also what an archive (WFDB zip or tar) may unpack to
    fs_range: tuple[float, float]
    up: _Upload | None = None
    error: Exception | None = None

    async def run(self, inbox: trio.MemoryReceiveChannel[tuple[bytes, bool]]) -> None:
        with inbox:
            try:
                async for chunk, final in inbox:
                    await trio.to_thread.run_sync(self._write, chunk, final)
            except Exception as exc:
                self.error = exc

    def _write(self, chunk: bytes, final: bool) -> None:
        if self.up is None:  # the first chunk is at least the sniffing size, or all there is
            self.up = _start(self.store, self.workdir, self.declared, self.params,
                             chunk[:_SNIFF], self.max_bytes, self.fs_range)
        self.up.write(chunk, final=final)


def _start(store: RecordingStore, workdir: Path, declared: str | None, params: UploadParams,
           head: bytes, max_bytes: int, fs_range: tuple[float, float]) -> _Upload:
    fmt = resolve(declared, head)
    decoder = make_decoder(fmt, params, workdir, max_unpacked=max_bytes)
    return _Upload(store, workdir, decoder, hashlib.sha256(), fmt, fs_range)
