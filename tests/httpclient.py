"""A tiny HTTP/1.1 client on trio + h11, for tests against a real server."""

from __future__ import annotations

import json
from typing import Any

import h11
import trio


async def request(port: int, method: str, path: str, body: Any = None,
                  *, raw: bytes | None = None,
                  head: bytes | None = None) -> tuple[int, bytes, dict[str, str]]:
    """Send one request to 127.0.0.1:*port*; return (status, body, headers).

    *head*, when given, is sent verbatim instead of building the request.
    """
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    headers = [("host", f"127.0.0.1:{port}"), ("connection", "close"),
               ("content-length", str(len(data)))]
    if body is not None:
        headers.append(("content-type", "application/json"))
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = h11.Request(method=method, target=path, headers=headers)
        if head is None:
            await stream.send_all(conn.send(request))
            await stream.send_all(conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
        else:
            conn.send(request)  # h11 must believe it sent a request to read the reply
            conn.send(h11.EndOfMessage())
            await stream.send_all(head)
        return await read_response(conn, stream)


async def read_response(conn: h11.Connection, stream: trio.SocketStream
                        ) -> tuple[int, bytes, dict[str, str]]:
    """Read the answer to the request *conn* sent on *stream*: (status, body, headers)."""
    status, out, got = 0, b"", {}
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
            got = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            out += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, out, got


async def post_chunked(port: int, path: str, data: bytes, size: int = 65536
                       ) -> tuple[int, Any]:
    """POST *data* with Transfer-Encoding: chunked; return (status, JSON body)."""
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(conn.send(h11.Request(method="POST", target=path, headers=[
            ("host", "127.0.0.1"), ("transfer-encoding", "chunked"),
            ("connection", "close")])))
        for i in range(0, len(data), size):
            await stream.send_all(conn.send(h11.Data(data=data[i:i + size])))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        status, body, _ = await read_response(conn, stream)
    return status, json.loads(body)


async def get_json(port: int, path: str) -> Any:
    status, body, _ = await request(port, "GET", path)
    assert status == 200, (status, body)
    return json.loads(body)
