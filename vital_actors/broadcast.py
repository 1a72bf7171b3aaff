"""Topic fan-out: each message is encoded once, then offered to every subscriber of its
topic without ever waiting for one.

Each subscriber has five priority lanes (:mod:`vital_actors.lanes`); the lanes' policy
decides per message whether it is queued or dropped, or whether the subscriber is
hopelessly behind (a CRITICAL message found its lane full): then it is evicted (told
why, closed with 1013 so it reconnects) rather than losing an alert silently or slowing
anyone else down.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import trio

from protocol import Dtype, Event, StreamSamples

from .edge.codecs import Outgoing
from .lanes import LaneCounts, Lanes, State, Verdict
from .messages import Filtered, Item, Publication
from .settings import LaneSettings
from .stats import Stats

__all__ = ["Hub", "Subscriber", "run_broadcast", "run_hub_rates", "sample_messages"]

_ids = itertools.count(1)


@dataclass(eq=False, slots=True)
class Subscriber:
    """One subscriber connection's place in the hub."""

    lanes: Lanes
    remote: str = ""
    codec: str = "plain"  # the key of its connection's wire codec
    id: int = field(default_factory=lambda: next(_ids))
    topics: set[str] = field(default_factory=set)
    since: float = 0.0  # trio.current_time() when it joined
    rate: float = 0.0  # messages/s written to its socket, over the last interval
    _last_sent: int = 0

    @property
    def evicted(self) -> str | None:
        """Why the hub let go of it, once it has."""
        return self.lanes.evicted


class Hub:
    """Who listens to which topic, and each subscriber's lanes. Single-threaded (trio).

    Args:
        buffer: messages one subscriber's lanes hold together (``buffers.subscriber``).
        settings: quotas, watermarks and the drop draws' seed.
        rng: the drop draws (seeded from ``settings.seed`` by default).
    """

    def __init__(self, *, buffer: int, settings: LaneSettings, stats: Stats,
                 rng: random.Random | None = None) -> None:
        self.capacities = settings.capacities(buffer)
        self.settings = settings
        self.stats = stats
        self.rng = rng if rng is not None else random.Random(settings.seed)
        self._topics: dict[str, set[Subscriber]] = defaultdict(set)
        self.subscribers: set[Subscriber] = set()
        self.departed = LaneCounts.zero()  # the counters of subscribers that have left

    def add(self, remote: str = "", codec: str = "plain") -> Subscriber:
        """A new subscriber; its connection's sender drains ``sub.lanes``."""
        lanes = Lanes(self.capacities, self.settings, draw=self.rng.random)
        sub = Subscriber(lanes, remote, codec, since=trio.current_time())
        self.subscribers.add(sub)
        self.stats.subscribers = len(self.subscribers)
        return sub

    def remove(self, sub: Subscriber) -> None:
        """Forget *sub* once its connection is done sending (idempotent)."""
        self.unsubscribe(sub, list(sub.topics))
        sub.lanes.close()
        sub.lanes.close_receiving()
        if sub in self.subscribers:
            self.subscribers.discard(sub)
            self.departed.add(sub.lanes.snapshot())
            self.stats.subscribers = len(self.subscribers)

    def subscribe(self, sub: Subscriber, topics: Iterable[str]) -> None:
        if sub.evicted is not None:
            return
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

    def publish(self, message: StreamSamples | Event) -> Outgoing | None:
        """Encode *message* once and offer it to its topic's subscribers (if any)."""
        if message.topic not in self._topics:
            return None
        out = Outgoing.of(message, message.priority)
        self.stats.totals.encoded += 1
        self.deliver(message.topic, out)
        return out

    def deliver(self, topic: str, out: Outgoing) -> None:
        """Offer *out* to every subscriber of *topic*, never blocking."""
        members = self._topics.get(topic)
        if not members:
            return
        behind: list[Subscriber] | None = None
        for sub in members:
            try:
                verdict = sub.lanes.offer(out)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                continue  # its connection is going away
            if verdict is Verdict.EVICT:
                behind = [*(behind or ()), sub]
        for sub in behind or ():
            self.evict(sub, f"too slow: {self.capacities[0]} critical messages waiting")

    def evict(self, sub: Subscriber, reason: str) -> None:
        """Stop offering to *sub* and tell its sender to close it with 1013."""
        self.unsubscribe(sub, list(sub.topics))
        sub.lanes.evict(reason)
        self.stats.totals.evicted_subscribers += 1

    def close_all(self) -> None:
        """Shutdown: every sender flushes what its lanes hold, then closes (1001)."""
        for sub in self.subscribers:
            sub.lanes.close()

    def totals(self) -> LaneCounts:
        """Counters over every subscriber, present and past."""
        out = LaneCounts.zero()
        out.add(self.departed)
        for sub in self.subscribers:
            out.add(sub.lanes.snapshot())
        return out

    def states(self) -> dict[State, int]:
        """How many subscribers are in each state now."""
        out = dict.fromkeys(State, 0)
        for sub in self.subscribers:
            out[sub.lanes.state] += 1
        return out

    def tick(self, dt: float) -> None:
        """Update each subscriber's messages/s over the last *dt* seconds."""
        for sub in self.subscribers:
            sent = sum(sub.lanes.counts.sent)
            sub.rate, sub._last_sent = (sent - sub._last_sent) / max(dt, 1e-9), sent


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
    """Fan out everything from *inbox*. When it ends, close every subscriber's lanes,
    so their connections flush what they hold and close: shutdown flows downstream."""
    with inbox:
        task_status.started()
        async for item in inbox:
            if isinstance(item, Filtered):
                for message in sample_messages(item, hub, filtered_dtype=filtered_dtype):
                    hub.publish(message)
            elif isinstance(item, Publication):
                hub.publish(item.message)
    hub.close_all()


async def run_hub_rates(hub: Hub, *, interval: float,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Every *interval* seconds, update each subscriber's messages/s."""
    task_status.started()
    last = trio.current_time()
    while True:
        await trio.sleep(interval)
        now = trio.current_time()
        hub.tick(now - last)
        last = now
