"""Messages of protocol v1: small frozen dataclasses, one per ``type``.

Direction matters: a device sends :class:`Hello`, :class:`Samples` and :class:`Ping`; the
server answers with :class:`Welcome`, :class:`Ack`, :class:`Pong` and :class:`Error`. A
subscriber sends :class:`Subscribe` and :class:`Unsubscribe`; the server sends it
:class:`StreamSamples` and :class:`Event` (beat, quality, alert, status, progress).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal

__all__ = [
    "DTYPES",
    "EVENT_TYPES",
    "Ack",
    "DeviceMessage",
    "Error",
    "Event",
    "Hello",
    "Message",
    "Ping",
    "Pong",
    "Position",
    "Priority",
    "Samples",
    "ServerMessage",
    "StreamSamples",
    "Subscribe",
    "SubscriberMessage",
    "Unsubscribe",
    "Welcome",
    "position",
]

Dtype = Literal["int16", "float32", "float64"]
#: Sample encodings: little-endian, interleaved by channel. Devices send int16 or float32;
#: the server may send float64 on filtered topics when configured for exact reproduction.
DTYPES: tuple[str, ...] = ("int16", "float32", "float64")
DEVICE_DTYPES: tuple[str, ...] = ("int16", "float32")
EVENT_TYPES: tuple[str, ...] = ("beat", "quality", "alert", "status", "progress")


class Priority(IntEnum):
    """Delivery priority of a server message: 1 is the most urgent."""

    CRITICAL = 1
    HIGH = 2
    NORMAL = 3
    LOW = 4
    BULK = 5


# --- device -> server ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """Opens a device session: describes the stream that follows."""

    stream: str
    fs: float
    channels: tuple[str, ...]
    dtype: Dtype
    gain: tuple[float, ...]
    baseline: tuple[float, ...]
    device: str | None = None
    resume: int | None = None


@dataclass(frozen=True, slots=True)
class Samples:
    """One frame from a device: ``n`` samples per channel, interleaved, little-endian."""

    seq: int
    n: int
    data: bytes
    #: Optional: the device's clock (s) at the first sample; the server maps it to its own.
    t: float | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness probe; ``t`` (optional) is echoed back in :class:`Pong`.

    For clock estimation a device sends ``t`` = its clock when sending, and ``rx`` = its
    clock when the previous pong arrived (docs/protocol.md 3.4).
    """

    t: float | None = None
    rx: float | None = None


# --- server -> device -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    stream: str
    next_seq: int
    #: Under ``vital.v1.msgpack+zstd``: the id of the dictionary the server compresses
    #: with on this connection (None: none). Set by the connection's codec.
    zstd_dict: int | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int


@dataclass(frozen=True, slots=True)
class Pong:
    """``t`` echoed from the ping; ``t1`` / ``t2``: the server's clock (Unix s) when the
    ping arrived and when this pong left (set by servers that estimate clocks)."""

    t: float | None = None
    t1: float | None = None
    t2: float | None = None


@dataclass(frozen=True, slots=True)
class Error:
    """Sent before the server closes a connection (or for a non-fatal refusal)."""

    code: str
    message: str


# --- subscriber <-> server ------------------------------------------------------------------


#: A topic's position: its epoch and the offset of the last message counted as received.
Position = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Follow *topics*; for those in *since*, first replay what came after that position
    (subscriber recovery, docs/protocol.md 4.4)."""

    topics: tuple[str, ...]
    since: Mapping[str, Position] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StreamSamples:
    """Samples on a ``stream/<id>/raw`` or ``stream/<id>/filtered`` topic.

    ``t0`` is the index of the first sample since the stream started; physical value in
    mV = (sample - baseline) / gain, per channel.
    """

    topic: str
    stream: str
    seq: int
    t0: int
    fs: float
    channels: tuple[str, ...]
    dtype: Dtype
    gain: tuple[float, ...]
    baseline: tuple[float, ...]
    data: bytes
    priority: Priority = Priority.HIGH
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Event:
    """A ``beat``, ``quality``, ``alert``, ``status`` or ``progress`` message.

    ``body`` holds the type's own fields (see docs/protocol.md); it travels flat, beside
    ``type``, ``topic`` and ``priority``.
    """

    type: str
    topic: str
    priority: Priority
    body: Mapping[str, Any] = field(default_factory=dict)


DeviceMessage = Hello | Samples | Ping
SubscriberMessage = Subscribe | Unsubscribe | Ping
ServerMessage = Welcome | Ack | Pong | Error | StreamSamples | Event
Message = DeviceMessage | SubscriberMessage | ServerMessage


def position(message: ServerMessage) -> Position | None:
    """The topic position a subscriber message carries (``epoch``, ``offset``), if any."""
    fields = message.extra if isinstance(message, StreamSamples) else (
        message.body if isinstance(message, Event) else None)
    if not fields:
        return None
    epoch, offset = fields.get("epoch"), fields.get("offset")
    if isinstance(epoch, str) and isinstance(offset, int) and not isinstance(offset, bool):
        return epoch, offset
    return None
