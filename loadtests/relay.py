"""A bare relay written only with trio-websocket: the naive baseline of the load tests.

It speaks just enough of protocol v1 for the harness's clients: a device's ``hello``
gets a ``welcome``; each later message is forwarded, as the same bytes, to every
subscriber of ``stream/<id>/raw`` and acknowledged; a ``subscribe`` gets the same
``status`` event on ``subscriptions`` as the real server sends. No validation, no
filtering, no buffering of its own: a slow subscriber slows its device down.

    python -m loadtests.relay --port 8090
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from typing import Any, cast

import msgpack
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from protocol import (
    INGEST_PATH,
    SUBPROTOCOL,
    SUBSCRIBE_PATH,
    Ack,
    Event,
    Priority,
    Welcome,
    encode,
)

__all__ = ["Relay", "main"]

#: Drop a connection that has not finished its handshake by then (port probes, mostly).
HANDSHAKE_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 2.0


def _unpack(payload: bytes | str) -> dict[str, Any]:
    if isinstance(payload, str):
        raise ValueError("protocol v1 messages are binary")
    return cast(dict[str, Any], msgpack.unpackb(payload, raw=False))


class Relay:
    """Who listens to which topic, and the two connection handlers."""

    def __init__(self) -> None:
        self.topics: dict[str, set[WebSocketConnection]] = defaultdict(set)

    async def handle(self, request: WebSocketRequest) -> None:
        if SUBPROTOCOL not in request.proposed_subprotocols:
            await request.reject(400, body=b"subprotocol vital.v1.msgpack required")
            return
        if request.path == INGEST_PATH:
            await self._device(await request.accept(subprotocol=SUBPROTOCOL))
        elif request.path == SUBSCRIBE_PATH:
            await self._subscriber(await request.accept(subprotocol=SUBPROTOCOL))
        else:
            await request.reject(404)

    async def _device(self, ws: WebSocketConnection) -> None:
        try:
            stream = str(_unpack(await ws.get_message())["stream"])
            await ws.send_message(encode(Welcome(stream, 0)))
            members = self.topics[f"stream/{stream}/raw"]
            while True:
                payload = await ws.get_message()
                for sub in list(members):
                    await _forward(sub, payload)
                await ws.send_message(encode(Ack(int(_unpack(payload)["seq"]))))
        except ConnectionClosed:
            pass
        except (ValueError, KeyError, TypeError):  # not protocol v1: hang up, stay up
            await ws.aclose(code=1002)

    async def _subscriber(self, ws: WebSocketConnection) -> None:
        mine: set[str] = set()
        try:
            while True:
                message = _unpack(await ws.get_message())
                topics = [str(t) for t in message.get("topics", ())]
                if message.get("type") == "subscribe":
                    mine.update(topics)
                    for topic in topics:
                        self.topics[topic].add(ws)
                elif message.get("type") == "unsubscribe":
                    mine.difference_update(topics)
                    for topic in topics:
                        self.topics[topic].discard(ws)
                await ws.send_message(encode(Event(
                    "status", "subscriptions", Priority.NORMAL,
                    {"state": "subscribed", "topics": sorted(mine)})))
        except ConnectionClosed:
            pass
        except (ValueError, TypeError):
            await ws.aclose(code=1002)
        finally:
            for topic in mine:
                self.topics[topic].discard(ws)


async def _forward(sub: WebSocketConnection, payload: bytes | str) -> None:
    with contextlib.suppress(ConnectionClosed):  # that subscriber's handler cleans up
        await sub.send_message(payload)


async def serve(host: str, port: int, *, max_seconds: float) -> None:
    """Serve until SIGINT or SIGTERM, or for at most *max_seconds*."""
    relay = Relay()
    with trio.move_on_after(max_seconds):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(
                serve_websocket, relay.handle, host, port, None,
                connect_timeout=HANDSHAKE_TIMEOUT_S, disconnect_timeout=CLOSE_TIMEOUT_S))
            print(f"relay listening on ws://{host}:{port}", flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m loadtests.relay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-seconds", type=float, default=900.0,
                   help="stop by itself after this long (default 900)")
    args = p.parse_args(argv)
    trio.run(partial(serve, args.host, args.port, max_seconds=args.max_seconds))
    print("relay stopped", file=sys.stderr)


if __name__ == "__main__":
    main()
