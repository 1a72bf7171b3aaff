"""Topic fan-out: each message is encoded and framed once, then handed to every
subscriber of its topic without ever waiting for one.

A subscriber's connection drains its own bounded buffer. If that buffer is full the
subscriber is hopelessly behind: it is evicted (told why, closed with 1013 so it
reconnects) rather than silently losing messages or slowing anyone else down.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import trio

from protocol import Dtype, Event, StreamSamples, encode, server_frame

from .messages import Filtered, Item, Publication
from .stats import Stats

__all__ = ["Hub", "Subscriber", "run_broadcast", "sample_messages"]

_ids = itertools.count(1)


@dataclass(eq=False, slots=True)
class Subscriber:
    """One subscriber connection's place in the hub."""

    outbox: trio.MemorySendChannel[bytes]
    id: int = field(default_factory=lambda: next(_ids))
    topics: set[str] = field(default_factory=set)
    sent: int = 0
    evicted: str | None = None  # why the hub let go of it


class Hub:
    """Who listens to which topic. Single-threaded (trio): no locks."""

    def __init__(self, *, capacity: int, stats: Stats) -> None:
        self.capacity = capacity
        self.stats = stats
        self._topics: dict[str, set[Subscriber]] = defaultdict(set)
        self.subscribers: set[Subscriber] = set()

    def add(self) -> tuple[Subscriber, trio.MemoryReceiveChannel[bytes]]:
        """A new subscriber and the receive end of its buffer (the caller owns it)."""
        tx, rx = trio.open_memory_channel[bytes](self.capacity)
        sub = Subscriber(tx)
        self.subscribers.add(sub)
        self.stats.subscribers = len(self.subscribers)
        return sub, rx

    def remove(self, sub: Subscriber) -> None:
        self.unsubscribe(sub, list(sub.topics))
        self.subscribers.discard(sub)
        self.stats.subscribers = len(self.subscribers)
        sub.outbox.close()

    def subscribe(self, sub: Subscriber, topics: Iterable[str]) -> None:
        for topic in topics:
            sub.topics.add(topic)
            self._topics[topic].add(sub)

    def unsubscribe(self, sub: Subscriber, topics: Iterable[str]) -> None:
        for topic in topics:
            sub.topics.discard(topic)
            members = self._topics.get(topic)
            if members is not None:
                members.discard(sub)
                if not members:
                    del self._topics[topic]

    def has_subscribers(self, topic: str) -> bool:
        return topic in self._topics

    def deliver(self, topic: str, frame: bytes, *, samples: int = 0) -> None:
        """Give the framed message to every subscriber of *topic*, never blocking."""
        members = self._topics.get(topic)
        if not members:
            return
        totals = self.stats.totals
        for sub in list(members):
            try:
                sub.outbox.send_nowait(frame)
            except trio.WouldBlock:
                self.evict(sub, f"too slow: {self.capacity} messages waiting")
                continue
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                # Its connection is going away: it closed its end before leaving the hub.
                continue
            sub.sent += 1
            totals.messages_out += 1
            totals.samples_out += samples
            totals.bytes_out += len(frame)

    def evict(self, sub: Subscriber, reason: str) -> None:
        sub.evicted = reason
        self.stats.totals.evicted_subscribers += 1
        self.remove(sub)

    def close_all(self) -> None:
        for sub in list(self.subscribers):
            self.remove(sub)


def sample_messages(item: Filtered, hub: Hub, *, filtered_dtype: str) -> Iterator[StreamSamples]:
    """The raw and filtered ``samples`` messages of a block, for topics someone follows."""
    block, info = item.block, item.block.stream
    hello = info.hello
    topic = f"stream/{info.id}/raw"
    if hub.has_subscribers(topic):
        yield StreamSamples(topic, info.id, block.seq, block.t0, info.fs, info.channels,
                            hello.dtype, hello.gain, hello.baseline, block.raw.tobytes())
    topic = f"stream/{info.id}/filtered"
    if hub.has_subscribers(topic):
        data = item.filtered.astype(np.dtype(filtered_dtype).newbyteorder("<")).tobytes()
        n = len(info.channels)
        yield StreamSamples(topic, info.id, block.seq, block.t0, info.fs, info.channels,
                            cast(Dtype, filtered_dtype), (1.0,) * n, (0.0,) * n, data,
                            extra={"filter_version": item.filter_version})


async def run_broadcast(
    inbox: trio.MemoryReceiveChannel[Item],
    *,
    hub: Hub,
    filtered_dtype: str,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Fan out everything from *inbox*. When it ends, close every subscriber's buffer,
    so their connections flush what they hold and close: shutdown flows downstream."""
    with inbox:
        task_status.started()
        async for item in inbox:
            if isinstance(item, Filtered):
                for message in sample_messages(item, hub, filtered_dtype=filtered_dtype):
                    _publish(hub, message, samples=item.block.n)
            elif isinstance(item, Publication):
                _publish(hub, item.message)
    hub.close_all()


def _publish(hub: Hub, message: StreamSamples | Event, *, samples: int = 0) -> None:
    if not hub.has_subscribers(message.topic):
        return
    frame = server_frame(encode(message))  # once, for every subscriber
    hub.stats.totals.encoded += 1
    hub.deliver(message.topic, frame, samples=samples)
