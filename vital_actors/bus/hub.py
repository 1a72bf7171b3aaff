"""A hub whose messages also go to the other nodes on the bus, with their history."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import trio

from protocol import Event, Position, StreamSamples, position

from ..broadcast import Hub, Resume, Subscriber
from ..edge.codecs import Outgoing
from ..history import History
from .history import RedisHistory
from .redis import AWAY, RedisBus

__all__ = ["BusHub"]


class BusHub(Hub):
    """:class:`Hub` plus the bus: every message this node produces for a topic that is
    followed here or on another node is encoded once, delivered to this node's
    subscribers at once, and published for the others.

    Which topics other nodes follow comes from the bus (each node advertises the topics
    it wants: followed, being recovered, or kept in its ring for subscribers that may
    come back; see :class:`RedisBus`), refreshed every ``bus.interest_s``, at once when
    a topic new to a node is followed there, and when a device's stream is claimed.

    Subscriber recovery across nodes: each positioned message this node encodes is also
    recorded in its topic's Redis Stream (``history.py``); messages from other nodes
    enter this node's ring like its own. A subscriber that comes back here with a
    position in a topic this node has no history of (it is produced elsewhere) catches
    up from the Redis Stream, then from the ring, then live (:mod:`vital_actors.recovery`).
    """

    bus: RedisBus | None = None
    _local_history: History | None = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._recorded: dict[str, Position] = {}  # topic -> last position sent to Redis

    @property
    def history(self) -> History | None:
        """This node's own source (the live archive) and, with the bus, Redis Streams."""
        if self.bus is None or not self.bus.settings.history:
            return self._local_history
        return _BusHistory(self, self._local_history, self.bus.history)

    @history.setter
    def history(self, source: History | None) -> None:
        self._local_history = source

    def local_topics(self) -> set[str]:
        """The topics this node wants: followed, being recovered, or kept in its ring."""
        kept = {topic for topic in list(self.ring.logs) if self.wanted_here(topic)}
        return set(self._topics) | set(self._catching) | kept

    def wanted_here(self, topic: str) -> bool:
        """Do this node's subscribers (or its ring, for those who may come back) want
        *topic*, whoever produces it?"""
        if self._followed(topic):
            return True
        log = self.ring.logs.get(topic)
        return log is not None and (log.idle_since is None or
                                    trio.current_time() - log.idle_since <= self.ring.seconds)

    def subscribe(self, sub: Subscriber, topics: Iterable[str]) -> dict[str, Position]:
        """As :meth:`Hub.subscribe`; a topic new to this node is advertised on the bus at
        once, so a device that connects to another node just after starts publishing to
        this one from its first frame."""
        topics = list(topics)
        new = any(not self.wanted_here(topic) for topic in topics)
        out = super().subscribe(sub, topics)
        if new and self.bus is not None:
            self.bus.advertise_soon()
        return out

    def has_subscribers(self, topic: str) -> bool:
        return super().has_subscribers(topic) or (
            self.bus is not None and self.bus.followed_elsewhere(topic))

    def publish(self, message: StreamSamples | Event) -> Outgoing | None:
        if not self.wants(message.topic):
            return None
        out = self.encode(message)  # positioned, and kept in the ring (subscriber recovery)
        self.deliver(message.topic, out)
        if self.bus is None:
            return out
        elsewhere = self.bus.followed_elsewhere(message.topic)
        pos = position(out.message) if self.bus.settings.history else None
        if pos is None:
            if elsewhere:
                self.bus.publish(message.topic, out)
            return out
        # Chained to the last recorded message only when it is the one just before:
        # a reader of the history then knows for sure that nothing lies between.
        last = self._recorded.get(message.topic)
        prev = pos[1] - 1 if last == (pos[0], pos[1] - 1) else None
        self._recorded[message.topic] = pos
        self.bus.record(message.topic, out, epoch=pos[0], offset=pos[1], prev=prev,
                        publish=elsewhere)
        return out

    def forget_idle(self) -> None:
        """As :meth:`Hub.forget_idle`; and the last recorded position of each topic whose
        log went (its next record is then not chained: a reader of the history takes
        nothing for granted). Otherwise one entry stayed per topic ever recorded."""
        super().forget_idle()
        for topic in [t for t in self._recorded if t not in self.ring.logs]:
            del self._recorded[topic]

    def take_remote(self, message: StreamSamples | Event, payload: bytes) -> None:
        """A message another node produced: into the ring (for recovery here), then to
        this node's subscribers."""
        out = Outgoing(message, message.priority, payload)
        log = self._log(message.topic)
        if log is not None:
            pos = position(message)
            if pos is not None and pos[0] != log.epoch:
                log.new_epoch(pos[0], pos[1] - 1)
            self.ring.append(log, None if pos is None else pos[1], out)
        self.deliver(message.topic, out)

    async def fill_before(self, message: StreamSamples | Event) -> None:
        """Before *message* from another node: take in what its producer recorded but
        did not publish since the last one here (it did not know yet that this node
        wanted the topic), from the topic's Redis Stream, so nothing is skipped."""
        pos, log = position(message), self.ring.logs.get(message.topic)
        if (self.bus is None or not self.bus.settings.history or pos is None or log is None
                or log.epoch != pos[0] or log.last < 0 or pos[1] <= log.last + 1):
            return
        with contextlib.suppress(*AWAY):
            missing = await self.bus.history.read(message.topic, pos[0], log.last, pos[1] - 1,
                                                  self.bus.settings.history_maxlen)
            for _, out in missing:
                if isinstance(out.message, StreamSamples | Event) and \
                        out.message.topic == message.topic:
                    self.take_remote(out.message, out.payload)

    def recover(self, sub: Subscriber, topic: str, since: Position) -> Resume:
        """As :meth:`Hub.recover`; and for a topic this node has no history of (another
        node produces it), catch up from its Redis Stream."""
        if self.bus is not None and not self.wanted_here(topic):
            self.bus.advertise_soon()  # as in subscribe (the round runs after this returns)
        log = self._log(topic)
        fresh = log is not None and not log.entries and (log.epoch is None or log.last < 0)
        if self.bus is None or not self.bus.settings.history or log is None or not fresh \
                or sub.evicted is not None or self._followed(topic):
            return super().recover(sub, topic, since)
        epoch, offset = since
        log.new_epoch(epoch, offset)  # the ring speaks the producer's epoch from now on
        self._topics.get(topic, set()).discard(sub)
        sub.topics.add(topic)
        self._catching[topic].add(sub)
        log.idle_since = None
        return Resume(True, epoch, offset, replay=True, history=True)


class _BusHistory:
    """This node's own history source first, then the Redis Streams. Asked whether it
    covers a topic's epoch from Redis, it also tells the topic's ring how far the Redis
    Stream reaches, so the replay reads Redis up to there and the ring after it."""

    def __init__(self, hub: BusHub, local: History | None, remote: RedisHistory) -> None:
        self.hub, self.local, self.remote = hub, local, remote

    async def covers(self, topic: str, epoch: str, after: int) -> bool:
        if self.local is not None and await self.local.covers(topic, epoch, after):
            return True
        head = await self.remote.head(topic, epoch)
        log = self.hub.ring.logs.get(topic)
        if head is not None and log is not None and log.epoch == epoch:
            log.last = max(log.last, head)
            log.floor = max(log.floor if log.floor is not None else -1, head)
        return await self.remote.covers(topic, epoch, after)

    async def read(self, topic: str, epoch: str, after: int, upto: int,
                   limit: int) -> list[tuple[int, Outgoing]]:
        if self.local is not None:
            got = await self.local.read(topic, epoch, after, upto, limit)
            if got:
                return got
        return await self.remote.read(topic, epoch, after, upto, limit)
