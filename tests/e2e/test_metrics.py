"""/metrics after real traffic on a real server: every series an operator alerts on moves the
way the traffic says it should."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.e2e.wsclient import WsClient
from tests.support.server import ServerProcess

pytestmark = pytest.mark.e2e

WRITES = 150  # of ~2 KB each: enough to overflow a stalled reader (kernel buffers too)
REST_LIMIT = 60


async def scrape(http: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics, by (name, labels)."""
    answer = await http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_follow_connections_subscriptions_writes_and_refusals(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(
        env={
            "RATEWIRE_LIMITS__SEND_BUFFER_BYTES": "16384",
            "RATEWIRE_LIMITS__REST_REQUESTS_PER_CLIENT_PER_MINUTE": str(REST_LIMIT),
        }
    )
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        watcher = await WsClient.open(server.module_ws_url, server.token("watcher"))
        await watcher.recv()
        for topic in ("rating.global", "rating.game.m", "rating.user.watcher"):
            await watcher.subscribe(topic)
        other = await WsClient.open(server.ws_url, server.token("other"))
        await other.recv()
        await other.subscribe("rating.game.m")
        slow = await WsClient.open(server.module_ws_url, server.token("slow"))
        await slow.recv()
        await slow.subscribe("rating.game.m")
        slow.connection.transport.pause_reading()

        before = await scrape(http)
        assert value(before, "ratewire_websocket_connections") == 3
        assert value(before, "ratewire_subscriptions", kind="global") == 1
        assert value(before, "ratewire_subscriptions", kind="game") == 3
        assert value(before, "ratewire_subscriptions", kind="user") == 1

        # The two readers read as the writes go (their 16 KiB buffers would overflow too).
        # The watcher gets each event twice (global and game topics).
        readers = [
            asyncio.create_task(ws.updates(count, within=15))
            for ws, count in ((watcher, 2 * WRITES), (other, WRITES))
        ]
        comment = "x" * 1900  # enough to overflow the stalled reader's 16 KiB buffer
        for n in range(WRITES):
            writer = server.token(f"u{n}")
            body = {"gameId": "m", "score": 1 + n % 5, "comment": comment}
            created = await http.post(
                "/ratings", json=body, headers={"Authorization": f"Bearer {writer}"}
            )
            assert created.status_code == 201
        assert [len(await reader) for reader in readers] == [2 * WRITES, WRITES]
        assert (await http.get("/games/m/summary")).status_code == 200
        assert (await http.get("/ratings/no-such-rating")).status_code == 404

        flooder = {"Authorization": f"Bearer {server.token('flooder')}"}
        statuses = [
            (await http.get("/games/m/summary", headers=flooder)).status_code
            for _ in range(REST_LIMIT + 5)
        ]
        assert 429 in statuses

        refused = await WsClient.open(server.module_ws_url, "not-a-token")
        assert (await refused.closed_with())[0] == 4001
        await other.close()
        slow.connection.transport.resume_reading()
        assert (await slow.closed_with(within=15))[0] == 4009

        after = await scrape(http)
        for _ in range(20):  # the closes are counted when the server sees the sockets go
            if value(after, "ratewire_websocket_connections") == 1:
                break
            await asyncio.sleep(0.1)
            after = await scrape(http)
    await watcher.close()

    assert value(after, "ratewire_websocket_connections") == 1
    assert value(after, "ratewire_websocket_opened_total") == 4
    assert value(after, "ratewire_websocket_closed_total", code="1000") == 1
    assert value(after, "ratewire_websocket_closed_total", code="4001") == 1
    assert value(after, "ratewire_websocket_closed_total", code="4009") == 1
    assert value(after, "ratewire_slow_consumers_cut_total") == 1
    assert value(after, "ratewire_subscriptions", kind="game") == 1
    assert value(after, "ratewire_events_published_total") == WRITES
    assert value(after, "ratewire_commit_to_send_seconds_count") == WRITES
    # The latency budget: each stage once per event (every write had subscribers here).
    for stage in ("commit", "relay", "encode", "first_write", "fan_out"):
        assert value(after, "ratewire_delivery_stage_seconds_count", stage=stage) == WRITES
    budget = sum(
        value(after, "ratewire_delivery_stage_seconds_sum", stage=stage)
        for stage in ("relay", "encode", "first_write", "fan_out")
    )
    assert 0 < budget <= value(after, "ratewire_commit_to_send_seconds_sum")
    # The commit's parts (SQLite here): each rating write once, together within its commit.
    parts = ("commit_queue", "commit_transaction", "commit_wake")
    for part in parts:
        assert value(after, "ratewire_delivery_stage_seconds_count", stage=part) == WRITES
    in_parts = sum(value(after, "ratewire_delivery_stage_seconds_sum", stage=p) for p in parts)
    assert 0 < in_parts <= value(after, "ratewire_delivery_stage_seconds_sum", stage="commit")
    assert value(after, "ratewire_gc_pause_seconds_count", generation="0") > 0
    # watcher: the global and game topics; other: the game topic.
    assert value(after, "ratewire_deliveries_total") >= 3 * WRITES
    assert value(after, "ratewire_relay_lag_seconds") == 0
    post = {"route": "/ratings", "method": "POST"}
    assert value(after, "ratewire_http_requests_total", **post, status="201") == WRITES
    assert value(after, "ratewire_http_request_duration_seconds_count", **post) == WRITES
    summary = {"route": "/games/{gameId}/summary", "method": "GET"}
    answered = statuses.count(200) + 1
    assert value(after, "ratewire_http_requests_total", **summary, status="200") == answered
    assert value(after, "ratewire_http_requests_total", **summary, status="429") == (
        statuses.count(429)
    )
    missing = {"route": "/ratings/{rating_id}", "method": "GET", "status": "404"}
    assert value(after, "ratewire_http_requests_total", **missing) == 1
    assert value(after, "ratewire_rate_limited_total", limit="rest") == statuses.count(429)
    assert value(after, "ratewire_storage_errors_total", where="rest") == 0


async def test_metrics_count_summary_streams_and_filters_once_per_group(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    writes, topic = 12, "summary.game.sm"
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        readers = [await WsClient.open(server.ws_url, server.token(f"r{n}")) for n in range(4)]
        for n, ws in enumerate(readers):
            await ws.recv()
            # Three readers share one stream (one interval); the fourth has its own.
            await ws.subscribe(topic, intervalMs=50 if n < 3 else 100)
            assert (await ws.recv())["type"] == "summary"
            # Two expressions on rating.global: evaluated once per event each, not per reader.
            await ws.subscribe("rating.global", filter="data.score <= 2" if n else "true")
        held = await scrape(http)
        assert value(held, "ratewire_summary_streams") == 2
        assert value(held, "ratewire_summary_subscribers") == 4
        assert value(held, "ratewire_filter_groups") == 2

        for n in range(writes):
            body = {"gameId": "sm", "score": 1 + n % 5}
            headers = {"Authorization": f"Bearer {server.token(f'w{n}')}"}
            assert (await http.post("/ratings", json=body, headers=headers)).status_code == 201
        updates = []  # per reader: summaries after the first, until the last count
        for ws in readers:
            updates.append(0)
            while True:
                frame = await ws.recv()
                if frame["type"] == "summary":
                    updates[-1] += 1
                    if frame["data"]["count"] == writes:
                        break
        frames = 4 + sum(updates)
        after = await scrape(http)
        for ws in readers:
            await ws.close()

    assert value(after, "ratewire_summary_frames_total") == frames
    # Computed per stream, not per reader: the three readers of one stream share its reads
    # (at most one per update sent, plus one per joining reader).
    assert updates[0] == updates[1] == updates[2]
    assert 2 <= value(after, "ratewire_summary_computations_total") <= updates[0] + updates[3] + 4
    assert value(after, "ratewire_filter_evaluations_total") == 2 * writes
