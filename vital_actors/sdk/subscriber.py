"""A subscriber client that comes back and recovers: reconnect with backoff, subscribe
again with ``since``, so the server replays what was missed.

::

    async with open_subscriber("ws://127.0.0.1:8080", ["stream/101/raw"],
                               token=token) as messages:
        async for message in messages:    # StreamSamples and Event
            ...

The client tracks each topic's position (``epoch``, ``offset``, docs/protocol.md 4.4)
from the messages it delivers and from the server's replies, and resubscribes after a
reconnect with ``since`` = those positions. The server replays what came after them
and answers (in the ``subscriptions`` status it delivers too) ``recovered: {topic:
true}`` when nothing was lost, or ``false`` with where it resumes from (the server
restarted without its archive, the stream began a new run, or the history is gone).
``status`` events on the (client-side) topic ``client``, with ``state:
"disconnected"`` and ``"reconnected"``, mark each reconnect.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping, Sequence
from contextlib import asynccontextmanager
from functools import partial

import trio

from protocol import (
    COMPACT_SUBPROTOCOL,
    ECG_DICTIONARY_ID,
    SUBPROTOCOL,
    SUBSCRIBE_PATH,
    CompactDecoder,
    Error,
    Event,
    Position,
    Priority,
    ServerMessage,
    StreamSamples,
    Subscribe,
    ZstdCodec,
    ecg_dictionary,
    encode,
    position,
)

from ._backoff import Backoff
from ._connection import open_connection, receive, reconnecting

__all__ = ["Positions", "open_subscriber", "run_subscriber_client"]

Positions = MutableMapping[str, Position]


async def run_subscriber_client(
    url: str,
    topics: Sequence[str],
    outbox: trio.MemorySendChannel[ServerMessage],
    *,
    token: str | None = None,
    backoff: Backoff | None = None,
    positions: Positions | None = None,
    compact: bool = False,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Deliver the messages of *topics* to *outbox*, reconnecting and recovering until
    cancelled.

    Args:
        positions: each topic's position, kept up to date here (pass a dict to see it,
            or one saved earlier to recover from there on the first connection too).
        compact: offer ``vital.v1.compact`` (int16 samples in ~4.6 bits each, with the
            shipped zstd dictionary for the rest), plain msgpack as the fallback.

    Closes *outbox* on return. Raises :class:`FatalError` when the server refuses for
    good (a bad token, topics outside it).
    """
    state = _State(positions if positions is not None else {})

    async def disconnected(_: BaseException) -> None:
        if state.connected:
            state.connected = False
            await outbox.send(Event("status", "client", Priority.NORMAL,
                                    {"state": "disconnected"}))

    with outbox:
        task_status.started()
        await reconnecting(partial(_session, url, topics, outbox, token, state, compact),
                           backoff=backoff or Backoff(), last_error=lambda: state.last_error,
                           worked=lambda: state.delivered, on_down=disconnected)


class _State:
    def __init__(self, positions: Positions) -> None:
        self.connections = 0
        self.connected = False
        self.delivered = False
        self.last_error: str | None = None
        self.positions = positions

    def advance(self, topic: str, pos: Position) -> None:
        """Move *topic*'s position to *pos*: forward within an epoch, or to a new epoch."""
        known = self.positions.get(topic)
        if known is None or known[0] != pos[0] or pos[1] > known[1]:
            self.positions[topic] = pos

    def track(self, message: ServerMessage) -> None:
        """Advance the positions by *message*: the reply to ``subscribe`` (its
        ``positions``), a ``recovery`` status, or a positioned message."""
        if not isinstance(message, Event | StreamSamples):
            return
        if isinstance(message, Event) and message.topic == "subscriptions":
            for topic, (epoch, offset) in message.body.get("positions", {}).items():
                self.advance(topic, (epoch, offset))
            return
        pos = position(message)  # a ``recovery`` status carries where it resumes
        if pos is not None:
            self.advance(message.topic, pos)


async def _session(url: str, topics: Sequence[str],
                   outbox: trio.MemorySendChannel[ServerMessage], token: str | None,
                   state: _State, compact: bool) -> None:
    path, offer = SUBSCRIBE_PATH, [SUBPROTOCOL]
    if compact:
        path, offer = f"{path}?zstd_dict={ECG_DICTIONARY_ID}", [COMPACT_SUBPROTOCOL, *offer]
    state.delivered = False  # nothing yet, on this connection
    async with open_connection(url, path, token=token, subprotocols=offer) as ws:
        decoder = None  # a table per connection: the server starts afresh on each one
        if ws.subprotocol == COMPACT_SUBPROTOCOL:
            decoder = CompactDecoder(zstd=ZstdCodec(dictionary=ecg_dictionary()))
        since = {t: state.positions[t] for t in topics if t in state.positions}
        await ws.send_message(encode(Subscribe(tuple(topics), since)))
        state.connections += 1
        state.connected = True
        if state.connections > 1:
            await outbox.send(Event("status", "client", Priority.NORMAL,
                                    {"state": "reconnected"}))
        while True:
            message = await receive(ws, decoder)
            if isinstance(message, Error):
                state.last_error = message.code
            state.track(message)
            state.delivered = True
            await outbox.send(message)


@asynccontextmanager
async def open_subscriber(url: str, topics: Sequence[str], *, token: str | None = None,
                          buffer: int = 1000, backoff: Backoff | None = None,
                          positions: Positions | None = None, compact: bool = False,
                          ) -> AsyncIterator[trio.MemoryReceiveChannel[ServerMessage]]:
    """The messages of *topics*, from a subscriber that reconnects and recovers while
    this is open (*positions* and *compact* as in :func:`run_subscriber_client`)."""
    tx, rx = trio.open_memory_channel[ServerMessage](buffer)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_subscriber_client(
            url, topics, tx, token=token, backoff=backoff, positions=positions,
            compact=compact, task_status=task_status))
        with rx:
            yield rx
        nursery.cancel_scope.cancel()
