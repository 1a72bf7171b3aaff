"""The front door: one public port for the WebSocket paths and the HTTP API.

It reads each connection's request head. A WebSocket upgrade on a streaming path is
served here (wsproto, no ASGI in between); anything else is spliced, byte for byte, to
the HTTP API's hypercorn on a private unix socket.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial

import h11
import trio

from protocol import CloseCode

from ..auth import ANONYMOUS, GRANT, Gate, Refusal
from ..stats import Stats
from .handshake import NO_COMPRESSION, Compression
from .websocket import BadUpgrade, ConnectionClosed, WebSocket, accept

__all__ = ["Route", "read_head", "serve_door", "splice"]

Route = Callable[[WebSocket], Awaitable[None]]
INTERNAL_REASON = "internal-error"
_log = logging.getLogger(__name__)


class _BadHead(Exception):
    pass


async def read_head(stream: trio.abc.Stream, *, limit: int) -> bytes:
    """Read until the end of the request head (``\\r\\n\\r\\n``); the bytes so far."""
    head = b""
    while b"\r\n\r\n" not in head:
        if len(head) > limit:
            raise _BadHead(f"request head over {limit} bytes")
        data = await stream.receive_some(4096)
        if not data:
            raise _BadHead("connection closed before the request head ended")
        head += data
    return head


def _path(request: h11.Request | None) -> str | None:
    return None if request is None else request.target.decode("ascii", "replace").split("?")[0]


def _request(head: bytes) -> h11.Request:
    """The request whose head is *head*."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    event = conn.next_event()
    if not isinstance(event, h11.Request):
        raise _BadHead("not an HTTP/1.1 request")
    return event


def _is_upgrade(request: h11.Request) -> bool:
    return b"websocket" in {v.lower() for k, v in request.headers if k == b"upgrade"}


def _wants_close(request: h11.Request) -> bool:
    """Whether the client asked for the connection to end after this request's answer."""
    tokens = {t.strip().lower() for k, v in request.headers if k == b"connection"
              for t in v.split(b",")}
    return b"close" in tokens or (request.http_version == b"1.0"
                                  and b"keep-alive" not in tokens)


async def splice(client: trio.abc.Stream, head: bytes, upstream_path: str,
                 request: h11.Request | None = None) -> None:
    """Relay *client* to the unix socket at *upstream_path*, starting with *head*.

    When *request* asked to close (``connection: close``, or HTTP/1.0), the answer is
    followed with h11 and the connection ends after it: hypercorn answers
    ``Connection: close`` but then leaves the connection open (pgjones/hypercorn#330),
    so a client reading to EOF would wait forever.
    """
    try:
        upstream = await trio.open_unix_socket(upstream_path)
    except OSError:  # no hypercorn behind the socket: stopping, or being started again
        await _refuse(client, 503, "the HTTP API is not running; try again")
        return
    async with upstream, client, trio.open_nursery() as nursery:
        try:
            await upstream.send_all(head)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # hypercorn went just as we came: the client sees the connection end
        nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
        if request is not None and _wants_close(request):
            nursery.start_soon(_pump_answer, upstream, client, request, nursery.cancel_scope)
        else:
            nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)


async def _pump_answer(src: trio.abc.Stream, dst: trio.abc.Stream, request: h11.Request,
                       scope: trio.CancelScope) -> None:
    """Relay one HTTP answer from *src* to *dst*, then end both directions."""
    tracker = h11.Connection(h11.CLIENT)
    # Only the method shapes the answer (HEAD has no body); the rest just satisfies h11.
    tracker.send(h11.Request(method=request.method, target=request.target,
                             headers=[(b"host", b"door"), (b"content-length", b"0")]))
    done = False
    try:
        while not done and (data := await src.receive_some(65536)):
            await dst.send_all(data)
            tracker.receive_data(bytes(data))
            while (event := tracker.next_event()) is not h11.NEED_DATA:
                if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    done = True
                    break
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        pass
    scope.cancel()  # leaving the splice closes the client: it reads EOF


async def _pump(src: trio.abc.Stream, dst: trio.abc.Stream, scope: trio.CancelScope) -> None:
    try:
        while data := await src.receive_some(65536):
            await dst.send_all(data)
        if isinstance(dst, trio.abc.HalfCloseableStream):
            await dst.send_eof()  # let the other side finish its answer
            return
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()


