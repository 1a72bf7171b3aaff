"""Wire encodings of outgoing messages: how a server message becomes frame bytes.

A connection negotiates one :class:`WireCodec` at its handshake (subprotocol and
WebSocket extensions). The broadcaster encodes each message to msgpack once and asks
each codec *key* for its frame once (:class:`Outgoing` memoizes), so the cost of
encoding and compression does not grow with the number of subscribers: subscribers
with equal keys get the very same bytes. A codec with per-connection state
(``vital.v1.compact``: its table of header entries) has no key; it frames on every
connection, but what it compresses it memoizes in the :class:`Outgoing` (``shared``),
so only a small header is made per connection.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Hashable, MutableMapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol, cast

from protocol import (
    CompactEncoder,
    Deflater,
    Priority,
    ServerMessage,
    Welcome,
    ZstdCodec,
    ZstdDictionary,
    encode,
    server_frame,
)

__all__ = [
    "PLAIN",
    "CompactWireCodec",
    "DeflateCodec",
    "Outgoing",
    "PerConnection",
    "PlainCodec",
    "TakeoverDeflateCodec",
    "WireCodec",
    "ZstdWireCodec",
]


#: Per message: frames by codec key, and what per-connection codecs share (any value).
Shared = MutableMapping[Hashable, Any]


class WireCodec(Protocol):
    """Turns a message into the bytes of one whole WebSocket frame."""

    @property
    def key(self) -> Hashable:
        """Codecs with equal keys produce equal bytes for the same message; a
        :class:`PerConnection` key: this codec's frames are never shared."""
        ...

    def frame(self, message: ServerMessage, payload: bytes,
              shared: Shared | None = None) -> bytes:
        """The frame for *message*, whose plain msgpack encoding is *payload*; *shared*
        memoizes work every connection's codec can reuse for this message."""
        ...


@dataclass(frozen=True, slots=True)
class PlainCodec:
    """Subprotocol ``vital.v1.msgpack`` without compression."""

    @property
    def key(self) -> Hashable:
        return "plain"

    def frame(self, message: ServerMessage, payload: bytes,
              shared: Shared | None = None) -> bytes:
        return server_frame(payload)


PLAIN = PlainCodec()


#: Shared deflate frames of messages shorter than this use zlib's Z_RLE strategy.
SMALL_DEFLATE = 1024


@cache
def _shared_deflater(level: int, window_bits: int, mem_level: int,
                     strategy: int = zlib.Z_DEFAULT_STRATEGY) -> Deflater:
    return Deflater(level=level, window_bits=window_bits, mem_level=mem_level,
                    context_takeover=False, strategy=strategy)


@dataclass(frozen=True, slots=True)
class DeflateCodec:
    """permessage-deflate without server context takeover: each message compressed on its
    own, so one compressed frame serves every connection with the same settings.

    Messages shorter than *min_bytes* go out uncompressed (RSV1 = 0; RFC 7692 allows it).
    Messages shorter than :data:`SMALL_DEFLATE` (1 KiB) are compressed with ``Z_RLE``:
    on a 100 ms ``samples`` message zlib's time goes to the data-dependent work of
    matching and coding a fresh block (not to the full flush, compressor set-up or
    memLevel: docs/benchmarks.md), and run-only matching cuts it by a sixth for ~6 %
    more bytes; on larger messages RLE would cost twice the bytes, so they keep the
    default strategy.
    """

    level: int
    window_bits: int
    mem_level: int
    min_bytes: int

    @property
    def key(self) -> Hashable:
        return ("deflate", self.level, self.window_bits, self.mem_level, self.min_bytes)

    def frame(self, message: ServerMessage, payload: bytes,
              shared: Shared | None = None) -> bytes:
        if len(payload) < self.min_bytes:
            return server_frame(payload)
        deflater = _shared_deflater(self.level, self.window_bits, self.mem_level,
                                    zlib.Z_RLE if len(payload) < SMALL_DEFLATE
                                    else zlib.Z_DEFAULT_STRATEGY)
        return server_frame(deflater.compress(payload), rsv1=True)


class TakeoverDeflateCodec:
    """permessage-deflate with server context takeover: one compression stream per
    connection. Smaller frames, but every connection compresses every message itself, in
    the order it sends them (frame a message only right before writing it).
    """

    def __init__(self, *, level: int, window_bits: int, mem_level: int, min_bytes: int) -> None:
        self.min_bytes = min_bytes
        self._deflater = Deflater(level=level, window_bits=window_bits, mem_level=mem_level,
                                  context_takeover=True)

    @property
    def key(self) -> Hashable:
        return self  # never shared

    def frame(self, message: ServerMessage, payload: bytes,
              shared: Shared | None = None) -> bytes:
        if len(payload) < self.min_bytes:
            return server_frame(payload)
        return server_frame(self._deflater.compress(payload), rsv1=True)


@cache
def _shared_zstd(level: int, dictionary: ZstdDictionary | None, delta: bool) -> ZstdCodec:
    return ZstdCodec(level=level, dictionary=dictionary, delta=delta)


@dataclass(frozen=True, slots=True)
class ZstdWireCodec:
    """Subprotocol ``vital.v1.msgpack+zstd``: each message one zstd frame (shared)."""

    level: int
    dictionary: ZstdDictionary | None
    delta: bool

    @property
    def key(self) -> Hashable:
        return ("zstd", self.level, self.dictionary_id, self.delta)

    @property
    def dictionary_id(self) -> int | None:
        return None if self.dictionary is None else self.dictionary.id

    def frame(self, message: ServerMessage, payload: bytes,
              shared: Shared | None = None) -> bytes:
        if isinstance(message, Welcome) and self.dictionary is not None:
            message = dataclasses.replace(message, zstd_dict=self.dictionary.id)
            payload = encode(message)
        codec = _shared_zstd(self.level, self.dictionary, self.delta)
        return server_frame(codec.compress_message(message, payload))


class PerConnection:
    """The key of a codec whose frames depend on its connection: never memoized (what it
    can share, it shares through ``shared``). Its string names the codec in stats."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return self.name


class CompactWireCodec:
    """Subprotocol ``vital.v1.compact``: int16 samples Rice-coded once per message
    (shared), behind a header made from this connection's table of entries. Frame a
    message only right before writing it: the table moves with every frame.
    """

    def __init__(self, *, level: int, dictionary: ZstdDictionary | None) -> None:
        self.dictionary = dictionary
        self._encoder = CompactEncoder(_shared_zstd(level, dictionary, True))
        self._key = PerConnection("compact")

    @property
    def key(self) -> Hashable:
        return self._key

    @property
    def dictionary_id(self) -> int | None:
        return None if self.dictionary is None else self.dictionary.id

    def frame(self, message: ServerMessage, payload: bytes,
              shared: Shared | None = None) -> bytes:
        body = self._encoder.encode(message, payload, {} if shared is None else shared)
        return server_frame(body)


@dataclass(eq=False, slots=True)
class Outgoing:
    """One message on its way to many subscribers: encoded once, framed once per codec."""

    message: ServerMessage
    priority: Priority
    payload: bytes = b""
    _frames: dict[Hashable, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, message: ServerMessage, priority: Priority) -> Outgoing:
        return cls(message, priority, encode(message))

    def frame_for(self, codec: WireCodec) -> bytes:
        key = codec.key
        if isinstance(key, PerConnection):  # what it can share goes to the memo
            return codec.frame(self.message, self.payload, self._frames)
        frame = self._frames.get(key)
        if frame is None:
            frame = self._frames[key] = codec.frame(self.message, self.payload)
        return cast(bytes, frame)
