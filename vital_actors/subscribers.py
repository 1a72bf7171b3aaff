"""The subscriber actor: one per subscriber connection.

Reads control messages (subscribe, unsubscribe, ping; a ``subscribe.since`` starts
replays, :mod:`vital_actors.recovery`) and drains the connection's lanes
in the hub onto the socket, most urgent first, each message framed with the
connection's codec. The lanes end when the hub lets go: on shutdown (flush what waits,
close 1001) or because the subscriber fell hopelessly behind (evicted: what waits is
stale, so send an ``error`` and close with 1013 at once).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import trio

from protocol import (
    CloseCode,
    Event,
    Ping,
    Pong,
    Priority,
    RemoteProtocolError,
    ServerMessage,
    StreamSamples,
    Subscribe,
    Unsubscribe,
    decode_subscriber,
)

from . import recovery
from .auth import GRANT, authorize_topics
from .broadcast import Hub, Subscriber
from .edge.codecs import Outgoing
from .edge.websocket import ConnectionClosed, WebSocket
from .lanes import Lanes
from .limits import TokenBucket, check_topics
from .settings import LaneSettings, LimitSettings
from .stats import Stats
from .streams import StreamRegistry

__all__ = ["Ending", "Linger", "run_sender", "run_subscriber"]

_ITEMSIZE = {"int16": 2, "float32": 4, "float64": 8}
#: The most messages, and about the most payload bytes, one socket write carries.
WRITE_BATCH = 64
WRITE_BATCH_BYTES = 64 * 1024


class Ending(enum.Enum):
    """How a connection's sender stopped."""

    DRAINED = "drained"  # the lanes closed (shutdown) and all they held was sent
    EVICTED = "evicted"  # the hub evicted the subscriber; what waited is dropped
    CLOSED = "closed"  # the connection closed under it
    ABORTED = "aborted"  # the lanes ended, and a write stayed stuck past the grace period


async def run_subscriber(ws: WebSocket, *, hub: Hub, stats: Stats,
                         registry: StreamRegistry,
                         limits: LimitSettings | None = None) -> None:
    """Serve one subscriber connection until it closes, is evicted, or the hub closes.

    Subscribing to ``streams`` first replays a ``connected`` status for every stream
    connected now, so a dashboard that joins late learns of them.
    """
    sub = hub.add(ws.remote, str(ws.codec.key))
    ending = Ending.CLOSED
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_control, ws, hub, sub, stats, registry, nursery,
                               limits or LimitSettings())
            ending = await run_sender(ws, sub.lanes, stats,
                                      grace_s=hub.settings.flush_grace_s,
                                      linger=Linger.of(hub.settings),
                                      rate=lambda: sub.rate)
            nursery.cancel_scope.cancel()
    finally:
        hub.remove(sub)
    if ws.closed is not None:
        return
    if ending is Ending.EVICTED:
        await ws.fail(CloseCode.TRY_AGAIN_LATER, "too-slow", sub.evicted or "too slow")
    elif ending is Ending.ABORTED:
        # A write was cancelled halfway through a frame: the stream cannot carry another.
        with trio.CancelScope(shield=True):
            await ws.stream.aclose()
    elif ending is Ending.DRAINED:
        await ws.close(CloseCode.GOING_AWAY, "server shutting down")


@dataclass(frozen=True, slots=True)
class Linger:
    """When a sender waits for more before it writes (``lanes.write_linger_*``)."""

    seconds: float = 0.0
    above: float = 0.0  # messages/s (the hub's rate of the subscriber, Subscriber.rate)

    @classmethod
    def of(cls, settings: LaneSettings) -> Linger:
        return cls(settings.write_linger_ms / 1000, settings.write_linger_above)


