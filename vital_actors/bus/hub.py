"""A hub whose messages also go to the other nodes on the bus."""

from __future__ import annotations

from protocol import Event, StreamSamples

from ..broadcast import Hub
from ..edge.codecs import Outgoing
from .redis import RedisBus

__all__ = ["BusHub"]


class BusHub(Hub):
    """:class:`Hub` plus the bus: every message this node produces for a topic that is
    followed here or on another node is encoded once, delivered to this node's
    subscribers at once, and published for the others.

    Which topics other nodes follow comes from the bus (each node advertises its local
    topics; see :class:`RedisBus`), refreshed every ``bus.interest_s``: a subscriber of a
    new topic on another node gets it from this node within that time.
    """

    bus: RedisBus | None = None

    def local_topics(self) -> set[str]:
        """The topics this node's own subscribers follow."""
        return set(self._topics)

    def followed_here(self, topic: str) -> bool:
        return super().has_subscribers(topic)

    def has_subscribers(self, topic: str) -> bool:
        return super().has_subscribers(topic) or (
            self.bus is not None and self.bus.followed_elsewhere(topic))

    def publish(self, message: StreamSamples | Event) -> Outgoing | None:
        if not self.wants(message.topic):
            return None
        out = self.encode(message)  # positioned, and kept in the ring (subscriber recovery)
        self.deliver(message.topic, out)
        if self.bus is not None and self.bus.followed_elsewhere(message.topic):
            self.bus.publish(message.topic, out)
        return out
