"""A subscriber client that comes back: reconnect with backoff, subscribe again.

::

    async with open_subscriber("ws://127.0.0.1:8080", ["stream/101/raw"],
                               token=token) as messages:
        async for message in messages:    # StreamSamples and Event
            ...

Messages sent while it was away are missed (subscriber recovery with ``since`` is not
in protocol v1 yet); ``status`` events on the (client-side) topic ``client``, with
``state: "disconnected"`` and ``"reconnected"``, mark each place where that may be.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from protocol import (
    SUBSCRIBE_PATH,
    Error,
    Event,
    Priority,
    ServerMessage,
    Subscribe,
    encode,
)

from ._backoff import Backoff
from ._connection import ENDINGS, FatalError, is_fatal, open_connection, receive, unwrapped

__all__ = ["open_subscriber", "run_subscriber_client"]


async def run_subscriber_client(
    url: str,
    topics: Sequence[str],
    outbox: trio.MemorySendChannel[ServerMessage],
    *,
    token: str | None = None,
    backoff: Backoff | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Deliver the messages of *topics* to *outbox*, reconnecting until cancelled.

    Closes *outbox* on return. Raises :class:`FatalError` when the server refuses for
    good (a bad token, topics outside it).
    """
    backoff = backoff or Backoff()
    state = _State()
    with outbox:
        task_status.started()
        delays = backoff.delays()
        while True:
            try:
                with unwrapped():
                    await _session(url, topics, outbox, token, state)
            except ENDINGS as exc:
                if is_fatal(exc, state.last_error):
                    raise FatalError(state.last_error or str(exc)) from exc
            if state.connected:
                state.connected = False
                await outbox.send(Event("status", "client", Priority.NORMAL,
                                        {"state": "disconnected"}))
            if state.delivered:
                delays = backoff.delays()  # it worked for a while: start over
            state.delivered = False
            await trio.sleep(next(delays))


class _State:
    def __init__(self) -> None:
        self.connections = 0
        self.connected = False
        self.delivered = False
        self.last_error: str | None = None


async def _session(url: str, topics: Sequence[str],
                   outbox: trio.MemorySendChannel[ServerMessage], token: str | None,
                   state: _State) -> None:
    async with open_connection(url, SUBSCRIBE_PATH, token=token) as ws:
        await ws.send_message(encode(Subscribe(tuple(topics))))
        state.connections += 1
        state.connected = True
        if state.connections > 1:
            await outbox.send(Event("status", "client", Priority.NORMAL,
                                    {"state": "reconnected"}))
        while True:
            message = await receive(ws)
            if isinstance(message, Error):
                state.last_error = message.code
            state.delivered = True
            await outbox.send(message)


@asynccontextmanager
async def open_subscriber(url: str, topics: Sequence[str], *, token: str | None = None,
                          buffer: int = 1000, backoff: Backoff | None = None
                          ) -> AsyncIterator[trio.MemoryReceiveChannel[ServerMessage]]:
    """The messages of *topics*, from a subscriber that reconnects while this is open."""
    tx, rx = trio.open_memory_channel[ServerMessage](buffer)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_subscriber_client(
            url, topics, tx, token=token, backoff=backoff, task_status=task_status))
        with rx:
            yield rx
        nursery.cancel_scope.cancel()
