"""One client connection, with a token, the rule for which failures are final, and the
loop that reconnects."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import NoReturn
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from protocol import (
    SUBPROTOCOL,
    CloseCode,
    CompactDecoder,
    RemoteProtocolError,
    ServerMessage,
    decode_server,
)

from ._backoff import Backoff

__all__ = ["ENDINGS", "FATAL_CODES", "FatalError", "is_fatal", "leaves", "open_connection",
           "receive", "reconnecting", "unwrapped"]

#: Close codes that mean the client is at fault: the same bytes would fail again.
FATAL_CODES = frozenset({CloseCode.PROTOCOL_ERROR, CloseCode.UNSUPPORTED_DATA,
                         CloseCode.INVALID_PAYLOAD, CloseCode.MESSAGE_TOO_BIG})
#: ``error.code`` values after which retrying cannot help.
FATAL_REASONS = frozenset({"forbidden", "too-many-channels", "too-many-topics", "fs-out-of-range",
                           "too-many-streams"})


class FatalError(Exception):
    """The server refused in a way that retrying cannot fix (bad token, bad input)."""


#: How a connection ends that a client handles (by reconnecting, or giving up if fatal).
ENDINGS = (OSError, ConnectionClosed, HandshakeError, trio.BrokenResourceError,
           trio.TooSlowError, FatalError)


def leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    """The exceptions of *group*, nested groups opened, in order."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from leaves(exc)
        else:
            yield exc


@contextmanager
def unwrapped(endings: tuple[type[BaseException], ...] = ENDINGS) -> Iterator[None]:
    """Re-raise a nursery's group of connection *endings* as its first one, so callers
    can ``except ENDINGS``; any other group passes unchanged."""
    try:
        yield
    except BaseExceptionGroup as group:
        found = [e for e in leaves(group) if not isinstance(e, trio.Cancelled)]
        if found and all(isinstance(e, endings) for e in found):
            raise found[0] from None
        raise


def is_fatal(exc: BaseException, last_error: str | None) -> bool:
    if isinstance(exc, ConnectionRejected):
        return exc.status_code in (400, 401, 403)
    if isinstance(exc, ConnectionClosed) and exc.reason is not None:
        return exc.reason.code in FATAL_CODES or last_error in FATAL_REASONS
    return False


async def reconnecting(
    session: Callable[[], Awaitable[object]],
    *,
    backoff: Backoff,
    last_error: Callable[[], str | None] = lambda: None,
    worked: Callable[[], bool] = lambda: False,
    on_down: Callable[[BaseException], Awaitable[None]] | None = None,
    endings: tuple[type[BaseException], ...] = ENDINGS,
    fatal: Callable[[BaseException, str | None], bool] = is_fatal,
) -> NoReturn:
    """Run *session* again and again until cancelled: after each one that ends, sleep
    the next of *backoff*'s delays, starting them over after a session that worked.

    Args:
        session: one connection, from connecting to its end. It ends by raising one of
            *endings* (a nursery's group of them counts as its first, see
            :func:`unwrapped`); anything else propagates. A session that returns was
            clean: the delays start over and the next one starts at once.
        last_error: the ``error.code`` the server sent last, if any, asked when a
            session ends.
        worked: asked after a session ends (and after *on_down*): True when it worked
            (it received something), so that the delays start over. Each session
            clears what this reads when it starts.
        on_down: awaited with each ending that is not fatal, before the delay.
        endings: what ends a session (the connection's failures by default).
        fatal: whether an ending is for good, given the ending and ``last_error()``.

    Raises:
        FatalError: on a fatal ending, with ``last_error()`` or else the ending as its
            message and the ending as its cause.
    """
    delays = backoff.delays()
    while True:
        try:
            with unwrapped(endings):
                await session()
        except endings as exc:
            if fatal(exc, last_error()):
                raise FatalError(last_error() or str(exc)) from exc
            ending = exc
        else:
            delays = backoff.delays()  # a clean session: start over, at once
            continue
        if on_down is not None:
            await on_down(ending)
        del ending  # its traceback holds the dead session's frames: not while we sleep
        if worked():
            delays = backoff.delays()  # it worked for a while: start over
        await trio.sleep(next(delays))


@asynccontextmanager
async def open_connection(url: str, path: str, *, token: str | None = None,
                          headers: Sequence[tuple[bytes, bytes]] = (),
                          subprotocols: Sequence[str] = (SUBPROTOCOL,),
                          timeout_s: float = 10.0) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket to *url* (``ws://host:port``) + *path*, offering *subprotocols*
    (protocol v1 by default), with the token (if any) in ``Authorization: Bearer``.

    The TCP stream is ours to close (trio-websocket's own client can leave it open when
    the server closes first). Connecting and the handshake get *timeout_s* seconds
    (``trio.TooSlowError``): a server that accepts but never answers is no server.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    extra = list(headers)
    if token is not None:
        extra.append((b"authorization", b"Bearer " + token.encode()))
    with trio.fail_after(timeout_s):
        stream = await trio.open_tcp_stream(host, port)
    with unwrapped():
        async with stream, trio.open_nursery() as nursery:
            with trio.fail_after(timeout_s):
                ws = await wrap_client_stream(nursery, stream, f"{host}:{port}", path,
                                              subprotocols=list(subprotocols),
                                              extra_headers=extra)
            try:
                yield ws
            finally:
                await ws.aclose()
                nursery.cancel_scope.cancel()


async def receive(ws: WebSocketConnection, decoder: CompactDecoder | None = None
                  ) -> ServerMessage:
    """The next server message; with *decoder*, under ``vital.v1.compact``.

    A compact message that does not decode closes the connection with the error's code
    (1007, 1009) and ends it as broken: a new connection starts a fresh table.
    """
    payload = await ws.get_message()
    if isinstance(payload, str):
        raise FatalError("the server sent a text message")
    if decoder is None:
        return decode_server(payload)
    try:
        return decoder.decode(payload)
    except RemoteProtocolError as exc:
        await ws.aclose(code=int(exc.code), reason=exc.reason)
        raise trio.BrokenResourceError(f"closed with {int(exc.code)}: {exc.message}") from None
