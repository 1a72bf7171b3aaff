"""Wire encodings of outgoing messages: how a server message becomes frame bytes.

A connection negotiates one :class:`WireCodec` at its handshake (subprotocol and
WebSocket extensions). The broadcaster encodes each message to msgpack once and asks
each codec *key* for its frame once (:class:`Outgoing` memoizes), so the cost of
encoding and compression does not grow with the number of subscribers: subscribers
with equal keys get the very same bytes.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Protocol

from protocol import Priority, ServerMessage, encode, server_frame

__all__ = ["PLAIN", "Outgoing", "PlainCodec", "WireCodec"]


class WireCodec(Protocol):
    """Turns a message into the bytes of one whole WebSocket frame."""

    @property
    def key(self) -> Hashable:
        """Codecs with equal keys produce equal bytes for the same message."""
        ...

    def frame(self, message: ServerMessage, payload: bytes) -> bytes:
        """The frame for *message*, whose plain msgpack encoding is *payload*."""
        ...


@dataclass(frozen=True, slots=True)
class PlainCodec:
    """Subprotocol ``vital.v1.msgpack`` without compression."""

    @property
    def key(self) -> Hashable:
        return "plain"

    def frame(self, message: ServerMessage, payload: bytes) -> bytes:
        return server_frame(payload)


PLAIN = PlainCodec()


@dataclass(eq=False, slots=True)
class Outgoing:
    """One message on its way to many subscribers: encoded once, framed once per codec."""

    message: ServerMessage
    priority: Priority
    payload: bytes = b""
    _frames: dict[Hashable, bytes] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, message: ServerMessage, priority: Priority) -> Outgoing:
        return cls(message, priority, encode(message))

    def frame_for(self, codec: WireCodec) -> bytes:
        key = codec.key
        frame = self._frames.get(key)
        if frame is None:
            frame = self._frames[key] = codec.frame(self.message, self.payload)
        return frame
