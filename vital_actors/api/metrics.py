"""Prometheus exposition: a collector that reads the server's counters at scrape time,
so the actors keep one set of counters and nothing is counted twice."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..lanes import State
from .lanes import NAMES

if TYPE_CHECKING:
    from ..broadcast import Hub
    from ..graph import Server

__all__ = ["render"]


class _ServerCollector(Collector):
    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        stats = self.server.stats
        for name, value in stats.snapshot().items():
            yield CounterMetricFamily(f"vital_{name}", f"Total {name.replace('_', ' ')}",
                                      value=value)
        rejected = CounterMetricFamily("vital_rejected", "Connections closed for bad input",
                                       labels=["reason"])
        for reason, count in sorted(stats.totals.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield GaugeMetricFamily("vital_devices", "Connected devices", value=stats.devices)
        yield GaugeMetricFamily("vital_subscribers", "Connected subscribers",
                                value=stats.subscribers)
        yield GaugeMetricFamily("vital_streams", "Known streams", value=len(self.server.registry))
        depth = GaugeMetricFamily("vital_channel_depth", "Messages waiting in a channel",
                                  labels=["channel"])
        capacity = GaugeMetricFamily("vital_channel_capacity", "Capacity of a channel",
                                     labels=["channel"])
        for name, (used, cap) in self.server.channel_depths().items():
            depth.add_metric([name], used)
            capacity.add_metric([name], cap)
        yield depth
        yield capacity
        yield from _lanes(self.server.hub)
        lag = self.server.loop_lag.summary()
        loop = GaugeMetricFamily("vital_loop_lag_ms", "Event-loop lag over the last minute",
                                 labels=["stat"])
        for stat in ("p50_ms", "p99_ms", "max_ms"):
            loop.add_metric([stat.removesuffix("_ms")], getattr(lag, stat))
        yield loop


def _lanes(hub: Hub) -> Iterator[Metric]:
    """The priority lanes: over all subscribers, and per subscriber (label ``subscriber``)."""
    totals = hub.totals()
    for name, values in (("queued", totals.queued), ("sent", totals.sent),
                         ("dropped", totals.dropped)):
        family = CounterMetricFamily(f"vital_lane_{name}", f"Messages {name} in subscriber "
                                     "lanes, by priority", labels=["priority"])
        for priority, value in zip(NAMES, values, strict=True):
            family.add_metric([priority], value)
        yield family
    states = GaugeMetricFamily("vital_lane_subscribers", "Subscribers in each lane state",
                               labels=["state"])
    seconds = CounterMetricFamily("vital_lane_state_seconds", "Subscriber-seconds spent in "
                                  "each lane state", labels=["state"])
    for state, n in hub.states().items():
        states.add_metric([state.value], n)
        seconds.add_metric([state.value], totals.seconds[state])
    yield states
    yield seconds
    depth = GaugeMetricFamily("vital_subscriber_lane_depth", "Messages waiting in a "
                              "subscriber's lane", labels=["subscriber", "priority"])
    util = GaugeMetricFamily("vital_subscriber_utilization", "Occupancy of a subscriber's "
                             "whole buffer (0..1)", labels=["subscriber"])
    current = GaugeMetricFamily("vital_subscriber_state", "1 for a subscriber's current lane "
                              "state", labels=["subscriber", "state"])
    sent = CounterMetricFamily("vital_subscriber_sent", "Messages written to a subscriber",
                               labels=["subscriber", "priority"])
    dropped = CounterMetricFamily("vital_subscriber_dropped", "Messages dropped for a "
                                  "subscriber by the lane policy", labels=["subscriber",
                                                                           "priority"])
    rate = GaugeMetricFamily("vital_subscriber_messages_per_second", "Messages written to "
                             "a subscriber per second", labels=["subscriber"])
    for sub in hub.subscribers:
        ls, sid = sub.lanes, str(sub.id)
        util.add_metric([sid], ls.depth / ls.size)
        rate.add_metric([sid], sub.rate)
        for s in State:
            current.add_metric([sid, s.value], float(s is ls.state))
        for i, priority in enumerate(NAMES):
            depth.add_metric([sid, priority], ls.depths[i])
            sent.add_metric([sid, priority], ls.counts.sent[i])
            dropped.add_metric([sid, priority], ls.counts.dropped[i])
    yield from (depth, util, current, sent, dropped, rate)


def render(server: Server) -> bytes:
    """The Prometheus text format for *server*."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServerCollector(server))
    return generate_latest(registry)