async def _handle(stream: trio.SocketStream, *, routes: Mapping[str, Route],
                  subprotocols: tuple[str, ...], upstream_path: str, head_limit: int,
                  handshake_timeout: float, max_message_bytes: int,
                  compression: Compression, gate: Gate | None = None,
                  stats: Stats | None = None) -> None:
    peer = _peer(stream)
    if peer is None:
        return
    remote = "{}:{}".format(*peer[:2])
    ws: WebSocket | None = None
    grant = ANONYMOUS
    try:
        with trio.fail_after(handshake_timeout):
            head = await read_head(stream, limit=head_limit)
            request = _request(head)
            target = _path(request) if _is_upgrade(request) else None
            if target is None or target not in routes:
                route = None
            else:
                route = routes[target]
                if gate is not None:
                    admitted = gate.admit(target, request.target.decode("ascii", "replace"),
                                          request.headers)
                    if isinstance(admitted, Refusal):
                        await _refuse(stream, admitted.status, admitted.message)
                        return
                    grant = admitted
                ws = await accept(stream, head, subprotocols=subprotocols, remote=remote,
                                  max_message_bytes=max_message_bytes, compression=compression)
    except BadUpgrade as exc:
        await _refuse(stream, 400, str(exc))
        return
    except (_BadHead, h11.RemoteProtocolError, trio.TooSlowError, trio.BrokenResourceError):
        await _refuse(stream)
        return
    if route is None:
        await splice(stream, head, upstream_path, request)
    elif ws is not None:
        GRANT.set(grant)  # this task (and those it starts) serve the connection
        try:
            await route(ws)
        except ConnectionClosed:
            pass  # the peer went: routes may let this end them
        except Exception:  # a bug serving this connection: it ends, not the server
            _log.exception("serving %s on %s failed", target, remote)
            if stats is not None:
                stats.reject(INTERNAL_REASON)
            await ws.fail(CloseCode.INTERNAL_ERROR, INTERNAL_REASON,
                          "the server failed serving this connection; other connections "
                          "are unaffected, reconnect")


async def _contained(handle: Callable[[trio.SocketStream], Awaitable[None]],
                     stats: Stats | None, stream: trio.SocketStream) -> None:
    """Serve one connection with *handle*; if that raises, the connection ends, not the
    server (the handlers run in the server's nursery: an exception there would end
    every device and subscriber). However it ends, cancelled too, its socket is closed
    here: left to the collector, a socket that a traceback holds stays open, and its
    peer waits on a dead connection."""
    try:
        await handle(stream)
    except Exception:
        _log.exception("a connection failed before it was served; it is closed")
        if stats is not None:
            stats.reject(INTERNAL_REASON)
    finally:
        await trio.aclose_forcefully(stream)


async def _gated(gate: Gate, handle: Callable[[trio.SocketStream], Awaitable[None]],
                 stream: trio.SocketStream) -> None:
    """Count the connection against its address's cap while *handle* serves it."""
    peer = _peer(stream)
    if peer is None:
        return
    address = str(peer[0])
    refused = gate.enter(address)
    if refused is not None:
        await _refuse(stream, refused.status, refused.message)
        return
    try:
        await handle(stream)
    finally:
        gate.leave(address)


def _peer(stream: trio.SocketStream) -> tuple[object, ...] | None:
    """The peer's address; None when it reset the connection before we got to ask
    (``getpeername`` fails with ENOTCONN; :func:`_contained` closes the stream)."""
    try:
        return tuple(stream.socket.getpeername())
    except OSError:
        return None


_STATUS = {400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
           429: b"Too Many Requests", 503: b"Service Unavailable"}


async def _refuse(stream: trio.abc.Stream, status: int = 400, message: str = "") -> None:
    body = (message + "\n").encode() if message else b""
    with trio.move_on_after(1):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(b"HTTP/1.1 %d %s\r\nconnection: close\r\n"
                                  b"content-type: text/plain\r\ncontent-length: %d\r\n\r\n%s"
                                  % (status, _STATUS.get(status, b"Refused"), len(body), body))
    await stream.aclose()


async def serve_door(
    *,
    host: str,
    port: int,
    routes: Mapping[str, Route],
    subprotocols: tuple[str, ...],
    upstream_path: str,
    head_limit: int,
    handshake_timeout: float,
    max_message_bytes: int,
    handler_nursery: trio.Nursery,
    compression: Compression = NO_COMPRESSION,
    gate: Gate | None = None,
    stats: Stats | None = None,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections on *host*:*port*; started with the port actually bound.

    With *reuse_port*, several processes listen on the same port (SO_REUSEPORT) and the
    kernel spreads new connections over them (``serve --workers N``).

    With a *gate*, each connection first passes its per-address cap, and each WebSocket
    upgrade its Origin and token check (refused with HTTP 429 / 403 / 401 before any
    upgrade); the route then runs with the token's grant in ``auth.GRANT``.

    A route that raises (a bug, not bad input: that has its own close codes) ends only
    its connection, with an ``error`` ``internal-error`` and close code 1011, logged and
    counted in *stats*; an HTTP request while hypercorn is not there is answered 503.
    A bug before the route (in the handshake, the gate or the splice) also ends only
    its connection, closed without an answer, logged and counted the same way.
    """
    handler = partial(_handle, routes=routes, subprotocols=subprotocols,
                      upstream_path=upstream_path, head_limit=head_limit,
                      handshake_timeout=handshake_timeout, max_message_bytes=max_message_bytes,
                      compression=compression, gate=gate, stats=stats)
    if gate is not None:
        handler = partial(_gated, gate, handler)
    handler = partial(_contained, handler, stats)
    listeners = (await _reuse_port_listeners(host, port) if reuse_port
                 else await trio.open_tcp_listeners(port, host=host))
    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, handler, listeners,
                                   handler_nursery=handler_nursery))
        task_status.started(bound)


async def _reuse_port_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """One listener on *host*:*port* that other processes may bind too."""
    info = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM,
                                         flags=trio.socket.AI_PASSIVE)
    family, kind, proto, _, address = info[0]
    sock = trio.socket.socket(family, kind, proto)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
        await sock.bind(address)
        sock.listen(4096)
    except OSError:
        sock.close()
        raise
    return [trio.SocketListener(sock)]
