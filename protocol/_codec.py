"""msgpack codec for protocol v1: ``encode(message) -> bytes`` and role-aware decoders.

Every WebSocket message holds one msgpack map with a ``type`` key. Unknown extra keys are
ignored (forward compatibility); unknown types, missing keys and wrong types are errors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, cast

import msgpack

from ._errors import CloseCode, LocalProtocolError, RemoteProtocolError
from ._messages import (
    DEVICE_DTYPES,
    DTYPES,
    EVENT_TYPES,
    Ack,
    DeviceMessage,
    Dtype,
    Error,
    Event,
    Hello,
    Message,
    Ping,
    Pong,
    Position,
    Priority,
    Samples,
    ServerMessage,
    StreamSamples,
    Subscribe,
    SubscriberMessage,
    Unsubscribe,
    Welcome,
)

__all__ = [
    "MAX_CHANNELS",
    "STREAM_ID",
    "TOPIC",
    "MessageAssembler",
    "decode_device",
    "decode_server",
    "decode_subscriber",
    "encode",
]

STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TOPIC = re.compile(
    r"stream/(?P<stream>[A-Za-z0-9][A-Za-z0-9._-]{0,63})/(?P<kind>raw|filtered|beats|quality)"
    r"|alerts|streams|job/[A-Za-z0-9._-]{1,64}"
)
MAX_CHANNELS = 16
MAX_TOPICS = 256
MAX_EPOCH = 64  # characters of an epoch in ``subscribe.since``
Fields = Mapping[str, Any]


# --- encoding -------------------------------------------------------------------------------


def encode(message: Message) -> bytes:
    """Encode *message* as one msgpack map (the payload of one binary WebSocket message)."""
    return cast(bytes, msgpack.packb(_to_map(message), use_bin_type=True))


def _to_map(m: Message) -> dict[str, Any]:
    match m:
        case Hello():
            d: dict[str, Any] = {
                "type": "hello", "stream": m.stream, "fs": m.fs, "channels": list(m.channels),
                "dtype": m.dtype, "gain": list(m.gain), "baseline": list(m.baseline),
            }
            if m.device is not None:
                d["device"] = m.device
            if m.resume is not None:
                d["resume"] = m.resume
            return d
        case Samples():
            return _some({"type": "samples", "seq": m.seq, "n": m.n, "data": m.data, "t": m.t})
        case Ping():
            return _some({"type": "ping", "t": m.t, "rx": m.rx})
        case Pong():
            return _some({"type": "pong", "t": m.t, "t1": m.t1, "t2": m.t2})
        case Welcome():
            d = {"type": "welcome", "stream": m.stream, "next_seq": m.next_seq}
            if m.zstd_dict is not None:
                d["zstd_dict"] = m.zstd_dict
            return d
        case Ack():
            return {"type": "ack", "seq": m.seq}
        case Error():
            return {"type": "error", "code": m.code, "message": m.message}
        case Subscribe():
            d = {"type": "subscribe", "topics": list(m.topics)}
            if m.since:
                d["since"] = {t: [e, o] for t, (e, o) in m.since.items()}
            return d
        case Unsubscribe():
            return {"type": "unsubscribe", "topics": list(m.topics)}
        case StreamSamples():
            return {
                **m.extra,
                "type": "samples", "topic": m.topic, "stream": m.stream, "seq": m.seq,
                "t0": m.t0, "fs": m.fs, "channels": list(m.channels), "dtype": m.dtype,
                "gain": list(m.gain), "baseline": list(m.baseline), "data": m.data,
                "priority": int(m.priority),
            }
        case Event():
            return {**m.body, "type": m.type, "topic": m.topic, "priority": int(m.priority)}
    raise LocalProtocolError(f"cannot encode {m!r}")


def _some(d: dict[str, Any]) -> dict[str, Any]:
    """*d* without its None values (optional fields are left out, not sent as nil)."""
    return {k: v for k, v in d.items() if v is not None}


# --- decoding -------------------------------------------------------------------------------


def _invalid(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, code=CloseCode.INVALID_PAYLOAD, reason="invalid-payload")


def _unpack(payload: bytes) -> Fields:
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise _invalid(f"not a msgpack message: {exc}") from None
    if not isinstance(obj, dict):
        raise _invalid(f"a message must be a msgpack map, got {type(obj).__name__}")
    t = obj.get("type")
    if not isinstance(t, str):
        raise _invalid("a message must have a string 'type' key")
    return obj


def _req(d: Fields, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in d:
        raise _invalid(f"'{d['type']}' needs '{key}' ({what})")
    value = d[key]
    # bool is an int in Python; never accept it where a number is meant.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise _invalid(f"'{d['type']}.{key}' must be {what}, got {value!r}")
    if not isinstance(value, kind):
        raise _invalid(f"'{d['type']}.{key}' must be {what}, got {type(value).__name__}")
    return value


def _opt(d: Fields, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    return None if d.get(key) is None else _req(d, key, kind, what)


#: The last seq a device may send (or resume after): the one after it must still be a
#: seq, as the server's ``welcome.next_seq`` (a 64-bit msgpack uint).
LAST_FRAME_SEQ = 2**64 - 2


def _seq(d: Fields, key: str, top: int = 2**64 - 1) -> int:
    value = _req(d, key, int, "an integer >= 0")
    if value < 0:
        raise _invalid(f"'{d['type']}.{key}' must be >= 0, got {value}")
    if value > top:
        raise _invalid(f"'{d['type']}.{key}' must be <= {top} (the seq after it must fit "
                       f"in 64 bits), got {value}")
    return cast(int, value)


def _number(d: Fields, key: str, *, positive: bool = False) -> float:
    value = float(_req(d, key, (int, float), "a number"))
    if not math.isfinite(value) or (positive and value <= 0):
        raise _invalid(f"'{d['type']}.{key}' must be a finite{' positive' if positive else ''}"
                       f" number, got {value}")
    return value


def _per_channel(d: Fields, key: str, n: int, *, positive: bool) -> tuple[float, ...]:
    raw = _req(d, key, (int, float, list), "a number or a list with one number per channel")
    values = raw if isinstance(raw, list) else [raw] * n
    if len(values) != n:
        raise _invalid(f"'{d['type']}.{key}' has {len(values)} values for {n} channels")
    out = tuple(_number({"type": d["type"], key: v}, key, positive=positive) for v in values)
    return out


def _strings(d: Fields, key: str, *, limit: int) -> tuple[str, ...]:
    values = _req(d, key, list, "a list of strings")
    if not values or len(values) > limit or not all(isinstance(v, str) for v in values):
        raise _invalid(f"'{d['type']}.{key}' must be a list of 1 to {limit} strings")
    return tuple(values)


def _hello(d: Fields) -> Hello:
    stream = _req(d, "stream", str, "a stream id")
    if not STREAM_ID.fullmatch(stream):
        raise _invalid(f"stream id {stream!r} must match {STREAM_ID.pattern}")
    channels = _strings(d, "channels", limit=MAX_CHANNELS)
    if len(set(channels)) != len(channels):
        raise _invalid(f"channel names must be unique, got {list(channels)}")
    dtype = _req(d, "dtype", str, "'int16' or 'float32'")
    if dtype not in DEVICE_DTYPES:
        raise RemoteProtocolError(
            f"dtype {dtype!r} is not supported: devices send 'int16' or 'float32'",
            code=CloseCode.UNSUPPORTED_DATA, reason="unsupported-dtype",
        )
    fs = _number(d, "fs", positive=True)
    return Hello(
        stream=stream, fs=fs, channels=channels, dtype=cast(Dtype, dtype),
        gain=_per_channel(d, "gain", len(channels), positive=True),
        baseline=_per_channel(d, "baseline", len(channels), positive=False),
        device=_opt(d, "device", str, "a string"),
        resume=None if d.get("resume") is None else _seq(d, "resume", LAST_FRAME_SEQ),
    )


def _samples(d: Fields) -> Samples:
    n = _req(d, "n", int, "an integer >= 1")
    if n < 1:
        raise _invalid(f"'samples.n' must be >= 1, got {n}")
    return Samples(seq=_seq(d, "seq", LAST_FRAME_SEQ), n=n,
                   data=_req(d, "data", bytes, "binary (msgpack bin)"), t=_opt_number(d, "t"))


def _opt_number(d: Fields, key: str) -> float | None:
    return None if d.get(key) is None else _number(d, key)


def _ping(d: Fields) -> Ping:
    return Ping(t=_opt_number(d, "t"), rx=_opt_number(d, "rx"))


def _topics(d: Fields) -> tuple[str, ...]:
    topics = _strings(d, "topics", limit=MAX_TOPICS)
    for topic in topics:
        if not TOPIC.fullmatch(topic):
            raise _invalid(f"unknown topic {topic!r}: expected stream/<id>/raw|filtered|beats|"
                           "quality, alerts, streams or job/<id>")
    return topics


def _bad_since(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, code=CloseCode.INVALID_PAYLOAD, reason="bad-since")


def _subscribe(d: Fields) -> Subscribe:
    topics = _topics(d)
    raw = d.get("since")
    if raw is None:
        return Subscribe(topics)
    if not isinstance(raw, dict):
        raise _bad_since(f"'subscribe.since' must be a map {{topic: [epoch, offset]}}, got "
                         f"{type(raw).__name__}")
    since: dict[str, Position] = {}
    for topic, value in raw.items():
        if topic not in topics:
            raise _bad_since(f"'subscribe.since' names {topic!r}, which is not in 'topics'")
        if (not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str)
                or not isinstance(value[1], int) or isinstance(value[1], bool)):
            raise _bad_since(f"'subscribe.since[{topic!r}]' must be [epoch (str), offset "
                             f"(int)], got {value!r:.60}")
        epoch, offset = value
        if not 1 <= len(epoch) <= MAX_EPOCH:
            raise _bad_since(f"'subscribe.since[{topic!r}]': epoch must be 1 to {MAX_EPOCH} "
                             f"characters, got {len(epoch)}")
        if offset < -1:
            raise _bad_since(f"'subscribe.since[{topic!r}]': offset must be >= -1, got "
                             f"{offset}")
        since[topic] = (epoch, offset)
    return Subscribe(topics, since)


def _stream_samples(d: Fields) -> StreamSamples:
    channels = _strings(d, "channels", limit=MAX_CHANNELS)
    dtype = _req(d, "dtype", str, "a dtype")
    if dtype not in DTYPES:
        raise _invalid(f"unknown dtype {dtype!r}")
    known = {"type", "topic", "stream", "seq", "t0", "fs", "channels", "dtype", "gain",
             "baseline", "data", "priority"}
    return StreamSamples(
        topic=_req(d, "topic", str, "a topic"), stream=_req(d, "stream", str, "a stream id"),
        seq=_seq(d, "seq"), t0=_seq(d, "t0"), fs=_number(d, "fs", positive=True),
        channels=channels, dtype=cast(Dtype, dtype),
        gain=_per_channel(d, "gain", len(channels), positive=True),
        baseline=_per_channel(d, "baseline", len(channels), positive=False),
        data=_req(d, "data", bytes, "binary"), priority=_priority(d),
        extra={k: v for k, v in d.items() if k not in known},
    )


def _priority(d: Fields) -> Priority:
    value = _req(d, "priority", int, "an integer 1..5")
    try:
        return Priority(value)
    except ValueError:
        raise _invalid(f"priority must be 1..5, got {value}") from None


def _event(d: Fields) -> Event:
    body = {k: v for k, v in d.items() if k not in ("type", "topic", "priority")}
    return Event(type=d["type"], topic=_req(d, "topic", str, "a topic"),
                 priority=_priority(d), body=body)


Decoder = Callable[[Fields], Message]
_DEVICE: dict[str, Decoder] = {"hello": _hello, "samples": _samples, "ping": _ping}
_SUBSCRIBER: dict[str, Decoder] = {
    "subscribe": _subscribe,
    "unsubscribe": lambda d: Unsubscribe(_topics(d)),
    "ping": _ping,
}
_SERVER: dict[str, Decoder] = {
    "welcome": lambda d: Welcome(_req(d, "stream", str, "a stream id"), _seq(d, "next_seq"),
                                 _opt(d, "zstd_dict", int, "a zstd dictionary id")),
    "ack": lambda d: Ack(_seq(d, "seq")),
    "pong": lambda d: Pong(_opt_number(d, "t"), _opt_number(d, "t1"), _opt_number(d, "t2")),
    "error": lambda d: Error(_req(d, "code", str, "a string"), _req(d, "message", str, "text")),
    "samples": _stream_samples,
    **dict.fromkeys(EVENT_TYPES, _event),
}


def _decode(payload: bytes, table: Mapping[str, Decoder], role: str) -> Message:
    d = _unpack(payload)
    decoder = table.get(d["type"])
    if decoder is None:
        raise RemoteProtocolError(
            f"unknown message type {d['type']!r} from a {role}: expected one of "
            f"{', '.join(sorted(table))}",
            code=CloseCode.PROTOCOL_ERROR, reason="unknown-type",
        )
    return decoder(d)


def decode_device(payload: bytes) -> DeviceMessage:
    """Decode a message a device sent. Raises :class:`RemoteProtocolError`."""
    return cast(DeviceMessage, _decode(payload, _DEVICE, "device"))


def decode_subscriber(payload: bytes) -> SubscriberMessage:
    """Decode a message a subscriber sent. Raises :class:`RemoteProtocolError`."""
    return cast(SubscriberMessage, _decode(payload, _SUBSCRIBER, "subscriber"))


def decode_server(payload: bytes) -> ServerMessage:
    """Decode a message the server sent (for clients). Raises :class:`RemoteProtocolError`."""
    return cast(ServerMessage, _decode(payload, _SERVER, "server"))


class MessageAssembler:
    """Joins the fragments of one WebSocket message, refusing any larger than *max_size*.

    Feed each fragment with :meth:`feed`; it returns the whole payload when *final* is
    true, else ``None``. Fragment boundaries never change the result.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes, *, final: bool) -> bytes | None:
        self._size += len(data)
        if self._size > self.max_size:
            size, self._parts, self._size = self._size, [], 0
            raise RemoteProtocolError(
                f"message of at least {size} bytes exceeds the limit of {self.max_size} bytes",
                code=CloseCode.MESSAGE_TOO_BIG, reason="too-big",
            )
        self._parts.append(data)
        if not final:
            return None
        payload = b"".join(self._parts)
        self._parts, self._size = [], 0
        return payload
