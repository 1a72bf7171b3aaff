"""The subscriber actor: one per subscriber connection.

Reads control messages (subscribe, unsubscribe, ping) and drains the connection's
buffer in the hub onto the socket. The buffer ends when the hub lets go: on shutdown
(close 1001) or because the subscriber fell too far behind (error, close 1013).
"""

from __future__ import annotations

import trio

from protocol import (
    CloseCode,
    Event,
    Ping,
    Pong,
    Priority,
    RemoteProtocolError,
    Subscribe,
    Unsubscribe,
    decode_subscriber,
)

from .broadcast import Hub, Subscriber
from .edge.websocket import ConnectionClosed, WebSocket
from .stats import Stats
from .streams import StreamRegistry

__all__ = ["run_subscriber"]


async def run_subscriber(ws: WebSocket, *, hub: Hub, stats: Stats,
                         registry: StreamRegistry) -> None:
    """Serve one subscriber connection until it closes, is evicted, or the hub closes.

    Subscribing to ``streams`` first replays a ``connected`` status for every stream
    connected now, so a dashboard that joins late learns of them.
    """
    sub, frames = hub.add()
    drained = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_control, ws, hub, sub, stats, registry,
                               nursery.cancel_scope)
            with frames:
                try:
                    async for frame in frames:
                        await ws.send_frame(frame)
                    drained = True
                except ConnectionClosed:
                    pass
            nursery.cancel_scope.cancel()
    finally:
        hub.remove(sub)
    if not drained or ws.closed is not None:
        return
    if sub.evicted is not None:
        await ws.fail(CloseCode.TRY_AGAIN_LATER, "too-slow", sub.evicted)
    else:
        await ws.close(CloseCode.GOING_AWAY, "server shutting down")


async def _read_control(ws: WebSocket, hub: Hub, sub: Subscriber, stats: Stats,
                        registry: StreamRegistry, scope: trio.CancelScope) -> None:
    try:
        while True:
            message = decode_subscriber(await ws.receive())
            stats.totals.messages_in += 1
            match message:
                case Subscribe(topics):
                    new_to_streams = "streams" in topics and "streams" not in sub.topics
                    hub.subscribe(sub, topics)
                    if new_to_streams:
                        await _snapshot(ws, registry)
                case Unsubscribe(topics):
                    hub.unsubscribe(sub, topics)
                case Ping(t):
                    await ws.send(Pong(t))
                    continue
            await ws.send(Event("status", "subscriptions", Priority.NORMAL,
                                {"state": "subscribed", "topics": sorted(sub.topics)}))
    except RemoteProtocolError as exc:
        stats.reject(exc.reason)
        await ws.fail(exc.code, exc.reason, exc.message)
    except ConnectionClosed:
        pass
    scope.cancel()


async def _snapshot(ws: WebSocket, registry: StreamRegistry) -> None:
    for info in registry:
        if info.connected:
            await ws.send(Event("status", "streams", Priority.NORMAL, {
                "stream": info.id, "state": "connected", "fs": info.fs,
                "channels": list(info.channels), "run": info.run, "next_seq": info.next_seq,
                "device": info.hello.device, "snapshot": True,
            }))
