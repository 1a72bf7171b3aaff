"""The load generator's lean WebSocket client (loadtests/lean.py) and its pacer
(loadtests/pacing.py) over real loopback sockets, with trio-websocket as the server."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial

import numpy as np
import pytest
import trio
import trio.testing
import trio_websocket
from trio_websocket import WebSocketRequest, serve_websocket

from loadtests import lean
from loadtests.pacing import Pacer
from loadtests.wsframes import client_frames

SUBPROTOCOL = "vital.v1.msgpack"
Handler = Callable[[WebSocketRequest], Awaitable[None]]


async def _serve(nursery: trio.Nursery, handler: Handler) -> str:
    server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, None,
                                         max_message_size=2**21))
    return f"ws://127.0.0.1:{server.port}/v1/ingest"


async def test_pings_are_answered_messages_echoed_and_a_server_close_reported() -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept(subprotocol=SUBPROTOCOL)
        with trio.fail_after(5):
            await ws.ping(b"are you there")  # returns only once the pong came back
        await ws.send_message(await ws.get_message())
        await ws.aclose(code=1008, reason="stream-busy")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await _serve(nursery, handler)
            ws = await lean.connect(url, SUBPROTOCOL)
            await ws.send_message(b"\x81\xa4type\xa4ping")
            assert await ws.get_message() == b"\x81\xa4type\xa4ping"
            with pytest.raises(lean.ConnectionClosed) as info:
                await ws.receive_messages()
            assert (info.value.code, info.value.reason) == (1008, "stream-busy")
            await ws.aclose()
            nursery.cancel_scope.cancel()


async def test_aclose_does_the_closing_handshake() -> None:
    seen: list[int] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept(subprotocol=SUBPROTOCOL)
        try:
            await ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            assert exc.reason is not None
            seen.append(exc.reason.code)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await _serve(nursery, handler)
            async with lean.open_lean(url, SUBPROTOCOL) as ws:
                pass
            assert ws.closed is not None and ws.closed.code == 1000  # the server's answer
            with pytest.raises(lean.ConnectionClosed):
                await ws.send_message(b"late")
            await trio.testing.wait_all_tasks_blocked()
            assert seen == [1000]
            nursery.cancel_scope.cancel()


async def _refuse(request: WebSocketRequest) -> None:
    await request.reject(404, body=b"no such path")


async def _no_subprotocol(request: WebSocketRequest) -> None:
    ws = await request.accept()
    await ws.get_message()


@pytest.mark.parametrize(("handler", "why"), [(_refuse, "HTTP 404 no such path"),
                                              (_no_subprotocol, "subprotocol")])
async def test_a_refused_or_wrong_upgrade_is_a_handshake_error_that_says_why(
        handler: Handler, why: str) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await _serve(nursery, handler)
            with pytest.raises(lean.HandshakeError, match=why):
                await lean.connect(url, SUBPROTOCOL)
            nursery.cancel_scope.cancel()


async def test_pacer_sends_everything_in_order_through_backpressure() -> None:
    """A server that stops reading fills the socket: the pacer hands the rest to the
    device's own task, which sends it once the server reads again, in order."""
    count, size = 24, 2**20
    payloads = [bytes([k]) * size for k in range(count)]
    got: list[bytes | str] = []
    release, all_read, paced, drained = trio.Event(), trio.Event(), trio.Event(), trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept(subprotocol=SUBPROTOCOL)
        await release.wait()
        for _ in range(count):
            got.append(await ws.get_message())
        all_read.set()

    sent = np.full((1, count), np.nan)
    pacer = Pacer([client_frames(payloads)], sent, frame_s=0.001)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await _serve(nursery, handler)
            async with lean.open_lean(url, SUBPROTOCOL) as ws:
                pacer.join(0, ws)

                async def pace() -> None:
                    await pacer.run([trio.current_time()])
                    paced.set()

                async def drain() -> None:
                    await pacer.drain(0)
                    drained.set()

                nursery.start_soon(pace)
                nursery.start_soon(drain)
                await paced.wait()  # every frame handed out, without waiting ...
                await trio.testing.wait_all_tasks_blocked()
                assert not drained.is_set()  # ... but not all written: the socket is full
                released_at = time.perf_counter()
                release.set()
                await drained.wait()
                await all_read.wait()
            nursery.cancel_scope.cancel()
    assert got == payloads
    assert np.all(np.diff(sent[0]) > 0)
    assert sent[0, -1] > released_at  # the last frames waited for the server to read
