"""Prometheus metrics, read from the runtime's own counters at scrape time: nothing is added
to the per-event or per-request path."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry


class RuntimeCollector(Collector):
    """Connections, subscriptions, published events and deliveries."""

    def __init__(
        self,
        connections: Callable[[], int],
        published_seq: Callable[[], int],
        deliveries: Callable[[], int],
    ) -> None:
        self._connections = connections
        self._published_seq = published_seq
        self._deliveries = deliveries

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "ratewire_websocket_connections", "Open WebSocket connections", self._connections()
        )
        yield CounterMetricFamily(
            "ratewire_events_published",
            "Rating events handed to subscribers (the global offset)",
            self._published_seq(),
        )
        yield CounterMetricFamily(
            "ratewire_deliveries", "rating_update frames written to subscribers", self._deliveries()
        )


def build_registry(collector: RuntimeCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
