"""Topic fan-out: each message is encoded once, then offered to every subscriber of its
topic without ever waiting for one.

Each subscriber has five priority lanes (:mod:`vital_actors.lanes`); the lanes' policy
decides per message whether it is queued or dropped, or whether the subscriber is
hopelessly behind (a CRITICAL message found its lane full): then it is evicted (told
why, closed with 1013 so it reconnects) rather than losing an alert silently or slowing
anyone else down.

Subscriber recovery (issue 6): the hub gives every message it encodes a position on its
topic and keeps it in the ring (:mod:`vital_actors.history`) while anyone follows the
topic and for ``recovery.seconds`` after the last one left; :meth:`Hub.recover` decides
what a ``subscribe.since`` gets (:mod:`vital_actors.recovery` replays it).
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import numpy.typing as npt
import trio

from protocol import Dtype, Event, Position, Priority, StreamSamples, position

from .edge.codecs import Outgoing
from .history import PROCESS_TOKEN, History, Ring, TopicLog, is_sample_topic, stamp
from .lanes import LaneCounts, Lanes, State, Verdict
from .messages import Block, Filtered, Item, Publication, put, take_batch
from .settings import LaneSettings, RecoverySettings
from .stats import Stats
from .streams import StreamInfo, StreamRegistry

__all__ = ["Hub", "Resume", "Subscriber", "admit", "announce", "filtered_message",
           "publish_filtered", "raw_message", "run_broadcast", "run_hub_rates",
           "sample_messages"]

_log = logging.getLogger(__name__)

_ids = itertools.count(1)
_BATCH = 256  # items the broadcaster takes from its inbox per round


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
    replays: dict[str, object] = field(default_factory=dict)  # topic -> its current replay
    _last_sent: int = 0

    @property
    def evicted(self) -> str | None:
        """Why the hub let go of it, once it has."""
        return self.lanes.evicted


@dataclass(frozen=True, slots=True)
class Resume:
    """What a ``subscribe.since`` gets for one topic: whether nothing is lost, and the
    position after which messages follow; *replay* says whether a replay must run
    (:func:`vital_actors.recovery.run_catch_up`), *history* whether from the archive."""

    recovered: bool
    epoch: str | None
    offset: int
    replay: bool = False
    history: bool = False


class Hub:
    """Who listens to which topic, and each subscriber's lanes. Single-threaded (trio).

    Args:
        buffer: messages one subscriber's lanes hold together (``buffers.subscriber``).
        settings: quotas, watermarks and the drop draws' seed.
        rng: the drop draws (seeded from ``settings.seed`` by default).
        recovery: positions and the ring (None: the defaults).
        registry: where restored streams' positions come from (after a restart).
    """

    def __init__(self, *, buffer: int, settings: LaneSettings, stats: Stats,
                 rng: random.Random | None = None, recovery: RecoverySettings | None = None,
                 registry: StreamRegistry | None = None) -> None:
        self.capacities = settings.capacities(buffer)
        self.settings = settings
        self.stats = stats
        self.rng = rng if rng is not None else random.Random(settings.seed)
        self._topics: dict[str, set[Subscriber]] = defaultdict(set)
        self.subscribers: set[Subscriber] = set()
        self.departed = LaneCounts.zero()  # the counters of subscribers that have left
        self.recovery = recovery or RecoverySettings()
        self.ring = Ring(seconds=self.recovery.seconds, max_bytes=self.recovery.max_bytes)
        self.registry = registry
        self.history: History | None = None  # older raw messages (set by the server)
        self.epoch_token = PROCESS_TOKEN  # names stream runs in epochs (the archive's, if any)
        self.published: dict[str, tuple[int, int]] = {}  # sample topic -> (run, last seq out)
        self._catching: dict[str, set[Subscriber]] = defaultdict(set)  # replays running
        self.closed = False  # close_all was called: the server is stopping

    def add(self, remote: str = "", codec: str = "plain") -> Subscriber:
        """A new subscriber; its connection's sender drains ``sub.lanes``. Once the hub
        is closed (a connection accepted as the server began to stop), its lanes come
        closed: its sender closes it with 1001 at once rather than holding up the stop."""
        lanes = Lanes(self.capacities, self.settings, draw=self.rng.random)
        if self.closed:
            lanes.close()
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

    def subscribe(self, sub: Subscriber, topics: Iterable[str]) -> dict[str, Position]:
        """Follow *topics* live from now; each one's position now (when it has one):
        what follows it comes to *sub*."""
        out: dict[str, Position] = {}
        if sub.evicted is not None:
            return out
        for topic in topics:
            sub.topics.add(topic)
            self._catching.get(topic, set()).discard(sub)
            self._topics[topic].add(sub)
            log = self._log(topic)
            if log is not None and log.epoch is not None:
                out[topic] = (log.epoch, log.last)
        return out

    def recover(self, sub: Subscriber, topic: str, since: Position) -> Resume:
        """Follow *topic* after position *since*: live at once when nothing was missed or
        nothing can be replayed (``recovered`` false), else in catch-up (the caller
        starts the replay; it joins the live stream at the ring's head)."""
        log = self._log(topic)
        epoch, offset = since
        if sub.evicted is not None or log is None or log.epoch != epoch or offset > log.last:
            self.subscribe(sub, [topic])
            return Resume(False, None if log is None else log.epoch,
                          -1 if log is None else log.last)
        if offset == log.last:
            self.subscribe(sub, [topic])
            return Resume(True, epoch, offset)
        self._topics.get(topic, set()).discard(sub)
        sub.topics.add(topic)
        self._catching[topic].add(sub)
        log.idle_since = None
        if log.floor is not None and offset >= log.floor:
            return Resume(True, epoch, offset, replay=True)
        if self.history is not None and topic.endswith("/raw"):
            return Resume(True, epoch, offset, replay=True, history=True)
        return self.partly(log)

    def partly(self, log: TopicLog) -> Resume:
        """What was missed is partly gone: replay what the ring holds, from its floor."""
        floor = log.floor if log.floor is not None else log.last
        return Resume(False, log.epoch, floor, replay=True)

    def catching_up(self, sub: Subscriber, topic: str) -> bool:
        return sub in self._catching.get(topic, ())

    def go_live(self, sub: Subscriber, topic: str) -> None:
        """End *sub*'s replay of *topic*: from the next message on, it gets it live."""
        if self.catching_up(sub, topic):
            self.subscribe(sub, [topic])

    def unsubscribe(self, sub: Subscriber, topics: Iterable[str]) -> None:
        for topic in topics:
            sub.topics.discard(topic)
            for table in (self._topics, self._catching):
                members = table.get(topic)
                if members is not None:
                    members.discard(sub)
                    if not members:
                        del table[topic]
            log = self.ring.logs.get(topic)
            if log is not None and not self._followed(topic):
                log.idle_since = trio.current_time()  # kept recovery.seconds more

    def _followed(self, topic: str) -> bool:
        return topic in self._topics or topic in self._catching

    def has_subscribers(self, topic: str) -> bool:
        """Whether anyone follows *topic* (live, or catching up)."""
        return self._followed(topic)

    def wants(self, topic: str) -> bool:
        """Whether messages of *topic* are to be encoded here: someone follows it, or its
        ring is still kept for subscribers that may come back (``recovery.seconds``)."""
        if self.has_subscribers(topic):
            return True
        log = self.ring.logs.get(topic)
        if log is None:
            return False
        if log.idle_since is not None and trio.current_time() - log.idle_since > self.ring.seconds:
            self.ring.drop(topic)
            return False
        return True

    def stream_epoch(self, run: int) -> str:
        return f"{self.epoch_token}.{run}"

    def _log(self, topic: str) -> TopicLog | None:
        """*topic*'s log, opened at its current position if need be (None: positions off)."""
        if not self.recovery.enabled:
            return None
        log = self.ring.logs.get(topic)
        if log is None and is_sample_topic(topic):
            stream = topic.split("/")[1]
            known = self.published.get(topic)
            info = self.registry.get(stream) if self.registry is not None else None
            if known is None:  # a stream unknown here begins with run 0, seq 0
                known = (0, -1) if info is None else (info.run, info.next_seq - 1)
            return self.ring.open(topic, epoch=self.stream_epoch(known[0]), last=known[1])
        return log if log is not None else self.ring.open(topic)

    def publish(self, message: StreamSamples | Event) -> Outgoing | None:
        """Encode *message* once and offer it to its topic's subscribers (if any)."""
        if not self.wants(message.topic):
            return None
        out = self.encode(message)
        self.deliver(message.topic, out)
        return out

    def encode(self, message: StreamSamples | Event) -> Outgoing:
        """*message* with its position, encoded once, and kept in its topic's ring.

        Sample messages come positioned (:func:`sample_messages`); other topics' are
        numbered here. A raw topic's ``status`` events stay unpositioned.
        """
        self.stats.totals.encoded += 1
        log = self._log(message.topic)
        if log is None:
            return Outgoing.of(message, message.priority)
        if is_sample_topic(message.topic):
            pos = position(message)
            offset = None if pos is None else pos[1]
            if pos is not None and pos[0] != log.epoch:
                log.new_epoch(pos[0], pos[1] - 1)
        else:
            offset = log.last + 1
            message = stamp(message, log.epoch or "", offset)
        out = Outgoing.of(message, message.priority)
        self.ring.append(log, offset, out)
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
        self.closed = True
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
        """Update each subscriber's messages/s over the last *dt* seconds; forget the
        logs of topics nobody followed for ``recovery.seconds``."""
        for sub in self.subscribers:
            sent = sum(sub.lanes.counts.sent)
            sub.rate, sub._last_sent = (sent - sub._last_sent) / max(dt, 1e-9), sent
        self.forget_idle()

    def forget_idle(self) -> None:
        """Drop the logs of topics nobody followed for ``recovery.seconds``. A topic
        still published is dropped by :meth:`wants` when its next message comes; this
        finds the others (a job that ended, a stream gone, a topic never published),
        whose logs would otherwise stay for good, one per topic ever subscribed to."""
        for topic in [t for t, log in self.ring.logs.items() if log.idle_since is not None]:
            self.wants(topic)


def _where(hub: Hub, block: Block) -> dict[str, object]:
    return ({"epoch": hub.stream_epoch(block.run), "offset": block.seq}
            if hub.recovery.enabled else {})


def raw_message(block: Block, hub: Hub) -> StreamSamples | None:
    """The ``samples`` message of *block*'s raw topic, if that topic is wanted;
    positioned by the frame's seq in its run's epoch (when recovery is on)."""
    info = block.stream
    topic = f"stream/{info.id}/raw"
    hub.published[topic] = (block.run, block.seq)
    if not hub.wants(topic):
        return None
    hello = info.hello
    return StreamSamples(topic, info.id, block.seq, block.t0, info.fs, info.channels,
                         hello.dtype, hello.gain, hello.baseline, block.raw.tobytes(),
                         extra=_where(hub, block))


async def admit(outbox: trio.MemorySendChannel[Item], live: Hub | None, stream: StreamInfo,
                run: int, seq: int, t0: int, raw: npt.NDArray[np.generic]) -> None:
    """Start a frame on its way as a :class:`Block`: its raw-topic message published
    through *live* at once, the block down *outbox* for the rest. Without *live* (a
    pipeline whose broadcaster publishes raw topics, ``run_broadcast(raw=True)``), only
    the latter. Parks while *outbox* is full."""
    block = Block(stream, run, seq, t0, raw, trio.current_time())
    if live is not None:
        message = raw_message(block, live)
        if message is not None:
            live.publish(message)
    await put(outbox, block)


async def announce(stream: str, state: str, outbox: trio.MemorySendChannel[Item],
                   live: Hub | None, **fields: object) -> None:
    """A ``status`` event on ``streams`` and on the stream's raw topic: through *live*
    (in order with raw samples published there), or down *outbox* in order with the
    data when the broadcaster publishes raw topics."""
    body = {"stream": stream, "state": state, **fields}
    for topic in ("streams", f"stream/{stream}/raw"):
        event = Event("status", topic, Priority.NORMAL, body)
        if live is not None:
            live.publish(event)
        else:
            await outbox.send(Publication(event))


def filtered_message(item: Filtered, hub: Hub, *, filtered_dtype: str) -> StreamSamples | None:
    """The ``samples`` message of a filtered block's filtered topic, if that topic is
    wanted; positioned like the raw one."""
    block, info = item.block, item.block.stream
    topic = f"stream/{info.id}/filtered"
    hub.published[topic] = (block.run, block.seq)
    if not hub.wants(topic):
        return None
    data = item.filtered.astype(np.dtype(filtered_dtype).newbyteorder("<")).tobytes()
    n = len(info.channels)
    return StreamSamples(topic, info.id, block.seq, block.t0, info.fs, info.channels,
                         cast(Dtype, filtered_dtype), (1.0,) * n, (0.0,) * n, data,
                         extra={"filter_version": item.filter_version, **_where(hub, block)})


def publish_filtered(hub: Hub, item: Filtered, *, filtered_dtype: str) -> None:
    """Publish *item*'s filtered topic message (the filter stage does, in the server)."""
    message = filtered_message(item, hub, filtered_dtype=filtered_dtype)
    if message is not None:
        hub.publish(message)


def sample_messages(item: Filtered, hub: Hub, *, filtered_dtype: str, raw: bool = True,
                    filtered: bool = True) -> Iterator[StreamSamples]:
    """The raw and the filtered ``samples`` messages of a block (each if asked for), for
    topics someone follows."""
    if raw:
        message = raw_message(item.block, hub)
        if message is not None:
            yield message
    if filtered:
        message = filtered_message(item, hub, filtered_dtype=filtered_dtype)
        if message is not None:
            yield message


async def run_broadcast(
    inbox: trio.MemoryReceiveChannel[Item],
    *,
    hub: Hub,
    filtered_dtype: str,
    raw: bool = True,
    filtered: bool = True,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Fan out everything from *inbox*. With *raw* or *filtered* False those sample
    topics are not published here: in the server ingest and replays publish raw ones
    (:func:`admit`) and the filter stage filtered ones (:func:`publish_filtered`), as
    soon as they exist. When it ends, close every subscriber's lanes, so their
    connections flush what they hold and close: shutdown flows downstream."""
    with inbox:
        task_status.started()
        while True:
            try:  # what waits, at once: one round trip through the scheduler, not one each
                batch = await take_batch(inbox, max_batch=_BATCH)
            except trio.EndOfChannel:
                break
            for item in batch:
                try:
                    if isinstance(item, Filtered):
                        for message in sample_messages(item, hub, raw=raw, filtered=filtered,
                                                       filtered_dtype=filtered_dtype):
                            hub.publish(message)
                    elif isinstance(item, Publication):
                        hub.publish(item.message)
                except Exception:  # a bug (a message that does not encode): lose it alone
                    _log.exception("broadcast: could not publish %r; dropped", item)
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
