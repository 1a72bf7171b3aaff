"""Client-side WebSocket (RFC 6455) for the load generator, sans-IO: the opening
handshake, masked client frames made ahead of time, and an incremental parser of the
server's frames.

The load generator must cost far less than what it measures, so its hot paths carry no
per-message library machinery: a device's frames are framed and masked at plan time
(:func:`client_frames`, one numpy XOR per device) and sent as ready bytes; what the server
sends is cut into messages by :class:`FrameParser` (unmasked frames, 7/16/64-bit
lengths, fragmentation, ping/pong/close). No I/O here: ``loadtests.lean`` is the glue.

Data messages come out of :meth:`FrameParser.feed` as plain ``bytes`` (binary) and the
rest as small events (:class:`Text`, :class:`Ping`, :class:`Pong`, :class:`Close`).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import h11
import numpy as np

__all__ = [
    "OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG", "OP_TEXT", "ClientHandshake", "Close",
    "FrameParser", "HandshakeError", "Ping", "Pong", "ProtocolError", "Text", "client_frame",
    "client_frames", "close_payload",
]

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_DATA_OPS = (OP_TEXT, OP_BINARY)
_CONTROL_OPS = (OP_CLOSE, OP_PING, OP_PONG)
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Close codes a peer may send (RFC 6455 7.4.1; 1004-1006 and 1015 never go on the wire).
_SENDABLE = frozenset((1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)))
NO_STATUS = 1005  # a close frame without a code (RFC 6455 7.1.5)
DEFAULT_MAX_MESSAGE = 16 * 2**20


class HandshakeError(Exception):
    """The server refused the upgrade, or its 101 answer is not a valid one for us."""

    def __init__(self, message: str, status: int = 0, body: bytes = b"") -> None:
        super().__init__(message)
        self.status, self.body = status, body


class ProtocolError(Exception):
    """The server broke RFC 6455; ``code`` is the close code to answer with."""

    def __init__(self, message: str, code: int = 1002) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int  # NO_STATUS when the frame had none
    reason: str


# --- the opening handshake -------------------------------------------------------------------


def accept_token(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for the base64 *key* (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


class ClientHandshake:
    """The client's opening handshake over h11: :meth:`request` gives the bytes to send;
    :meth:`receive_data` takes the server's until it returns the bytes that followed the
    101 (the first frames, often empty).

    Raises :class:`HandshakeError` for a refusal (with its status and body) and for a 101
    that lacks ``Upgrade: websocket``, ``Connection: upgrade``, the right
    ``Sec-WebSocket-Accept``, the one subprotocol asked for, or that adds extensions.
    """

    def __init__(self, host: str, target: str, subprotocol: str, *, key: bytes | None = None,
                 headers: Sequence[tuple[str, str]] = ()) -> None:
        self._conn = h11.Connection(h11.CLIENT)
        self._key = base64.b64encode(key if key is not None else os.urandom(16))
        self._host, self._target, self.subprotocol = host, target, subprotocol
        self._headers = tuple(headers)
        self._refused: h11.Response | None = None
        self._body = b""

    def request(self) -> bytes:
        return self._conn.send(h11.Request(method="GET", target=self._target, headers=[
            ("Host", self._host), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", self._key.decode()), ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Protocol", self.subprotocol), *self._headers]))

    def receive_data(self, data: bytes) -> bytes | None:
        """Feed what the server sent (``b""``: it closed). None: more is needed."""
        try:
            self._conn.receive_data(data)
            while (event := self._conn.next_event()) is not h11.NEED_DATA:
                if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                    self._check(dict(event.headers))
                    return self._conn.trailing_data[0]
                self._note(event)
        except h11.RemoteProtocolError as exc:
            raise HandshakeError(f"not an HTTP answer to the upgrade: {exc}") from None
        if not data:
            raise HandshakeError("the server closed the connection during the handshake")
        return None

    def _note(self, event: object) -> None:
        if isinstance(event, h11.Response):
            self._refused = event
        elif isinstance(event, h11.Data):
            self._body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            if self._refused is None:
                raise HandshakeError("the server closed the connection during the handshake")
            status = self._refused.status_code
            raise HandshakeError(f"upgrade refused: HTTP {status} "
                                 f"{self._body[:200].decode(errors='replace')}",
                                 status, self._body)

    def _check(self, headers: dict[bytes, bytes]) -> None:
        if headers.get(b"upgrade", b"").lower() != b"websocket":
            raise HandshakeError("101 without 'Upgrade: websocket'", 101)
        tokens = {t.strip().lower() for t in headers.get(b"connection", b"").split(b",")}
        if b"upgrade" not in tokens:
            raise HandshakeError("101 without 'Connection: upgrade'", 101)
        if headers.get(b"sec-websocket-accept") != accept_token(self._key):
            raise HandshakeError("101 with a wrong Sec-WebSocket-Accept", 101)
        chosen = headers.get(b"sec-websocket-protocol", b"").decode(errors="replace")
        if chosen != self.subprotocol:
            raise HandshakeError(f"the server chose subprotocol {chosen!r}, "
                                 f"not {self.subprotocol!r}", 101)
        if headers.get(b"sec-websocket-extensions"):
            raise HandshakeError("the server turned on extensions nobody asked for", 101)


# --- client frames ---------------------------------------------------------------------------


def _header(opcode: int, length: int, key: bytes) -> bytes:
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, 0x80 | length)) + key
    if length < 65536:
        return bytes((first, 0x80 | 126)) + length.to_bytes(2, "big") + key
    return bytes((first, 0x80 | 127)) + length.to_bytes(8, "big") + key


def client_frames(payloads: Sequence[bytes], *, opcode: int = OP_BINARY,
                  keys: bytes | None = None) -> list[bytes]:
    """Each payload as one masked, final client frame, ready to send.

    Every frame gets its own 4-byte masking key, from *keys* (4 per payload) or
    ``os.urandom``; the masking is one numpy XOR over all payloads together.
    """
    count = len(payloads)
    keys = os.urandom(4 * count) if keys is None else keys
    if len(keys) != 4 * count:
        raise ValueError(f"{count} payloads need {4 * count} key bytes, got {len(keys)}")
    lengths = np.fromiter(map(len, payloads), np.int64, count)
    body = np.frombuffer(b"".join(payloads), np.uint8)
    starts = np.cumsum(lengths) - lengths
    owner = np.repeat(np.arange(count), lengths)
    column = (np.arange(body.size) - starts[owner]) & 3
    masked = (body ^ np.frombuffer(keys, np.uint8).reshape(count, 4)[owner, column]).tobytes()
    return [_header(opcode, int(n), keys[4 * k:4 * k + 4]) + masked[s:s + n]
            for k, (s, n) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True))]


def client_frame(payload: bytes, *, opcode: int = OP_BINARY) -> bytes:
    """One masked client frame (a random key)."""
    return client_frames((payload,), opcode=opcode)[0]


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload: the code, and the reason cut to 123 bytes of UTF-8."""
    return code.to_bytes(2, "big") + reason.encode()[:123].decode(errors="ignore").encode()


