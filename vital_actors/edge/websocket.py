"""A server-side WebSocket over a trio stream, driven by wsproto (sans-IO).

wsproto does the handshake, parses incoming frames and answers pings and closes.
Outgoing data messages are written as frames we build ourselves
(:func:`protocol.server_frame`), so the broadcaster can frame a message once and
write the same bytes to every subscriber.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import Extension
from wsproto.utilities import RemoteProtocolError as WsprotoRemoteError

from protocol import (
    CloseCode,
    Error,
    MessageAssembler,
    RemoteProtocolError,
    ServerMessage,
    encode,
)

from .codecs import PLAIN, WireCodec
from .deflate import ServerDeflate
from .handshake import NO_COMPRESSION, Compression

__all__ = ["BadUpgrade", "ConnectionClosed", "WebSocket", "accept"]

RECEIVE_SIZE = 65536
ABNORMAL = 1006  # closed without a close frame (RFC 6455 7.1.5); never sent


class ConnectionClosed(Exception):
    """The peer closed the connection (or it broke); ``code`` says how."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed: {code} {reason}".strip())
        self.code = code
        self.reason = reason


class BadUpgrade(Exception):
    """The request is no valid WebSocket upgrade (RFC 6455 4.2.1); the door answers 400."""


class WebSocket:
    """One accepted WebSocket connection.

    Args:
        stream: the transport.
        ws: the wsproto connection, past its handshake.
        path: the request path (``/v1/ingest`` or ``/v1/subscribe``).
        max_message_bytes: larger incoming messages close the connection with 1009
            (after decompression, when the message was compressed).
        codec: how outgoing messages are framed (negotiated by the handshake).
        inbound: what turns a received message into msgpack (zstd decompression), if
            anything.
        deflate: the permessage-deflate extension, when it was negotiated.
    """

    def __init__(self, stream: trio.abc.Stream, ws: WSConnection, *, path: str,
                 remote: str, max_message_bytes: int, codec: WireCodec = PLAIN,
                 inbound: Callable[[bytes], bytes] | None = None,
                 deflate: ServerDeflate | None = None) -> None:
        self.stream = stream
        self.path = path
        self.remote = remote
        self._ws = ws
        self._assembler = MessageAssembler(max_message_bytes)
        self._send_lock = trio.StrictFIFOLock()
        self.closed: ConnectionClosed | None = None
        self.bytes_in = 0
        #: How outgoing messages are framed on this connection (set by the handshake).
        self.codec: WireCodec = codec
        self.subprotocol = ""
        self._inbound = inbound
        self._deflate = deflate

    async def receive(self) -> bytes:
        """The next whole binary message.

        Raises:
            ConnectionClosed: the peer closed or the transport broke.
            protocol.RemoteProtocolError: a text message (1003), one too big (1009), or
                bytes that are not WebSocket (1002), or compressed data that is invalid
                (1007) or inflates beyond the limit (1009).
        """
        while True:
            for event in self._ws.events():
                payload = await self._handle(event)
                if payload is not None:
                    return payload
            await self._receive_more()

    async def _handle(self, event: object) -> bytes | None:
        match event:
            case BytesMessage():
                payload = self._assembler.feed(bytes(event.data), final=event.message_finished)
                if payload is not None and self._inbound is not None:
                    return self._inbound(payload)
                return payload
            case TextMessage():
                raise RemoteProtocolError("text messages are not supported: send binary "
                                          "msgpack", code=CloseCode.UNSUPPORTED_DATA,
                                          reason="text-message")
            case Ping():
                await self._send_raw(self._ws.send(event.response()))
            case CloseConnection() if self._ws.state is ConnectionState.OPEN:
                raise self._parse_failed(event)  # wsproto's own verdict on bad input
            case CloseConnection():
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    await self._send_raw(self._ws.send(event.response()), quiet=True)
                self.closed = ConnectionClosed(event.code, event.reason or "")
                raise self.closed
        return None

    def _parse_failed(self, event: CloseConnection) -> RemoteProtocolError:
        if self._deflate is not None and self._deflate.error is not None:
            return self._deflate.error
        reasons = {CloseCode.MESSAGE_TOO_BIG: "too-big", CloseCode.INVALID_PAYLOAD:
                   "invalid-payload"}
        known = {int(c) for c in CloseCode}
        code = CloseCode(event.code) if event.code in known else CloseCode.PROTOCOL_ERROR
        return RemoteProtocolError(f"not a valid WebSocket frame: {event.reason}", code=code,
                                   reason=reasons.get(code, "protocol-error"))

    async def _receive_more(self) -> None:
        if self.closed is not None:
            raise self.closed
        try:
            data = await self.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed = ConnectionClosed(ABNORMAL, "transport closed")
            raise self.closed
        self.bytes_in += len(data)
        try:
            self._ws.receive_data(bytes(data))
        except WsprotoRemoteError as exc:
            raise RemoteProtocolError(f"not a valid WebSocket frame: {exc}") from None

    async def send(self, message: ServerMessage) -> None:
        """Encode, frame (with this connection's codec) and send one message.

        The frame is made once the send lock is held, so that a codec with context
        (deflate with context takeover) compresses in the order frames go out.
        """
        payload = encode(message)
        await self._write(lambda: self.codec.frame(message, payload))

    async def send_many(self, messages: Sequence[ServerMessage]) -> None:
        """Like :meth:`send` for several messages, in order, in one socket write."""
        payloads = [encode(m) for m in messages]
        await self._write(lambda: b"".join(
            self.codec.frame(m, p) for m, p in zip(messages, payloads, strict=True)))

    async def send_frame(self, frame: bytes) -> None:
        """Send bytes already framed by :func:`protocol.server_frame`."""
        await self._send_raw(frame)

    async def _send_raw(self, data: bytes, *, quiet: bool = False) -> None:
        await self._write(lambda: data, quiet=quiet)

    async def _write(self, make: Callable[[], bytes], *, quiet: bool = False) -> None:
        lock = self._send_lock
        try:
            if lock.locked():  # another write is in progress: wait for it, in order
                async with lock:
                    await self.stream.send_all(make())
            else:
                # The usual case, one writer: take the lock without the scheduling round
                # trip of ``async with`` (send_all checkpoints anyway); that round trip
                # per message was ~5 % of the server's CPU at 200 devices.
                lock.acquire_nowait()
                try:
                    await self.stream.send_all(make())
                finally:
                    lock.release()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if not quiet:
                self.closed = self.closed or ConnectionClosed(ABNORMAL, "transport broke")
                raise self.closed from None

    async def fail(self, code: int, reason: str, message: str) -> None:
        """Send an ``error`` message, then close with *code*: the way bad input ends.
        Closed even when cancelled meanwhile (the server stopping): the error may not go
        out, the close does."""
        try:
            if self.closed is None:
                with trio.move_on_after(1):
                    with contextlib.suppress(ConnectionClosed):
                        await self.send(Error(reason, message))
        finally:
            await self.close(code, message)

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "",
                    *, patience: float = 2.0) -> None:
        """Close cleanly: send a close frame, wait up to *patience* s for the peer's reply."""
        with trio.CancelScope(shield=True), trio.move_on_after(patience):
            if self._ws.state is ConnectionState.OPEN:
                # The close reason is limited to 123 bytes of UTF-8 (RFC 6455 5.5).
                short = reason.encode()[:123].decode(errors="ignore")
                await self._send_raw(self._ws.send(CloseConnection(code, short)), quiet=True)
                try:
                    while self.closed is None:
                        await self.receive()
                except ConnectionClosed:
                    pass
                except RemoteProtocolError:
                    await self._discard_input()
        with trio.CancelScope(shield=True):
            await self.stream.aclose()

    async def _discard_input(self) -> None:
        """Read and drop what the peer still sends until it closes: closing a socket with
        unread input makes the kernel reset the connection, and the peer could lose the
        ``error`` and close frame already sent to it."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while await self.stream.receive_some(RECEIVE_SIZE):
                pass


async def accept(stream: trio.abc.Stream, head: bytes, *, subprotocols: tuple[str, ...],
                 remote: str, max_message_bytes: int,
                 compression: Compression = NO_COMPRESSION) -> WebSocket | None:
    """Complete the server handshake for the request in *head* (and any bytes after it).

    The first of the client's subprotocols that is in *subprotocols* wins; *compression*
    decides the codec for it and whether permessage-deflate is accepted (see
    :mod:`.handshake`). Returns None after refusing the handshake with HTTP 400 when the
    client offers none of *subprotocols*.

    Raises:
        BadUpgrade: the request lacks what an upgrade needs, or has non-ASCII headers.
    """
    ws = WSConnection(ConnectionType.SERVER)
    try:
        ws.receive_data(head)
    except WsprotoRemoteError as exc:
        raise BadUpgrade(f"not a WebSocket upgrade: {exc}") from None
    except UnicodeError:  # wsproto decodes Host and the Sec-WebSocket-* lists as ASCII
        raise BadUpgrade("a WebSocket upgrade's headers must be ASCII") from None
    request = next((e for e in ws.events() if isinstance(e, Request)), None)
    if request is None:
        raise BadUpgrade("not a WebSocket upgrade")
    chosen = next((p for p in request.subprotocols if p in subprotocols), None)
    if chosen is None:
        body = (f"no supported subprotocol: offer one of {', '.join(subprotocols)} in "
                f"Sec-WebSocket-Protocol (offered: {request.subprotocols or 'none'})\n").encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        reply = ws.send(RejectConnection(status_code=400, headers=headers, has_body=True))
        reply += ws.send(RejectData(data=body))
        await stream.send_all(reply)
        await stream.aclose()
        return None
    agreement = compression.agree(chosen, request.target, max_message_bytes=max_message_bytes)
    extensions: list[Extension] = [agreement.deflate] if agreement.deflate else []
    await stream.send_all(ws.send(AcceptConnection(subprotocol=chosen, extensions=extensions)))
    agreement = agreement.settle()
    socket = WebSocket(stream, ws, path=request.target.split("?")[0], remote=remote,
                       max_message_bytes=max_message_bytes, codec=agreement.codec,
                       inbound=agreement.inbound, deflate=agreement.deflate)
    socket.subprotocol = chosen
    return socket
