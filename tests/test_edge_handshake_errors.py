"""The door against connections that go wrong before the WebSocket is open: a malformed
upgrade request gets HTTP 400 with its reason, a connection reset before it is read
just ends, a ``zstd_dict`` that is no number means no dictionary, and a bug met before
a connection is served ends that connection only; none of them stops the server or
touches a device already streaming."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h11
import pytest
import trio
import trio.testing
from httpclient import request
from trio_websocket import WebSocketConnection

import protocol as P
from vital_actors.clients import connect, receive, send
from vital_actors.edge import door
from vital_actors.graph import Server
from vital_actors.sdk import open_connection

HELLO = P.Hello("steady", 250.0, ("I",), "int16", (200.0,), (0.0,))
KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
VERSION = b"Sec-WebSocket-Version: 13\r\n"
UPGRADE = b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
PROTOCOL = b"Sec-WebSocket-Protocol: vital.v1.msgpack\r\n"
ZSTD = b"Sec-WebSocket-Protocol: vital.v1.msgpack+zstd\r\n"


@asynccontextmanager
async def _streaming(server: Server) -> AsyncIterator[WebSocketConnection]:
    async with connect(f"ws://127.0.0.1:{server.port}", P.INGEST_PATH) as device:
        await device.send_message(P.encode(HELLO))
        assert await receive(device) == P.Welcome("steady", 0)
        yield device


async def _frame(device: WebSocketConnection, seq: int) -> None:
    await device.send_message(P.encode(P.Samples(seq, 1, b"\x01\x00")))
    assert await receive(device) == P.Ack(seq)


@pytest.mark.parametrize(("head", "why"), [
    (b"GET /v1/ingest HTTP/1.1\r\nHost: x\r\n" + UPGRADE + VERSION + PROTOCOL,
     b"Sec-WebSocket-Key"),
    (b"GET /v1/ingest HTTP/1.1\r\nHost: x\r\n" + UPGRADE + KEY + PROTOCOL,
     b"Sec-WebSocket-Version"),
    (b"GET /v1/ingest HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n" + KEY + VERSION + PROTOCOL,
     b"Connection: Upgrade"),
    (b"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n" + UPGRADE + KEY + VERSION
     + PROTOCOL, b"GET"),
    (b"GET /v1/ingest HTTP/1.1\r\nHost: \xff\r\n" + UPGRADE + KEY + VERSION + PROTOCOL,
     b"ASCII"),
    (b"GET /v1/ingest HTTP/1.1\r\nHost: x\r\n" + UPGRADE + KEY + VERSION
     + b"Sec-WebSocket-Protocol: vital.v1.msgpack, \xe9\r\n", b"ASCII"),
], ids=["no-key", "no-version", "no-connection-upgrade", "post", "non-ascii-host",
        "non-ascii-subprotocol"])
async def test_a_malformed_upgrade_is_refused_with_400_and_the_server_goes_on(
        server: Server, head: bytes, why: bytes) -> None:
    port = server.port or 0
    async with _streaming(server) as device:
        await _frame(device, 0)
        with trio.fail_after(10):
            status, body, _ = await request(port, "GET", "/", raw=None, head=head + b"\r\n")
        assert status == 400 and why in body, (status, body)
        await _frame(device, 1)  # the device streaming meanwhile did not notice
        async with connect(f"ws://127.0.0.1:{port}", P.SUBSCRIBE_PATH):
            pass  # and the door still opens WebSockets



async def test_a_connection_reset_before_the_door_reads_it_ends_only_itself(
        server: Server) -> None:
    port = server.port or 0
    async with _streaming(server) as device:
        await _frame(device, 0)
        for _ in range(3):
            # Connected in the kernel's backlog and reset (RST, SO_LINGER 0) before the
            # server's task has even accepted it: its peer address is gone by then.
            with socket.create_connection(("127.0.0.1", port)) as gone:
                gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.testing.wait_all_tasks_blocked()
        await _frame(device, 1)
        status, _, _ = await request(port, "GET", "/healthz")
        assert status == 200


async def test_a_zstd_dict_parameter_that_is_no_number_means_no_dictionary(
        server: Server) -> None:
    # "²" is a digit to str.isdigit, but no int: the server compresses without a dictionary.
    async with _streaming(server) as device, open_connection(
            f"ws://127.0.0.1:{server.port}", f"{P.INGEST_PATH}?zstd_dict=%C2%B2",
            subprotocols=[P.ZSTD_SUBPROTOCOL]) as other:
        assert other.subprotocol == P.ZSTD_SUBPROTOCOL
        await send(other, P.Hello("other", 250.0, ("I",), "int16", (200.0,), (0.0,)))
        assert await receive(other) == P.Welcome("other", 0)  # no zstd_dict in it
        await _frame(device, 0)


async def test_a_bug_before_a_connection_is_served_ends_that_connection_only(
        server: Server, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    port = server.port or 0
    real = door._request

    def broken(head: bytes) -> object:
        if b"/bug" in head:
            raise ValueError("a bug in reading the request")
        return real(head)

    monkeypatch.setattr(door, "_request", broken)
    async with _streaming(server) as device:
        await _frame(device, 0)
        with trio.fail_after(10):
            with pytest.raises((OSError, h11.RemoteProtocolError)):  # closed, no answer
                await request(port, "GET", "/bug")
        await _frame(device, 1)  # the device streaming meanwhile did not notice
        assert (await request(port, "GET", "/healthz"))[0] == 200
    assert "a bug in reading the request" in caplog.text
    assert server.stats.totals.rejected.get("internal-error") == 1