# --- server frames ---------------------------------------------------------------------------


class FrameParser:
    """Cuts what a server sends into messages and control events, across any split.

    :meth:`feed` returns, in order, each whole binary message as ``bytes`` and
    :class:`Text`, :class:`Ping`, :class:`Pong` and :class:`Close` events. After a
    :class:`Close` it ignores whatever follows. A frame the RFC forbids raises
    :class:`ProtocolError` with the close code to answer.
    """

    def __init__(self, *, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_message = max_message
        self.closed = False
        self._chunks: list[bytes] = []  # received, not yet a whole frame
        self._have = 0
        self._need = 2  # bytes the next frame needs at least (its header, then all)
        self._parts: list[bytes] = []  # fragments of the data message in progress
        self._part_op = 0  # its opcode; 0 when none is in progress
        self._part_len = 0

    def feed(self, data: bytes) -> list[bytes | Text | Ping | Pong | Close]:
        if self.closed or not data:
            return []
        self._chunks.append(data)
        self._have += len(data)
        if self._have < self._need:
            return []
        buf = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        out: list[bytes | Text | Ping | Pong | Close] = []
        pos = self._cut(buf, out)
        rest = buf[pos:]
        self._chunks, self._have = ([rest] if rest else []), len(rest)
        return out

    def _cut(self, buf: bytes, out: list[bytes | Text | Ping | Pong | Close]) -> int:
        """Parse whole frames of *buf* into *out*; the offset of the first unparsed byte."""
        pos, end = 0, len(buf)
        while end - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            if second & 0x80:
                raise ProtocolError("a masked frame from the server")
            n, head = second, 2
            if n >= 126:
                head = 4 if n == 126 else 10
                if end - pos < head:
                    self._need = head
                    return pos
                n = int.from_bytes(buf[pos + 2:pos + head], "big")
                self._check_length(n, head)
            if end - pos < head + n:
                self._need = head + n
                return pos
            payload = buf[pos + head:pos + head + n]
            pos += head + n
            if first == 0x82 and not self._part_op:  # the hot path: one whole binary frame
                out.append(payload)
            else:
                self._frame(first, payload, out)
                if self.closed:
                    return end
        self._need = 2
        return pos

    def _check_length(self, n: int, head: int) -> None:
        if head == 10 and n >> 63:
            raise ProtocolError("a 64-bit length with its top bit set")
        if n < (126 if head == 4 else 65536):
            raise ProtocolError(f"length {n} not in its shortest form")
        if n > self.max_message:
            raise ProtocolError(f"a {n}-byte frame", 1009)

    def _frame(self, first: int, payload: bytes,
               out: list[bytes | Text | Ping | Pong | Close]) -> None:
        fin, opcode = first & 0x80, first & 0x0F
        if first & 0x70:
            raise ProtocolError("RSV bits set without an extension")
        if opcode in _CONTROL_OPS:
            if not fin or len(payload) > 125:
                raise ProtocolError("a fragmented or over-long control frame")
            out.append(self._control(opcode, payload))
        elif opcode in _DATA_OPS or opcode == OP_CONTINUATION:
            message = self._data(opcode, bool(fin), payload)
            if message is not None:
                out.append(message)
        else:
            raise ProtocolError(f"unknown opcode {opcode:#x}")

    def _control(self, opcode: int, payload: bytes) -> Ping | Pong | Close:
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        self.closed = True
        if not payload:
            return Close(NO_STATUS, "")
        code = int.from_bytes(payload[:2], "big")
        if len(payload) == 1 or code not in _SENDABLE:
            raise ProtocolError(f"an invalid close code in {payload[:2]!r}")
        try:
            return Close(code, payload[2:].decode())
        except UnicodeDecodeError:
            raise ProtocolError("a close reason that is not UTF-8", 1007) from None

    def _data(self, opcode: int, fin: bool, payload: bytes) -> bytes | Text | None:
        if (opcode == OP_CONTINUATION) != bool(self._part_op):
            raise ProtocolError("a continuation without a message" if opcode == 0
                                else "a new message inside a fragmented one")
        self._part_len += len(payload)
        if self._part_len > self.max_message:
            raise ProtocolError(f"a message over {self.max_message} bytes", 1009)
        self._parts.append(payload)
        self._part_op = self._part_op or opcode
        if not fin:
            return None
        whole, op = b"".join(self._parts), self._part_op
        self._parts, self._part_op, self._part_len = [], 0, 0
        if op == OP_BINARY:
            return whole
        try:
            return Text(whole.decode())
        except UnicodeDecodeError:
            raise ProtocolError("a text message that is not UTF-8", 1007) from None
