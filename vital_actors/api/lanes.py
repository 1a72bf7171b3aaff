"""The priority lanes as the API shows them: per subscriber (GET /api/v1/subscribers) and
over all of them (the ``lanes`` part of GET /api/v1/stats)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from pydantic import BaseModel, Field

from ..lanes import PRIORITIES, LaneCounts

if TYPE_CHECKING:
    from ..broadcast import Hub, Subscriber

__all__ = ["LaneOut", "LaneTotalsOut", "SubscriberList", "SubscriberOut", "drop_rate",
           "subscriber_out", "totals_out"]

NAMES = tuple(p.name.lower() for p in PRIORITIES)


class LaneOut(BaseModel):
    depth: int = Field(description="messages waiting")
    capacity: int = Field(description="the lane's quota of the buffer")
    utilization: float = Field(description="depth / capacity")
    queued: int
    sent: int = Field(description="written to the socket")
    dropped: int = Field(description="refused by the policy")


class SubscriberOut(BaseModel):
    id: int
    remote: str
    codec: str
    topics: list[str]
    connected_s: float
    state: str = Field(description="normal, backpressure or emergency")
    seconds_in: dict[str, float] = Field(description="time spent in each state")
    depth: int
    capacity: int
    utilization: float = Field(description="depth / capacity of the whole buffer")
    lanes: dict[str, LaneOut] = Field(description="by priority: critical ... bulk")
    sent: int
    dropped: int
    drop_rate: float = Field(description="dropped / offered")
    messages_per_s: float = Field(description="written to the socket, last interval")
    evicted: str | None = Field(description="why it was evicted (it is leaving)")


class SubscriberList(BaseModel):
    subscribers: list[SubscriberOut]


class LaneTotalsOut(BaseModel):
    """Every subscriber's lanes together, present and past (depths: present only)."""

    states: dict[str, int] = Field(description="subscribers in each state now")
    seconds_in: dict[str, float] = Field(description="subscriber-seconds in each state")
    depth: dict[str, int] = Field(description="messages waiting, by priority")
    queued: dict[str, int]
    sent: dict[str, int]
    dropped: dict[str, int]
    drop_rate: float = Field(description="dropped / offered")
    messages_per_s: float = Field(description="written to sockets, last interval")


def drop_rate(counts: LaneCounts) -> float:
    offered = sum(counts.queued) + sum(counts.dropped)
    return sum(counts.dropped) / offered if offered else 0.0


def subscriber_out(sub: Subscriber) -> SubscriberOut:
    ls = sub.lanes
    c = ls.snapshot()
    lanes = {name: LaneOut(depth=ls.depths[i], capacity=ls.capacities[i],
                           utilization=ls.depths[i] / ls.capacities[i], queued=c.queued[i],
                           sent=c.sent[i], dropped=c.dropped[i])
             for i, name in enumerate(NAMES)}
    return SubscriberOut(
        id=sub.id, remote=sub.remote, codec=sub.codec, topics=sorted(sub.topics),
        connected_s=trio.current_time() - sub.since, state=ls.state.value,
        seconds_in={s.value: t for s, t in c.seconds.items()}, depth=ls.depth,
        capacity=ls.size, utilization=ls.depth / ls.size, lanes=lanes, sent=sum(c.sent),
        dropped=sum(c.dropped), drop_rate=drop_rate(c), messages_per_s=sub.rate,
        evicted=sub.evicted)


def totals_out(hub: Hub, messages_per_s: float) -> LaneTotalsOut:
    c = hub.totals()
    depth = [sum(sub.lanes.depths[i] for sub in hub.subscribers) for i in range(len(NAMES))]
    return LaneTotalsOut(
        states={s.value: n for s, n in hub.states().items()},
        seconds_in={s.value: t for s, t in c.seconds.items()},
        depth=dict(zip(NAMES, depth, strict=True)), queued=dict(zip(NAMES, c.queued, strict=True)),
        sent=dict(zip(NAMES, c.sent, strict=True)),
        dropped=dict(zip(NAMES, c.dropped, strict=True)), drop_rate=drop_rate(c),
        messages_per_s=messages_per_s)
