"""The upload client behind ``vital-actors upload FILE``: streams a file to
POST /api/v1/recordings (Content-Length, 1 MiB at a time) while reading the answer,
so a refusal that comes before the body ends (413, 415) is shown, not a broken pipe.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import h11
import trio

__all__ = ["ProgressBar", "upload_file"]

_CHUNK = 1 << 20


async def upload_file(url: str, path: Path, *, query: dict[str, str],
                      on_progress: Callable[[int, int], None] | None = None
                      ) -> tuple[int, dict[str, Any]]:
    """POST *path* to *url* (``http://host:port``); return (status, JSON answer)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    size = (await trio.Path(path).stat()).st_size
    target = "/api/v1/recordings" + (f"?{urlencode(query)}" if query else "")
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(conn.send(h11.Request(method="POST", target=target, headers=[
            ("host", f"{host}:{port}"), ("content-length", str(size)),
            ("content-type", "application/octet-stream"), ("connection", "close")])))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_send_body, stream, conn, path, size, on_progress)
            status, body = await _response(stream, conn)
            nursery.cancel_scope.cancel()  # answered: whatever is left unsent is moot
    try:
        answer: dict[str, Any] = json.loads(body) if body else {}
    except ValueError:
        answer = {"error": body.decode("utf-8", "replace")}
    return status, answer


async def _send_body(stream: trio.SocketStream, conn: h11.Connection, path: Path, size: int,
                     on_progress: Callable[[int, int], None] | None) -> None:
    sent = 0
    try:
        async with await trio.open_file(path, "rb") as f:
            while chunk := await f.read(_CHUNK):
                await stream.send_all(conn.send(h11.Data(data=chunk)))
                sent += len(chunk)
                if on_progress is not None:
                    on_progress(sent, size)
        await stream.send_all(conn.send(h11.EndOfMessage()))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the server answered early and closed; _response has its answer


async def _response(stream: trio.SocketStream, conn: h11.Connection) -> tuple[int, bytes]:
    status, body = 0, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data and status == 0:
                raise ConnectionError("the server closed the connection without an answer")
            conn.receive_data(data)
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, body


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
