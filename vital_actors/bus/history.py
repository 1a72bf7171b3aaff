"""Live topics' recent history in Redis Streams, for subscribers that come back on
another node (issue 9; the recovery design is issue 6's, ``vital_actors/history.py``).

The node that produces a topic appends each positioned message it encodes to the
stream ``<prefix>h:<epoch>:<topic>`` (one stream per topic epoch), with the entry id
``<offset>-1`` and the fields ``p`` (the encoded message, as subscribers receive it)
and ``v`` (the offset of the message recorded before it in this epoch, or ``u`` when the
producer does not know that it recorded everything since: it just started recording
the topic). Appends go in the bus publisher's pipelines, before the PUBLISH of the same
batch, so a node that receives a message live finds every earlier one in the stream.

Bounds: ``XADD MAXLEN ~ bus.history_maxlen`` per stream (the oldest entries go first)
and ``PEXPIRE bus.history_s`` on each append (a topic nobody produces any more goes).

:class:`RedisHistory` reads it back through the ``History`` interface of
``vital_actors/history.py``. Since every entry names its predecessor, a reader knows
for sure whether it holds *everything* after an offset: the chain from that offset on
must be unbroken. A break (trimmed, or a producer that stopped and restarted
recording) ends a read there, so the caller reports the loss instead of a silent gap.
"""

from __future__ import annotations

from typing import Any

import coredis

from protocol import Event, RemoteProtocolError, StreamSamples, decode_server

from ..edge.codecs import Outgoing

__all__ = ["RedisHistory", "history_key"]


def history_key(prefix: str, topic: str, epoch: str) -> str:
    return f"{prefix}h:{epoch}:{topic}"


def _offset(entry_id: Any) -> int:
    return int(bytes(entry_id).split(b"-")[0])


def _after(offset: int) -> str:
    """The first entry id after *offset* (offsets start at 0)."""
    return f"{max(offset + 1, 0)}-0"


def _prev(fields: Any) -> int | None:
    """The offset an entry names as its predecessor (None: unknown)."""
    value = bytes(fields[b"v"])
    return None if value == b"u" else int(value)


class RedisHistory:
    """``History`` over the Redis Streams the producing nodes write (module docstring).

    Args:
        client: an open coredis client (the bus's).
        prefix: ``bus.prefix``.
    """

    def __init__(self, client: coredis.Redis[bytes], prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    async def covers(self, topic: str, epoch: str, after: int) -> bool:
        """Whether every message of *topic* in *epoch* after *after* is held: the first
        entry after it names *after* as its predecessor."""
        entries = await self.client.xrange(history_key(self.prefix, topic, epoch),
                                           _after(after), "+", count=1)
        return bool(entries) and _prev(entries[0].field_values) == after

    async def head(self, topic: str, epoch: str) -> int | None:
        """The offset of the newest message held (None: none)."""
        entries = await self.client.xrevrange(history_key(self.prefix, topic, epoch),
                                              "+", "-", count=1)
        return _offset(entries[0].identifier) if entries else None

    async def read(self, topic: str, epoch: str, after: int, upto: int,
                   limit: int) -> list[tuple[int, Outgoing]]:
        """Up to *limit* messages with ``after < offset <= upto``, in order, as long as
        their chain from *after* is unbroken."""
        entries = await self.client.xrange(history_key(self.prefix, topic, epoch),
                                           _after(after), f"{upto}-1", count=limit)
        out: list[tuple[int, Outgoing]] = []
        cursor = after
        for entry in entries:
            offset, fields = _offset(entry.identifier), entry.field_values
            if _prev(fields) != cursor:
                break  # a break in the chain: what lies between is not held
            payload = fields[b"p"]
            payload = payload if isinstance(payload, bytes) else payload.encode()
            try:
                message = decode_server(payload)
            except RemoteProtocolError:
                break
            if not isinstance(message, StreamSamples | Event):
                break
            out.append((offset, Outgoing(message, message.priority, payload)))
            cursor = offset
        return out
