"""Subprotocol ``vital.v1.compact``: int16 samples in a few bits each (sans-IO).

Server to subscriber only (a client sends plain msgpack). Every message starts with a
kind byte. ``samples`` messages with int16 data are coded in two parts:

- the *sample block* (:mod:`._rice`), made once per message and shared by every
  subscriber: "chained" when predicted from the end of the previous frame of the topic
  (for connections that were sent that frame), else "standalone";
- a small header made per connection, HPACK-like: the connection keeps a table of
  *entries*, one per topic, holding what does not change from message to message
  (topic, stream, fs, channels, gain, ...; sent once, as msgpack) and the counters
  (``seq``, ``t0``, integer extras such as ``offset``), of which only deltas travel, and
  nothing at all when each moved by the same step as last time.

Every other message falls back to msgpack, zstd-compressed when that is smaller.
docs/protocol.md section 11.5 is the normative description. This module is the
server's side and what both sides share; the client's is :mod:`._compact_decode`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, MutableMapping
from operator import add, sub
from typing import Any, cast

import msgpack

from ._codec import _to_map
from ._messages import ServerMessage, StreamSamples
from ._rice import encode_block
from ._zstd import ZstdCodec

__all__ = [
    "COMPACT_SUBPROTOCOL",
    "MAX_DEFINITION_BYTES",
    "MAX_ENTRIES",
    "CompactEncoder",
]

COMPACT_SUBPROTOCOL = "vital.v1.compact"
KIND_MSGPACK = 0x00
KIND_ZSTD = 0x01
SAMPLES = 0x80  # the top bit: a compact samples message; the others are flags + index
DEFINE = 0x40  # an entry definition follows
CHAINED = 0x20  # the samples are predicted from the entry's history
STEADY = 0x10  # n and every counter as predicted: no deltas follow
INDEX = 0x0F  # 0..14 the entry index; 15: the index follows as a varint
MAX_ENTRIES = 1024
MAX_DEFINITION_BYTES = 4096
_FIXED = ("seq", "t0")
_UNKNOWN = object()
_SKIP = frozenset(("type", "seq", "t0", "data"))

#: What every connection's encoder may reuse for one message (sample blocks, fallback).
Shared = MutableMapping[Hashable, Any]


def _varint(value: int, out: bytearray) -> None:
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


def _zigzag(value: int) -> int:
    return value << 1 if value >= 0 else (-value << 1) - 1


def sample_block(data: bytes, channels: int, tail: bytes | None) -> bytes:
    """The shared part of a compact ``samples`` message: chained on *tail* (the entry's
    last two samples per channel), or standalone (the first sample raw) if None."""
    if not data:
        return b""
    if tail is None:
        first = data[:2 * channels]
        return first + encode_block(first + data, channels)
    return encode_block(tail + data, channels)


def _next_tail(data: bytes, channels: int, tail: bytes | None) -> bytes | None:
    """The entry's history after *data*: its last two samples per channel."""
    if not data:
        return tail
    width = 4 * channels
    if len(data) >= width:
        return data[-width:]
    return ((data if tail is None else tail) + data)[-width:]  # one sample: x0 x0 or h1 x0


@dataclasses.dataclass(slots=True)
class _Entry:
    index: int
    key: tuple[Any, ...]
    counters: tuple[str, ...] = ()
    values: tuple[int, ...] = ()
    steps: tuple[int, ...] = ()
    expect: tuple[int, ...] = ()  # values + steps: what a steady message carries
    n: int = 0
    tail: bytes | None = None
    ready: bool = False  # the next steady frame takes the short path (one header byte)
    head: bytes = b""  # that header byte


@dataclasses.dataclass(frozen=True, slots=True)
class _Shape:
    """What a samples message looks like to a table: the same on every connection."""

    key: tuple[Any, ...]  # the static fields: an entry holds them
    counters: tuple[str, ...]
    values: tuple[int, ...]
    channels: int
    n: int
    last: bytes | None  # its last two samples per channel, if it has two


def _shape(m: ServerMessage) -> _Shape | None:
    """The shape of a message that can go compact (int16 samples), else None."""
    if (not isinstance(m, StreamSamples) or m.dtype != "int16" or not m.channels
            or len(m.data) % (2 * len(m.channels)) or "counters" in m.extra):
        return None
    c = len(m.channels)
    n = len(m.data) // (2 * c)
    last = m.data[-4 * c:] if n >= 2 else None
    if not m.extra:
        return _Shape((m.topic, m.stream, m.fs, m.channels, m.gain, m.baseline, m.priority),
                      _FIXED, (m.seq, m.t0), c, n, last)
    names = tuple(sorted(k for k, v in m.extra.items() if type(v) is int))
    static = tuple(sorted((k, v) for k, v in m.extra.items() if type(v) is not int))
    return _Shape((m.topic, m.stream, m.fs, m.channels, m.gain, m.baseline, m.priority,
                   static), _FIXED + names, (m.seq, m.t0, *(m.extra[k] for k in names)),
                  c, n, last)


