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
        refused_at_capacity: Callable[[], int] = lambda: 0,
        accept_errors: Callable[[], int] = lambda: 0,
        max_connections: Callable[[], int] = lambda: 0,
        descriptor_exhausted_seconds: Callable[[], int] = lambda: 0,
        summary_cache: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0),
    ) -> None:
        self._summary_cache = summary_cache
        self._descriptor_exhausted_seconds = descriptor_exhausted_seconds
        self._connections = connections
        self._published_seq = published_seq
        self._deliveries = deliveries
        self._refused_at_capacity = refused_at_capacity
        self._accept_errors = accept_errors
        self._max_connections = max_connections

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
        yield GaugeMetricFamily(
            "ratewire_websocket_max_connections",
            "WebSocket connections this process holds at most (limits.max_connections)",
            self._max_connections(),
        )
        yield CounterMetricFamily(
            "ratewire_websocket_refused_at_capacity",
            "WebSocket upgrades answered 503 because the process was at max_connections",
            self._refused_at_capacity(),
        )
        yield CounterMetricFamily(
            "ratewire_accept_errors",
            "Connections the server could not accept (out of file descriptors)",
            self._accept_errors(),
        )
        yield CounterMetricFamily(
            "ratewire_descriptors_exhausted_seconds",
            "Seconds the process had no file descriptor left (connections closed at accept)",
            self._descriptor_exhausted_seconds(),
        )
        hits, misses, entries = self._summary_cache()
        yield CounterMetricFamily(
            "ratewire_summary_cache_hits",
            "Summary and top-games reads answered from memory",
            hits,
        )
        yield CounterMetricFamily(
            "ratewire_summary_cache_misses",
            "Summary and top-games reads that went to the store",
            misses,
        )
        yield GaugeMetricFamily(
            "ratewire_summary_cache_entries", "Game summaries held in memory", entries
        )


def build_registry(collector: RuntimeCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
