"""Subprotocol ``vital.v1.compact``, the client's side: :class:`CompactDecoder` (sans-IO).

It keeps the connection's table of entries as the server's
:class:`~._compact.CompactEncoder` does, and refuses anything docs/protocol.md section
11.5 does not allow (1007), or that would decode beyond its size limit (1009).
"""

from __future__ import annotations

import dataclasses

import msgpack

from ._codec import _stream_samples, decode_server
from ._compact import (
    _FIXED,
    _SKIP,
    CHAINED,
    DEFINE,
    INDEX,
    KIND_MSGPACK,
    KIND_ZSTD,
    MAX_DEFINITION_BYTES,
    MAX_ENTRIES,
    SAMPLES,
    STEADY,
    _next_tail,
)
from ._errors import CloseCode, RemoteProtocolError
from ._messages import ServerMessage, StreamSamples
from ._rice import decode_block
from ._zstd import ZstdCodec

__all__ = ["CompactDecoder"]


@dataclasses.dataclass(slots=True)
class _Known:
    template: StreamSamples
    counters: tuple[str, ...]
    values: list[int]
    steps: list[int]
    n: int = 0
    tail: bytes | None = None


class CompactDecoder:
    """The client side of ``vital.v1.compact``: decodes every message the server sends.

    Args:
        max_size: the most bytes a message may decode to (msgpack, or samples data).
        zstd: decompresses kind-1 messages (give it the dictionaries it may meet).

    Raises (from :meth:`decode`):
        RemoteProtocolError: 1007 (``invalid-compact``) for a message that does not
            follow section 11.5; 1009 for one that decodes beyond *max_size*.
    """

    def __init__(self, *, max_size: int = 1 << 20, zstd: ZstdCodec | None = None) -> None:
        self.max_size = max_size
        self.zstd = zstd if zstd is not None else ZstdCodec(max_size=max_size)
        self._entries: dict[int, _Known] = {}

    def decode(self, data: bytes) -> ServerMessage:
        if not data:
            raise _invalid("an empty message")
        kind = data[0]
        if kind == KIND_MSGPACK:
            return decode_server(data[1:])
        if kind == KIND_ZSTD:
            return self.zstd.decode_server(data[1:])
        if not kind & SAMPLES:
            raise _invalid(f"unknown message kind {kind:#04x}")
        return _Reader(data).samples(self)

    def _define(self, index: int, definition: bytes) -> None:
        if len(definition) > MAX_DEFINITION_BYTES:
            raise _invalid(f"an entry definition of {len(definition)} bytes (at most "
                           f"{MAX_DEFINITION_BYTES})")
        try:
            fields = msgpack.unpackb(definition, raw=False, strict_map_key=True)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise _invalid(f"an entry definition is not msgpack: {exc}") from None
        if not isinstance(fields, dict):
            raise _invalid("an entry definition must be a msgpack map")
        extra = fields.pop("counters", [])
        if (not isinstance(extra, list) or not all(isinstance(c, str) for c in extra)
                or any(c in _SKIP or c in fields for c in extra)):
            raise _invalid(f"'counters' must be a list of new field names, got {extra!r}")
        template = _stream_samples({**fields, "type": "samples", "seq": 0, "t0": 0,
                                    "data": b"", **dict.fromkeys(extra, 0)})
        if template.dtype != "int16":
            raise _invalid(f"compact samples are int16, the definition says {template.dtype}")
        counters = _FIXED + tuple(extra)
        self._entries[index] = _Known(template, counters, [0] * len(counters),
                                      [0] * len(counters))


class _Reader:
    """One compact samples message, read front to back."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 1

    def varint(self) -> int:
        value = shift = 0
        while True:
            if self.pos >= len(self.data) or shift > 63:
                raise _invalid("a varint runs past the end of the message or beyond 64 bits")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise _invalid("the message ends early")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def samples(self, dec: CompactDecoder) -> StreamSamples:
        flags = self.data[0]
        index = flags & INDEX
        if index == INDEX:
            index = self.varint()
            if index < INDEX:
                raise _invalid(f"index {index} must be inline, not a varint")
        if index >= MAX_ENTRIES:
            raise _invalid(f"entry index {index} is beyond the table ({MAX_ENTRIES})")
        if flags & DEFINE:
            dec._define(index, self.take(self.varint()))
        known = dec._entries.get(index)
        if known is None:
            raise _invalid(f"entry {index} is used before it is defined")
        if flags & STEADY:
            n = known.n
            known.values = [v + s for v, s in zip(known.values, known.steps, strict=True)]
        else:
            n = self.varint()
            steps = [self.varint() for _ in known.counters]
            known.steps = [s >> 1 if not s & 1 else -(s >> 1) - 1 for s in steps]
            known.values = [v + s for v, s in zip(known.values, known.steps, strict=True)]
            known.n = n
        return self._finish(dec, known, n, chained=bool(flags & CHAINED))

    def _finish(self, dec: CompactDecoder, known: _Known, n: int, *,
                chained: bool) -> StreamSamples:
        t = known.template
        c = len(t.channels)
        if 2 * c * n > dec.max_size:
            raise RemoteProtocolError(f"a compact message of {n} samples per channel decodes "
                                      f"beyond the limit of {dec.max_size} bytes",
                                      code=CloseCode.MESSAGE_TOO_BIG, reason="too-big")
        if any(v < 0 for v in known.values[:2]):
            raise _invalid(f"seq and t0 must stay >= 0, got {known.values[:2]}")
        if chained and known.tail is None:
            raise _invalid("chained samples on an entry with no history")
        if n == 0:
            data = b""
            if self.pos != len(self.data):
                raise _invalid("bytes after a message without samples")
        elif chained:
            assert known.tail is not None
            data = decode_block(self.data[self.pos:], known.tail, n, c)
        else:
            first = self.take(2 * c)
            data = first + decode_block(self.data[self.pos:], first + first, n - 1, c)
        known.tail = _next_tail(data, c, known.tail if chained else None)
        extra = dict(t.extra)
        extra.update(zip(known.counters[2:], known.values[2:], strict=True))
        return dataclasses.replace(t, seq=known.values[0], t0=known.values[1], data=data,
                                   extra=extra)


def _invalid(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"invalid compact message: {message}",
                               code=CloseCode.INVALID_PAYLOAD, reason="invalid-compact")