def _definition(m: StreamSamples, counters: tuple[str, ...]) -> bytes:
    fields = {k: v for k, v in _to_map(m).items() if k not in _SKIP and k not in counters}
    if len(counters) > 2:
        fields["counters"] = list(counters[2:])
    return cast(bytes, msgpack.packb(fields, use_bin_type=True))


def fallback(message: ServerMessage, payload: bytes, zstd: ZstdCodec | None) -> bytes:
    """Any message as kind 0 (msgpack) or kind 1 (zstd frame), whichever is smaller."""
    if zstd is not None:
        packed = zstd.compress_message(message, payload)
        if len(packed) < len(payload):
            return bytes((KIND_ZSTD,)) + packed
    return bytes((KIND_MSGPACK,)) + payload


class CompactEncoder:
    """The server side of one ``vital.v1.compact`` connection: its table of entries.

    Messages must be encoded in the order they are sent: each one moves the table.

    Args:
        zstd: how other messages are compressed (None: they go as msgpack).
        max_entries: the table's size; past it, the oldest entry is redefined.
    """

    def __init__(self, zstd: ZstdCodec | None, *, max_entries: int = MAX_ENTRIES) -> None:
        self.zstd = zstd
        self.max_entries = max_entries
        self._entries: dict[str, _Entry] = {}
        self._fallback_key = ("compact-fallback", None if zstd is None else
                              (zstd.level, zstd.dictionary_id, zstd.delta))

    def encode(self, message: ServerMessage, payload: bytes, shared: Shared) -> bytes:
        """The body of the WebSocket message carrying *message* (msgpack: *payload*).

        *shared* memoizes what is the same on every connection (the sample blocks and
        the fallback) for this message: pass the same mapping to every connection's
        encoder.
        """
        shape = shared.get("compact-shape", _UNKNOWN)
        if shape is _UNKNOWN:  # once per message
            shape = shared["compact-shape"] = _shape(message)
        if shape is None:
            body = shared.get(self._fallback_key)
            if body is None:
                body = shared[self._fallback_key] = fallback(message, payload, self.zstd)
            return cast(bytes, body)
        m = cast(StreamSamples, message)
        entry = self._entries.get(m.topic)
        if (entry is not None and entry.ready and shape.values == entry.expect
                and shape.n == entry.n and shape.key == entry.key):
            # The usual case, kept short (it runs once per message per subscriber): the
            # next frame of a known topic, one header byte.
            memo = ("compact", entry.tail)
            block = shared.get(memo)
            if block is None:
                block = shared[memo] = sample_block(m.data, shape.channels, entry.tail)
            entry.values, entry.expect = shape.values, tuple(map(add, shape.values,
                                                                 entry.steps))
            entry.tail = shape.last or _next_tail(m.data, shape.channels, entry.tail)
            return entry.head + cast(bytes, block)
        return self._samples(m, shape, entry, shared)

    def _samples(self, m: StreamSamples, shape: _Shape, entry: _Entry | None,
                 shared: Shared) -> bytes:
        flags = SAMPLES
        if entry is None or entry.key != shape.key:
            entry = self._define(m, shape.key, shape.counters)
            definition = _definition(m, shape.counters)
            flags |= DEFINE
        values, n = shape.values, shape.n
        steps = tuple(map(sub, values, entry.values))
        if steps == entry.steps and n == entry.n:
            flags |= STEADY
        tail = entry.tail if m.seq == entry.values[0] + 1 else None
        if tail is not None:
            flags |= CHAINED
        index = entry.index
        head = bytearray((flags | min(index, INDEX),))
        if index >= INDEX:
            _varint(index, head)
        if flags & DEFINE:
            _varint(len(definition), head)
            head += definition
        if not flags & STEADY:
            _varint(n, head)
            for step in steps:
                _varint(_zigzag(step), head)
        memo = ("compact", tail)  # the block of the history it is chained on (or none)
        block = shared.get(memo)
        if block is None:
            block = shared[memo] = sample_block(m.data, shape.channels, tail)
        entry.values, entry.steps, entry.n = values, steps, n
        entry.expect = tuple(map(add, values, steps))
        entry.tail = _next_tail(m.data, shape.channels, tail)
        entry.ready = entry.tail is not None and steps[0] == 1 and index < INDEX
        entry.head = bytes((SAMPLES | CHAINED | STEADY | index,))
        return bytes(head) + cast(bytes, block)

    def _define(self, m: StreamSamples, key: tuple[Any, ...],
                counters: tuple[str, ...]) -> _Entry:
        # Indexes in use are always 0 .. len - 1: a redefinition or an eviction hands
        # its index on, so the next free index is the table's length.
        old = self._entries.pop(m.topic, None)
        if old is not None:
            index = old.index
        elif len(self._entries) < self.max_entries:
            index = len(self._entries)
        else:  # full: the entry defined longest ago gives way
            index = self._entries.pop(next(iter(self._entries))).index
        entry = self._entries[m.topic] = _Entry(index, key, counters,
                                                (0,) * len(counters), (0,) * len(counters))
        return entry