async def run_sender(ws: WebSocket, lanes: Lanes, stats: Stats, *, grace_s: float,
                     linger: Linger = Linger(), rate: Callable[[], float] = lambda: 0.0
                     ) -> Ending:
    """Write what *lanes* hold onto *ws*, most urgent first, until they end.

    A busy subscriber (*rate*, its messages/s as the hub last measured them, above
    ``linger.above``: a wall on every stream) waits ``linger.seconds`` after the
    message that woke it, unless that one is CRITICAL, so that one write carries what
    arrives meanwhile: the syscall and the wake-up, not the bytes, are what a write
    costs.

    Once the lanes end (eviction or shutdown), the writes still to do get *grace_s*
    seconds: enough for a reading client, so that the ``error`` or the close follows,
    while a client that stopped reading cannot hold the connection (or the server's
    shutdown) forever: then the write is cancelled (:attr:`Ending.ABORTED`).
    """
    totals = stats.totals
    ending = Ending.ABORTED
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_abort_when_stuck, lanes, grace_s, nursery.cancel_scope)
        try:
            while True:
                first = await lanes.take()
                if (linger.seconds and rate() > linger.above and lanes.depth == 0
                        and first.priority is not Priority.CRITICAL and not lanes.closed):
                    await trio.sleep(linger.seconds)
                batch = _batch(first, lanes)
                frames = [out.frame_for(ws.codec) for out in batch]
                await ws.send_frame(b"".join(frames))  # one write for what waits
                for out, frame in zip(batch, frames, strict=True):
                    lanes.mark_sent(out)
                    totals.bytes_out += len(frame)
                    totals.samples_out += _samples(out.message)
                totals.messages_out += len(batch)
        except trio.EndOfChannel:
            ending = Ending.DRAINED if lanes.evicted is None else Ending.EVICTED
        except ConnectionClosed:
            ending = Ending.CLOSED
        nursery.cancel_scope.cancel()
    return ending


def _batch(first: Outgoing, lanes: Lanes) -> list[Outgoing]:
    """*first* and whatever else waits now, most urgent first, up to a bounded size:
    a subscriber that is behind gets one socket write for many messages, not one each
    (the syscall and the scheduling, not the bytes, are what a write costs)."""
    batch, size = [first], len(first.payload)
    while len(batch) < WRITE_BATCH and size < WRITE_BATCH_BYTES:
        try:
            out = lanes.take_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            break  # an ended lane set raises again on the next take()
        batch.append(out)
        size += len(out.payload)
    return batch


async def _abort_when_stuck(lanes: Lanes, grace_s: float, scope: trio.CancelScope) -> None:
    await lanes.ended.wait()
    await trio.sleep(grace_s)
    scope.cancel()


def _samples(message: ServerMessage) -> int:
    if isinstance(message, StreamSamples):
        return len(message.data) // (len(message.channels) * _ITEMSIZE[message.dtype])
    return 0


async def _read_control(ws: WebSocket, hub: Hub, sub: Subscriber, stats: Stats,
                        registry: StreamRegistry, nursery: trio.Nursery,
                        limits: LimitSettings) -> None:
    bucket = TokenBucket(limits.messages_per_s, limits.message_burst)  # as for devices
    try:
        while True:
            payload = await ws.receive()
            bucket.check(trio.current_time())
            message = decode_subscriber(payload)
            stats.totals.messages_in += 1
            replays: list[recovery.Replay] = []
            reply: dict[str, object] = {}
            match message:
                case Subscribe(topics, since):
                    authorize_topics(GRANT.get(), topics)  # issue 6: 1008 outside the token
                    check_topics(sub.topics, topics, limits.max_topics)
                    new_to_streams = "streams" in topics and "streams" not in sub.topics
                    reply, replays = await recovery.subscribe(hub, sub, topics, since)
                    if new_to_streams:
                        await _snapshot(ws, registry)
                case Unsubscribe(topics):
                    hub.unsubscribe(sub, topics)
                case Ping(t):
                    await ws.send(Pong(t))
                    continue
            await ws.send(Event("status", "subscriptions", Priority.NORMAL,
                                {"state": "subscribed", "topics": sorted(sub.topics), **reply}))
            for replay in replays:  # after the reply: it tells where they start
                nursery.start_soon(replay)
    except RemoteProtocolError as exc:
        stats.reject(exc.reason)
        await ws.fail(exc.code, exc.reason, exc.message)
    except ConnectionClosed:
        pass
    nursery.cancel_scope.cancel()


async def _snapshot(ws: WebSocket, registry: StreamRegistry) -> None:
    for info in list(registry):  # devices come and go while a send waits
        if info.connected:
            await ws.send(Event("status", "streams", Priority.NORMAL, {
                "stream": info.id, "state": "connected", "fs": info.fs,
                "channels": list(info.channels), "run": info.run, "next_seq": info.next_seq,
                "device": info.hello.device, "snapshot": True,
            }))
