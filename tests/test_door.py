"""The front door on real sockets: a route that raises ends only its own connection
(error ``internal-error``, close 1011), the door and every other connection go on; an
HTTP request with no hypercorn behind the door is answered 503."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import trio
from httpclient import request
from trio_websocket import ConnectionClosed

import protocol as P
from vital_actors.clients import connect, receive
from vital_actors.edge.door import INTERNAL_REASON, serve_door
from vital_actors.edge.websocket import WebSocket
from vital_actors.stats import Stats


async def _boom(ws: WebSocket) -> None:
    await ws.receive()
    raise RuntimeError("a bug in a route")


async def _echo(ws: WebSocket) -> None:
    while True:
        data = await ws.receive()
        await ws.send(P.Ack(len(data)))


async def test_a_route_that_raises_ends_only_its_connection(
        nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stats = Stats()
    port = await nursery.start(partial(
        serve_door, host="127.0.0.1", port=0,
        routes={P.INGEST_PATH: _boom, P.SUBSCRIBE_PATH: _echo},
        subprotocols=(P.SUBPROTOCOL,), upstream_path=str(tmp_path / "nobody.sock"),
        head_limit=8192, handshake_timeout=5.0, max_message_bytes=1 << 20,
        handler_nursery=nursery, stats=stats))
    url = f"ws://127.0.0.1:{port}"
    async with connect(url, P.SUBSCRIBE_PATH) as other:
        await other.send_message(b"12345")
        assert await receive(other) == P.Ack(5)
        async with connect(url, P.INGEST_PATH) as failing:
            await failing.send_message(b"x")
            error = await receive(failing)
            assert isinstance(error, P.Error) and error.code == INTERNAL_REASON, error
            with pytest.raises(ConnectionClosed) as closed:
                await failing.get_message()
            assert closed.value.reason is not None
            assert closed.value.reason.code == P.CloseCode.INTERNAL_ERROR
        assert stats.totals.rejected == {INTERNAL_REASON: 1}
        assert "a bug in a route" in caplog.text
        await other.send_message(b"123")  # the other connection did not notice
        assert await receive(other) == P.Ack(3)
        async with connect(url, P.SUBSCRIBE_PATH) as new:  # the door still accepts
            await new.send_message(b"1")
            assert await receive(new) == P.Ack(1)
    status, body, _ = await request(port, "GET", "/healthz")
    assert status == 503 and b"not running" in body
