"""A lean WebSocket client connection on a plain trio socket stream: the load
generator's I/O glue around the sans-IO :mod:`loadtests.wsframes`.

No reader task, no message queue between tasks, no per-message framing: frames made
ahead of time go out in one write (:meth:`LeanWebSocket.send_frame`), and
:meth:`LeanWebSocket.receive_messages` returns every message one read from the socket
completed. Pings are answered, a close from the server is answered with a close, and
:meth:`LeanWebSocket.aclose` does the closing handshake (bounded in time).

The connection is a trio socket stream (``trio.open_tcp_stream``, which does the
handshake's I/O); after the handshake the hot path reads and writes its non-blocking
file descriptor directly, parking in ``trio.lowlevel.wait_readable`` /
``wait_writable`` only when the kernel says it would block. ``SocketStream.send_all``
and ``receive_some`` cost several times the system call itself in trio's bookkeeping
(a conflict detector, error translation, and a full reschedule after each call that
did not block); for a load generator that makes tens of thousands of them a second,
that bookkeeping was most of its CPU. A write that the kernel takes whole does not
yield: the callers' own waits (a device's pacing, a reader's ``wait_readable``) are
their checkpoints.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from urllib.parse import urlsplit

import trio

from .wsframes import (
    OP_CLOSE,
    OP_PONG,
    ClientHandshake,
    Close,
    FrameParser,
    HandshakeError,
    Ping,
    Pong,
    ProtocolError,
    Text,
    client_frame,
    close_payload,
)

__all__ = ["ConnectionClosed", "HandshakeError", "LeanWebSocket", "connect", "open_lean"]

RECEIVE_SIZE = 65536
ABNORMAL = 1006  # closed without a close frame (RFC 6455 7.1.5); never sent
UNSUPPORTED_DATA = 1003


#: What a read or write of a connection the peer dropped (or we closed) fails with.
_BROKEN = frozenset((errno.ECONNRESET, errno.EPIPE, errno.EBADF, errno.ENOTCONN,
                     errno.ETIMEDOUT, errno.ECONNABORTED))


class ConnectionClosed(Exception):
    """The connection is closed (by the server, by us, or broken); ``code`` says how."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed: {code} {reason}".strip())
        self.code, self.reason = code, reason


