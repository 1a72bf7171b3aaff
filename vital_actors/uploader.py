"""The upload client behind ``vital-actors upload FILE``.

By default it uses the resumable protocol (docs/protocol.md §12): create the upload
with its length and sha-256, then PATCH the bytes; when the connection breaks (or the
server restarts) it asks where the stored bytes end and PATCHes on from there, with
backoff, until the server answers 201 with the recording. ``resumable=False`` streams
one plain POST /api/v1/recordings instead. Either way the body goes 1 MiB at a time
while the answer is read, so a refusal that comes before the body ends (413, 415) is
shown, not a broken pipe.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import h11
import trio

from .sdk import Backoff

__all__ = ["ProgressBar", "UploadError", "upload_file"]

_CHUNK = 1 << 20
Progress = Callable[[int, int], None]
_BROKEN = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError,
           h11.RemoteProtocolError, h11.LocalProtocolError)


class UploadError(Exception):
    """The server could not be reached for longer than the retries allow."""


async def upload_file(url: str, path: Path, *, query: dict[str, str],
                      on_progress: Progress | None = None, resumable: bool = True,
                      retries: int = 20, backoff: Backoff | None = None,
                      on_resume: Callable[[int], None] | None = None
                      ) -> tuple[int, dict[str, Any]]:
    """Upload *path* to *url* (``http://host:port``); return (status, JSON answer).

    Resumable: up to *retries* attempts in a row that store no new byte, waiting
    *backoff*'s delays between them, before :class:`UploadError`; *on_resume* is
    called with the offset each time it continues after a break.
    """
    host, port = _address(url)
    size = (await trio.Path(path).stat()).st_size
    qs = f"?{urlencode(query)}" if query else ""
    if resumable:
        got = await _resumable(host, port, qs, path, size, on_progress, retries, backoff,
                               on_resume)
        if got[0] not in (404, 405):
            return got
        # A server without /api/v1/uploads: one plain POST.
    status, _, body = await _request(host, port, "POST", f"/api/v1/recordings{qs}",
                                     body=(path, 0, size, on_progress))
    return status, _json(body)


def _address(url: str) -> tuple[str, int]:
    """(host, port) of an ``http://host[:port]`` *url*; :class:`UploadError` otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port or 80
    except ValueError as exc:  # port out of range or not a number, a broken [IPv6]
        raise UploadError(f"bad url {url!r}: {exc}") from None
    if parts.scheme != "http":  # no scheme went to port 80, https went there in plain text
        raise UploadError(f"bad url {url!r}: expected http://host[:port]")
    return parts.hostname or "127.0.0.1", port


async def _resumable(host: str, port: int, qs: str, path: Path, size: int,
                     on_progress: Progress | None, retries: int, backoff: Backoff | None,
                     on_resume: Callable[[int], None] | None) -> tuple[int, dict[str, Any]]:
    sha = await trio.to_thread.run_sync(_sha256, path)
    backoff = backoff or Backoff(initial=0.1, maximum=5.0)
    delays = backoff.delays()
    for attempt in range(retries + 1):
        try:  # a creation that breaks leaves at most an empty upload, swept in time
            status, headers, body = await _request(
                host, port, "POST", f"/api/v1/uploads{qs}",
                extra=[("upload-length", str(size)), ("upload-checksum", f"sha256 {sha}")])
            break
        except _BROKEN as exc:
            if attempt == retries:
                raise UploadError(f"cannot begin the upload at {host}:{port}: {exc}") from None
            await trio.sleep(next(delays))
    if status != 201:
        return status, _json(body)
    return await _resume(host, port, headers["location"], path, size, on_progress,
                         retries, backoff, on_resume or (lambda _: None))


async def _resume(host: str, port: int, target: str, path: Path, size: int,
                  on_progress: Progress | None, retries: int, backoff: Backoff,
                  on_resume: Callable[[int], None]) -> tuple[int, dict[str, Any]]:
    """PATCH from the stored offset until the upload completes."""
    offset: int | None = 0
    failures, stored, delays = 0, 0, backoff.delays()
    while True:
        try:
            if offset is None:  # after a failure: where do the stored bytes end?
                status, headers, body = await _request(host, port, "GET", target)
                state = _json(body)
                if status != 200:
                    return status, state
                if state.get("status") is not None:  # done: the answer we did not get
                    return int(state["status"]), state["answer"]
                offset = int(headers["upload-offset"])
                if offset > stored:  # progress since the last break: patience again
                    failures, stored, delays = 0, offset, backoff.delays()
                on_resume(offset)
            status, headers, body = await _request(
                host, port, "PATCH", target, extra=[("upload-offset", str(offset))],
                body=(path, offset, size, on_progress))
        except _BROKEN:
            failures += 1
            if failures > retries:
                raise UploadError(f"gave up after {retries} retries: the server at "
                                  f"{host}:{port} stores no more of the upload") from None
            offset = None
            await trio.sleep(next(delays))
            continue
        if status in (204, 409) and "upload-offset" in headers:
            new = int(headers["upload-offset"])  # 409: another offset than we thought
            offset = new
            if new > stored:
                failures, stored, delays = 0, new, backoff.delays()
                continue
            failures += 1  # no byte stored since the last answer: wait before the next
            if failures > retries:
                raise UploadError(f"gave up after {retries} retries: the server at "
                                  f"{host}:{port} stores no more of the upload")
            await trio.sleep(next(delays))
            continue
        return status, _json(body)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _json(body: bytes) -> dict[str, Any]:
    try:
        answer: dict[str, Any] = json.loads(body) if body else {}
    except ValueError:
        answer = {"error": body.decode("utf-8", "replace")}
    return answer


async def _request(host: str, port: int, method: str, target: str, *,
                   extra: list[tuple[str, str]] | None = None,
                   body: tuple[Path, int, int, Progress | None] | None = None
                   ) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; *body*: (file, from, to, progress) streamed."""
    length = 0 if body is None else body[2] - body[1]
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(conn.send(h11.Request(method=method, target=target, headers=[
            ("host", f"{host}:{port}"), ("content-length", str(length)),
            ("content-type", "application/octet-stream"), ("connection", "close"),
            *(extra or [])])))
        try:
            async with trio.open_nursery() as nursery:
                if body is None:
                    await stream.send_all(conn.send(h11.EndOfMessage()))
                else:
                    nursery.start_soon(_send_body, stream, conn, *body)
                answer = await _response(stream, conn)
                nursery.cancel_scope.cancel()  # answered: whatever is left unsent is moot
        except ExceptionGroup as group:  # one broken connection, as a plain error
            broken, rest = group.split(_BROKEN)
            if rest is not None or broken is None:
                raise
            raise ConnectionError(f"connection broken: {broken.exceptions[0]}") from group
    return answer


async def _send_body(stream: trio.SocketStream, conn: h11.Connection, path: Path, start: int,
                     size: int, on_progress: Progress | None) -> None:
    sent = start
    try:
        async with await trio.open_file(path, "rb") as f:
            await f.seek(start)
            while chunk := await f.read(_CHUNK):
                await stream.send_all(conn.send(h11.Data(data=chunk)))
                sent += len(chunk)
                if on_progress is not None:
                    on_progress(sent, size)
        await stream.send_all(conn.send(h11.EndOfMessage()))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the server answered early and closed (or the connection broke): see _response


async def _response(stream: trio.SocketStream, conn: h11.Connection
                    ) -> tuple[int, dict[str, str], bytes]:
    status, headers, body = 0, {}, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data and status == 0:
                raise ConnectionError("the server closed the connection without an answer")
            conn.receive_data(data)
        elif isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, headers, body


class ProgressBar:
    """``[#####.....]  45%  512/1130 MB  123 MB/s`` on stderr, redrawn at most 10x/s."""

    def __init__(self, width: int = 30) -> None:
        self.width, self.start, self.last = width, time.monotonic(), 0.0

    def __call__(self, sent: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.1 and sent < total:
            return
        self.last = now
        share = sent / total if total else 1.0
        done = int(share * self.width)
        rate = sent / max(now - self.start, 1e-9) / 1e6
        sys.stderr.write(f"\r[{'#' * done}{'.' * (self.width - done)}] {share:4.0%}  "
                         f"{sent / 1e6:.0f}/{total / 1e6:.0f} MB  {rate:.0f} MB/s")
        if sent >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()
