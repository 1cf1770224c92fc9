"""Prometheus metrics (``/metrics``).

Most series are counts the runtime keeps anyway (plain ints on the hub, the sessions, the
limiters); they are copied into prometheus-client metrics when scraped, so the per-delivery
path pays nothing for them. Only the latency histograms are observed as things happen: once
per event (commit to send, and the stages of the latency budget), once per REST request and
once per garbage collection.

Several workers on one host (``serve --workers N``) share a port, so a scrape reaches any one
of them. They run prometheus-client's multi-process mode: the supervisor gives them one
``PROMETHEUS_MULTIPROC_DIR``, each worker copies its counts into its own file every second
(and right before answering a scrape), and any worker's ``/metrics`` answers the sum over all
workers. Separate instances (hosts, containers) are scraped one by one, each with its own
``instance`` label, as Prometheus does by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from ratewire.observability.latency import COMMIT_PARTS, STAGE_BUCKETS, STAGES

#: Set by ``serve --workers`` for its workers (prometheus-client reads it at import).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: How often a worker copies its counts into its multi-process file.
SYNC_SECONDS = 1.0
#: Seconds from commit to the frame leaving the server: sub-millisecond to a few seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
GaugeMode = Literal["livesum", "livemax"]
#: Route label of requests no route matched (keeps the label set bounded).
UNMATCHED_ROUTE = "unmatched"


def _zero() -> int:
    return 0


def _none() -> Mapping[str, int]:
    return {}


def _no_consumers() -> Mapping[tuple[str, str, str], tuple[int, int, int]]:
    return {}


@dataclass
class MetricSources:
    """Where each series is read at scrape time (callables, so the owners stay unaware)."""

    connections: Callable[[], int] = _zero
    connections_opened: Callable[[], int] = _zero
    #: Close code -> connections closed with it (1006: the peer vanished without one).
    connections_closed: Callable[[], Mapping[str, int]] = _none
    #: Topic kind (global, game, user, game_wildcard) -> subscriptions.
    subscriptions: Callable[[], Mapping[str, int]] = _none
    events_published: Callable[[], int] = _zero
    deliveries: Callable[[], int] = _zero
    slow_consumers_cut: Callable[[], int] = _zero
    relay_lag_seconds: Callable[[], float] = lambda: 0.0
    #: Where the limit applied (rest, ws_message, ws_connect_rate, ws_per_ip, ws_per_user)
    #: -> refusals.
    rate_limited: Callable[[], Mapping[str, int]] = _none
    #: Where (rest, relay) -> storage operations that failed.
    storage_errors: Callable[[], Mapping[str, int]] = _none
    max_connections: Callable[[], int] = _zero
    refused_at_capacity: Callable[[], int] = _zero
    accept_errors: Callable[[], int] = _zero
    descriptors_exhausted_seconds: Callable[[], int] = _zero
    summary_cache: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0)
    #: Outcome (sent, received, dropped) -> commit notices between workers of one host.
    worker_notices: Callable[[], Mapping[str, int]] = _none
    #: Outcome (delivered, failed, gone) -> webhook delivery attempts.
    webhook_attempts: Callable[[], Mapping[str, int]] = _none
    #: Events delivered to webhooks (each event once per webhook and topic, retries aside).
    webhook_deliveries: Callable[[], int] = _zero
    #: Webhook id -> age in seconds of its oldest event not delivered yet (held here).
    webhook_backlog_seconds: Callable[[], Mapping[str, float]] = _none
    #: Audit entries dropped (storage away past the buffer, or refused by the store).
    audit_entries_dropped: Callable[[], int] = _zero
    #: Audit entries whose text (from untrusted claims) was escaped to be storable.
    audit_entries_made_safe: Callable[[], int] = _zero
    #: (owner, consumer, topic) -> (lag, pending, members here) of the durable consumers with
    #: members on this instance.
    consumers: Callable[[], Mapping[tuple[str, str, str], tuple[int, int, int]]] = _no_consumers
    #: (streams computed, their subscribers, computations, summary frames sent) on this
    #: instance's summary streams.
    summary_streams: Callable[[], tuple[int, int, int, int]] = lambda: (0, 0, 0, 0)
    #: (distinct topic and filter pairs held, filter evaluations) in the hub.
    filters: Callable[[], tuple[int, int]] = lambda: (0, 0)


@dataclass
class _Copied:
    """A counter fed from a running total: adds what the total grew by since the last copy."""

    metric: Counter
    seen: dict[tuple[str, ...], float] = field(default_factory=dict)

    def copy(self, total: float, *labels: str) -> None:
        grown = total - self.seen.get(labels, 0)
        if grown > 0:
            (self.metric.labels(*labels) if labels else self.metric).inc(grown)
            self.seen[labels] = total


class Metrics:
    """The process's metrics: a registry to scrape, two histograms to observe into."""

    def __init__(self, sources: MetricSources, multiprocess_dir: str | None = None) -> None:
        self.sources = sources
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=False)
        self._define_connection_series()
        self._define_delivery_series()
        self._define_capacity_series()
        self._define_webhook_and_audit_series()
        self._define_consumer_series()
        self._define_histograms()

    def _counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> _Copied:
        return _Copied(Counter(name, doc, labels, registry=self.registry))

    def _gauge(
        self, name: str, doc: str, labels: tuple[str, ...] = (), mode: GaugeMode = "livesum"
    ) -> Gauge:
        # live*: a dead worker's gauges leave the totals (its counters stay in).
        return Gauge(name, doc, labels, registry=self.registry, multiprocess_mode=mode)

    def _define_connection_series(self) -> None:
        self._connections = self._gauge(
            "ratewire_websocket_connections", "Open WebSocket connections", mode="livesum"
        )
        self._opened = self._counter("ratewire_websocket_opened", "WebSocket connections opened")
        self._closed = self._counter(
            "ratewire_websocket_closed",
            "WebSocket connections closed, by close code (1006: gone without a close frame)",
            ("code",),
        )
        self._subscriptions = self._gauge(
            "ratewire_subscriptions", "Subscriptions held, by topic kind", ("kind",), "livesum"
        )

    def _define_delivery_series(self) -> None:
        self._published = self._counter(
            "ratewire_events_published",
            "Rating events this instance's relay handed to the broker (summed over instances: "
            "every committed event once)",
        )
        self._deliveries = self._counter(
            "ratewire_deliveries", "rating_update frames written to subscribers"
        )
        self._slow = self._counter(
            "ratewire_slow_consumers_cut",
            "Connections closed with 4009 because their send buffer overflowed",
        )
        self._relay_lag = self._gauge(
            "ratewire_relay_lag_seconds",
            "Age of the oldest committed event the relay has not published yet (0: none)",
            mode="livemax",
        )

    def _define_capacity_series(self) -> None:
        self._rate_limited = self._counter(
            "ratewire_rate_limited",
            "Requests, messages and connections refused by a limit, by limit",
            ("limit",),
        )
        self._storage_errors = self._counter(
            "ratewire_storage_errors",
            "Storage operations that failed (the store was unreachable or refused), by caller",
            ("where",),
        )
        self._max_connections = self._gauge(
            "ratewire_websocket_max_connections",
            "WebSocket connections this process holds at most (limits.max_connections)",
            mode="livesum",
        )
        self._refused_at_capacity = self._counter(
            "ratewire_websocket_refused_at_capacity",
            "WebSocket upgrades answered 503 because the process was at max_connections",
        )
        self._accept_errors = self._counter(
            "ratewire_accept_errors",
            "Connections the server could not accept (out of file descriptors)",
        )
        self._descriptors_exhausted = self._counter(
            "ratewire_descriptors_exhausted_seconds",
            "Seconds the process had no file descriptor left (connections closed at accept)",
        )
        self._cache_hits = self._counter(
            "ratewire_summary_cache_hits", "Summary and top-games reads answered from memory"
        )
        self._cache_misses = self._counter(
            "ratewire_summary_cache_misses", "Summary and top-games reads that went to the store"
        )
        self._cache_entries = self._gauge(
            "ratewire_summary_cache_entries", "Game summaries held in memory", mode="livesum"
        )
        self._summary_streams = self._gauge(
            "ratewire_summary_streams",
            "Summary streams computed here: one per topic and options, however many read it",
        )
        self._summary_subscribers = self._gauge(
            "ratewire_summary_subscribers", "Subscriptions to summary streams"
        )
        self._summary_computations = self._counter(
            "ratewire_summary_computations",
            "Summary stream states read (one per stream per interval with a change)",
        )
        self._summary_frames = self._counter(
            "ratewire_summary_frames", "summary frames sent (first states and updates)"
        )
        self._filter_groups = self._gauge(
            "ratewire_filter_groups",
            "Distinct (topic, filter expression) pairs held by live subscriptions",
        )
        self._filter_evaluations = self._counter(
            "ratewire_filter_evaluations",
            "Filter evaluations: one per event, topic and distinct expression",
        )
        self._worker_notices = self._counter(
            "ratewire_worker_notices",
            "Commit notices between the workers of one host (serve --workers, in-process "
            "broker), by outcome: sent, received, dropped (the sibling reads the store instead)",
            ("outcome",),
        )

    def _define_webhook_and_audit_series(self) -> None:
        self._webhook_attempts = self._counter(
            "ratewire_webhook_attempts",
            "Webhook POSTs, by outcome: delivered (2xx), failed (retried), gone (410: disabled)",
            ("outcome",),
        )
        self._webhook_deliveries = self._counter(
            "ratewire_webhook_deliveries", "Events delivered to webhooks (2xx answers)"
        )
        self._webhook_backlog = self._gauge(
            "ratewire_webhook_oldest_undelivered_seconds",
            "Age of each webhook's oldest event not delivered yet (0: none), on its deliverer",
            ("webhook",),
            mode="livemax",
        )
        self._webhook_backlog_labels: set[str] = set()
        self._audit_dropped = self._counter(
            "ratewire_audit_entries_dropped",
            "Audit entries lost: storage unreachable past the buffer, or refused by the store",
        )
        self._audit_made_safe = self._counter(
            "ratewire_audit_entries_made_safe",
            "Audit entries recorded with text no store can keep (lone surrogates) escaped",
        )

    def _define_consumer_series(self) -> None:
        labels = ("owner", "consumer", "topic")
        self._consumer_lag = self._gauge(
            "ratewire_consumer_lag",
            "Durable consumer: the topic's head minus its ack floor (consumers with members here)",
            labels,
            mode="livemax",
        )
        self._consumer_pending = self._gauge(
            "ratewire_consumer_pending",
            "Durable consumer: events delivered and not acked yet",
            labels,
            mode="livemax",
        )
        self._consumer_members = self._gauge(
            "ratewire_consumer_members", "Durable consumer: members on this instance", labels
        )
        self._consumer_labels: set[tuple[str, str, str]] = set()

    def _sync_consumers(self) -> None:
        found = self.sources.consumers()
        series = (self._consumer_lag, self._consumer_pending, self._consumer_members)
        for departed in self._consumer_labels - found.keys():
            for gauge in series:
                gauge.remove(*departed)  # no member here any more
        self._consumer_labels = set(found)
        for labels, values in found.items():
            for gauge, value in zip(series, values, strict=True):
                gauge.labels(*labels).set(value)

    def _define_histograms(self) -> None:
        self.commit_to_send = Histogram(
            "ratewire_commit_to_send_seconds",
            "Seconds from an event's commit to its frames being handed to subscribers",
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self._http_requests = Counter(
            "ratewire_http_requests",
            "REST requests answered, by route template, method and status",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self._http_latency = Histogram(
            "ratewire_http_request_duration_seconds",
            "Seconds from a REST request's arrival to its response, by route template",
            ("route", "method"),
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )

        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        stages = Histogram(
            "ratewire_delivery_stage_seconds",
            "Seconds each stage from a write's request to its last socket write took, once per "
            "event: commit, relay, encode, first_write, fan_out (the latency budget); on the "
            "SQL stores also commit's parts: commit_queue, commit_transaction, commit_wake",
            ("stage",),
            registry=self.registry,
            buckets=STAGE_BUCKETS,
        )
        # Children looked up once: observe_stage runs five times per event.
        self._stage_children = {stage: stages.labels(stage) for stage in (*STAGES, *COMMIT_PARTS)}
        gc_pauses = Histogram(
            "ratewire_gc_pause_seconds",
            "Seconds each garbage collection paused the process, by generation",
            ("generation",),
            registry=self.registry,
            buckets=STAGE_BUCKETS,
        )
        self._gc_children = [gc_pauses.labels(str(generation)) for generation in range(3)]

    # -- observed as things happen ---------------------------------------------------------

    def observe_delivery(self, committed_at: float) -> None:
        """An event (committed at wall time ``committed_at``) was handed to the hub."""
        self.commit_to_send.observe(max(0.0, time.time() - committed_at))

    def observe_stage(self, stage: str, seconds: float) -> None:
        """One event spent ``seconds`` in ``stage`` (see ratewire.observability.latency)."""
        self._stage_children[stage].observe(seconds)

    def observe_gc_pause(self, generation: int, seconds: float) -> None:
        """A garbage collection of ``generation`` paused the process for ``seconds``."""
        self._gc_children[generation].observe(seconds)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """A REST request was answered."""
        # labels() validates and locks on every call: 4.9 us a request against 1.9 us with the
        # children looked up once per (route, method, status), measured with timeit.
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self._http_requests.labels(route, method, str(status)),
                self._http_latency.labels(route, method),
            )
        children[0].inc()
        children[1].observe(seconds)

    # -- copied when scraped ---------------------------------------------------------------

    def sync(self) -> None:
        """Copy the runtime's counts into the metrics."""
        s = self.sources
        self._connections.set(s.connections())
        self._opened.copy(s.connections_opened())
        for code, count in s.connections_closed().items():
            self._closed.copy(count, code)
        for kind, count in s.subscriptions().items():
            self._subscriptions.labels(kind).set(count)
        self._published.copy(s.events_published())
        self._deliveries.copy(s.deliveries())
        self._slow.copy(s.slow_consumers_cut())
        self._relay_lag.set(s.relay_lag_seconds())
        for limit, count in s.rate_limited().items():
            self._rate_limited.copy(count, limit)
        for where, count in s.storage_errors().items():
            self._storage_errors.copy(count, where)
        self._max_connections.set(s.max_connections())
        self._refused_at_capacity.copy(s.refused_at_capacity())
        self._accept_errors.copy(s.accept_errors())
        self._descriptors_exhausted.copy(s.descriptors_exhausted_seconds())
        hits, misses, entries = s.summary_cache()
        self._cache_hits.copy(hits)
        self._cache_misses.copy(misses)
        self._cache_entries.set(entries)
        streams, readers, computations, summary_frames = s.summary_streams()
        self._summary_streams.set(streams)
        self._summary_subscribers.set(readers)
        self._summary_computations.copy(computations)
        self._summary_frames.copy(summary_frames)
        filter_groups, evaluations = s.filters()
        self._filter_groups.set(filter_groups)
        self._filter_evaluations.copy(evaluations)
        for outcome, count in s.worker_notices().items():
            self._worker_notices.copy(count, outcome)
        for outcome, count in s.webhook_attempts().items():
            self._webhook_attempts.copy(count, outcome)
        self._webhook_deliveries.copy(s.webhook_deliveries())
        backlog = s.webhook_backlog_seconds()
        for departed in self._webhook_backlog_labels - backlog.keys():
            self._webhook_backlog.remove(departed)  # deleted, or delivered by another instance
        self._webhook_backlog_labels = set(backlog)
        for webhook, age in backlog.items():
            self._webhook_backlog.labels(webhook).set(age)
        self._audit_dropped.copy(s.audit_entries_dropped())
        self._audit_made_safe.copy(s.audit_entries_made_safe())
        self._sync_consumers()

    def exposition(self) -> bytes:
        """The Prometheus text format: this process, or every worker in multi-process mode."""
        self.sync()
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            combined, path=self.multiprocess_dir
        )
        return generate_latest(combined)

    async def sync_forever(self) -> None:
        """In multi-process mode, keep this worker's file current for the others' scrapes."""
        if self.multiprocess_dir is None:
            return
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            self.sync()


def multiprocess_dir_from_env() -> str | None:
    """The shared directory of ``serve --workers`` (None: a single process)."""
    return os.environ.get(MULTIPROC_ENV) or None


def forget_worker(pid: int, directory: str) -> None:
    """A worker died: drop its live gauges from the totals (its counters stay counted)."""
    with contextlib.suppress(FileNotFoundError):
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