class LeanWebSocket:
    """One open client connection (after :func:`connect`).

    One task may send while another receives; sends are serialised by a lock taken
    without a checkpoint when it is free (the hot path).
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._fd = stream.socket.fileno()
        self._parser = FrameParser()
        self._inbox: list[bytes] = []
        self._send_lock = trio.StrictFIFOLock()
        self._close_sent = False
        self._rest = memoryview(b"")  # the unwritten end of a frame sent without waiting
        self.closed: ConnectionClosed | None = None

    # --- sending ---

    def send_frame_nowait(self, frame: bytes) -> int:
        """Write what the kernel takes of *frame* now, without waiting: the bytes written
        (0: nothing, the connection is busy, full or closed). A frame written in part
        keeps its rest for :meth:`flush` (or the next :meth:`send_frame`), which must
        come before anything else is sent."""
        if self._rest or self._close_sent or self.closed is not None:
            return 0
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            return 0
        try:
            done = os.write(self._fd, frame)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self.closed = ConnectionClosed(ABNORMAL, f"transport broke: {exc}")
            return 0
        finally:
            self._send_lock.release()
        if done < len(frame):
            self._rest = memoryview(frame)[done:]
        return done

    async def send_frame(self, frame: bytes) -> None:
        """Send bytes already framed and masked (:func:`wsframes.client_frames`).

        Raises:
            ConnectionClosed: the connection is closed or broke.
        """
        if self._close_sent or self.closed is not None:
            raise self.closed or ConnectionClosed(ABNORMAL, "closing")
        await self._send(frame)

    async def send_message(self, payload: bytes) -> None:
        """Frame, mask and send one binary message."""
        await self.send_frame(client_frame(payload))

    async def flush(self) -> None:
        """Finish writing a frame :meth:`send_frame_nowait` wrote in part."""
        if self._rest:
            await self._send(b"")

    async def _send(self, data: bytes) -> None:
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            if self._rest:
                rest, self._rest = self._rest, memoryview(b"")
                await self._write(rest, started=True)
            if data:
                await self._write(data)
        except OSError as exc:
            self.closed = self.closed or ConnectionClosed(ABNORMAL, f"transport broke: {exc}")
            raise self.closed from None
        finally:
            self._send_lock.release()

    async def _write(self, data: bytes | memoryview, *, started: bool = False) -> None:
        """Write all of *data*: at once if the kernel takes it, else waiting for room.

        Cancelled with part of a frame written (*started*: before this call), the
        connection cannot go on (nor send a close frame): it is marked closed.
        """
        try:
            done = os.write(self._fd, data)
        except BlockingIOError:
            done = 0
        if done == len(data):
            return
        view = memoryview(data)
        try:
            while done < len(data):
                await trio.lowlevel.wait_writable(self._fd)
                with suppress(BlockingIOError):  # woken, but the room is gone again
                    done += os.write(self._fd, view[done:])
        except BaseException:
            if done or started:
                self._close_sent = True
                self.closed = self.closed or ConnectionClosed(ABNORMAL, "a frame cut short")
            raise

    # --- receiving ---

    async def receive_messages(self) -> list[bytes]:
        """The binary messages that arrived by the next read of the socket (at least one).

        Raises:
            ConnectionClosed: the server closed (its code), the transport broke (1006), or
                the server broke the protocol (we closed with the code that says so).
        """
        while not self._inbox:
            if self.closed is not None:
                raise self.closed
            await self._receive_more()
        batch, self._inbox = self._inbox, []
        return batch

    async def get_message(self) -> bytes:
        """The next binary message (see :meth:`receive_messages`)."""
        while not self._inbox:
            if self.closed is not None:
                raise self.closed
            await self._receive_more()
        return self._inbox.pop(0)

    async def _receive_more(self) -> None:
        try:
            await trio.lowlevel.wait_readable(self._fd)
            data = os.read(self._fd, RECEIVE_SIZE)
        except BlockingIOError:
            return
        except (OSError, trio.ClosedResourceError) as exc:
            if isinstance(exc, OSError) and exc.errno not in _BROKEN:
                raise
            data = b""
        if not data:
            self.closed = self.closed or ConnectionClosed(ABNORMAL, "transport closed")
            return
        await self._take(data)

    async def _take(self, data: bytes) -> None:
        try:
            events = self._parser.feed(data)
        except ProtocolError as exc:
            await self._fail(exc.code, str(exc))
            return
        for event in events:
            if type(event) is bytes:
                self._inbox.append(event)
            else:
                await self._control(event)

    async def _control(self, event: object) -> None:
        match event:
            case Ping(payload):
                if not self._close_sent:
                    await self._send(client_frame(payload, opcode=OP_PONG))
            case Pong():
                pass
            case Close(code, reason):
                if not self._close_sent:  # echo the code (RFC 6455 5.5.1)
                    await self._send_close(code if code != 1005 else 1000, "")
                self.closed = self.closed or ConnectionClosed(code, reason)
            case Text():
                await self._fail(UNSUPPORTED_DATA, "a text message (protocol v1 is binary)")

    async def _fail(self, code: int, why: str) -> None:
        """The server broke the protocol: close with *code*; the receiver gets it."""
        self.closed = ConnectionClosed(code, why)
        if not self._close_sent:
            await self._send_close(code, why)

    async def _send_close(self, code: int, reason: str) -> None:
        self._close_sent = True
        with suppress(ConnectionClosed):  # broken already: nothing to close
            await self._send(client_frame(close_payload(code, reason), opcode=OP_CLOSE))

    # --- closing ---

    async def aclose(self, code: int = 1000, reason: str = "", *, patience: float = 2.0) -> None:
        """The closing handshake: send a close, read (and drop) until the server's, at most
        *patience* seconds, then close the socket. Idempotent."""
        with trio.CancelScope(shield=True), trio.move_on_after(patience):
            if not self._close_sent and self.closed is None:
                await self._send_close(code, reason)
            while self.closed is None:
                self._inbox.clear()
                await self._receive_more()
        await trio.aclose_forcefully(self._stream)


def _address(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise ValueError(f"{url!r}: only ws://host[:port]/path URLs")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, parts.port or 80, target


async def connect(url: str, subprotocol: str, *, handshake_s: float = 10.0) -> LeanWebSocket:
    """Open a TCP connection to *url* and do the opening handshake, asking for (and
    requiring) *subprotocol*.

    Raises:
        OSError: no connection.
        HandshakeError: refused, or an invalid or unexpected 101, or no 101 within
            *handshake_s* seconds.
    """
    host, port, target = _address(url)
    with trio.move_on_after(handshake_s):
        stream = await trio.open_tcp_stream(host, port)
        try:
            shake = ClientHandshake(f"{host}:{port}", target, subprotocol)
            await stream.send_all(shake.request())
            while (rest := shake.receive_data(await stream.receive_some(RECEIVE_SIZE))) is None:
                pass
        except BaseException as exc:
            await trio.aclose_forcefully(stream)
            if isinstance(exc, trio.BrokenResourceError):
                raise HandshakeError(f"{url}: the connection broke in the handshake") from None
            raise
        ws = LeanWebSocket(stream)
        if rest:
            await ws._take(rest)
        return ws
    raise HandshakeError(f"{url}: no handshake within {handshake_s} s")


@asynccontextmanager
async def open_lean(url: str, subprotocol: str, *, connect_timeout: float = 10.0,
                    close_timeout: float = 2.0) -> AsyncIterator[LeanWebSocket]:
    """:func:`connect`, and :meth:`LeanWebSocket.aclose` on the way out."""
    ws = await connect(url, subprotocol, handshake_s=connect_timeout)
    try:
        yield ws
    finally:
        await ws.aclose(patience=close_timeout)
