"""A hub whose messages also go to the other nodes on the bus."""

from __future__ import annotations

from protocol import Event, StreamSamples

from ..broadcast import Hub
from ..edge.codecs import Outgoing
from .redis import RedisBus

__all__ = ["BusHub"]


class BusHub(Hub):
    """:class:`Hub` plus the bus: every message this node produces is delivered to its
    own subscribers at once and published for the other nodes' subscribers.

    Subscribers may be on any node, so every topic counts as followed: the broadcaster
    builds and encodes each message once, whether or not a local subscriber wants it.
    """

    bus: RedisBus | None = None

    def has_subscribers(self, topic: str) -> bool:
        return True

    def publish(self, message: StreamSamples | Event) -> Outgoing | None:
        out = Outgoing.of(message, message.priority)
        self.stats.totals.encoded += 1
        self.deliver(message.topic, out)
        if self.bus is not None:
            self.bus.publish(message.topic, out)
        return out
