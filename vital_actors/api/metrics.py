"""Prometheus exposition: a collector that reads the server's counters at scrape time,
so the actors keep one set of counters and nothing is counted twice."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
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
        lag = self.server.loop_lag.summary()
        loop = GaugeMetricFamily("vital_loop_lag_ms", "Event-loop lag over the last minute",
                                 labels=["stat"])
        for stat in ("p50_ms", "p99_ms", "max_ms"):
            loop.add_metric([stat.removesuffix("_ms")], getattr(lag, stat))
        yield loop


def render(server: Server) -> bytes:
    """The Prometheus text format for *server*."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServerCollector(server))
    return generate_latest(registry)
