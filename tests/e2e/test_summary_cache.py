"""Summaries from memory on a real server: a read after a 2xx write sees it, an answer is
never older than what the instance delivered, hits and misses are counted, and ETags let
pollers revalidate with 304."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest
from tests.e2e.wsclient import WsClient
from tests.support.server import ServerProcess

pytestmark = pytest.mark.e2e


def cache_counts(metrics: str) -> tuple[float, float]:
    def value(name: str) -> float:
        found = re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)
        assert found is not None, name
        return float(found.group(1))

    return value("ratewire_summary_cache_hits_total"), value("ratewire_summary_cache_misses_total")


async def test_reads_after_writes_see_them_and_repeated_reads_are_hits(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        before = cache_counts((await http.get("/metrics")).text)
        for n, score in enumerate((5, 1, 3), start=1):
            headers = {"Authorization": f"Bearer {server.token(f'u{n}')}"}
            written = await http.put(
                f"/games/ryw/ratings/u{n}", json={"score": score}, headers=headers
            )
            assert written.status_code == 201
            # Read-your-writes: the very next read includes it, although the summary was
            # cached a moment ago (except before the first write).
            summary = (await http.get("/games/ryw/summary")).json()
            assert summary["count"] == n
        for _ in range(5):
            assert (await http.get("/games/ryw/summary")).json()["count"] == 3
        top = (await http.get("/games/top", params={"limit": 1})).json()["items"]
        assert top[0]["gameId"] == "ryw"
        hits, misses = cache_counts((await http.get("/metrics")).text)
    assert hits - before[0] >= 5  # the repeated reads
    assert misses - before[1] >= 3  # one after each write


async def test_etags_answer_304_until_the_summary_or_rating_changes(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    headers = {"Authorization": f"Bearer {server.token('7')}"}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        created = await http.put("/games/e/ratings/7", json={"score": 2}, headers=headers)
        first = await http.get("/games/e/summary")
        etag = first.headers["ETag"]
        assert first.headers["Cache-Control"] == "no-cache"
        unchanged = await http.get("/games/e/summary", headers={"If-None-Match": etag})
        assert unchanged.status_code == 304 and unchanged.content == b""
        assert unchanged.headers["ETag"] == etag
        await http.put("/games/e/ratings/7", json={"score": 4}, headers=headers)
        changed = await http.get("/games/e/summary", headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["ETag"] != etag
        assert changed.json()["mean"] == 4.0

        rating_url = f"/ratings/{created.json()['id']}"
        rating = await http.get(rating_url)
        assert rating.headers["ETag"] == '"2"'
        assert (await http.get(rating_url, headers={"If-None-Match": '"2"'})).status_code == 304
        assert (await http.get(rating_url, headers={"If-None-Match": '"1", *'})).status_code == 304
        assert (await http.get(rating_url, headers={"If-None-Match": '"1"'})).status_code == 200


async def test_an_answer_is_never_older_than_what_was_delivered(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    token = server.token("watcher")
    async with (
        await WsClient.open(server.module_ws_url, token) as watcher,
        httpx.AsyncClient(base_url=server.base_url, timeout=10) as http,
    ):
        await watcher.recv()
        await watcher.subscribe("rating.game.fresh")
        for n in range(1, 21):
            writer = {"Authorization": f"Bearer {server.token(f'w{n}')}"}
            await http.put(f"/games/fresh/ratings/w{n}", json={"score": 3}, headers=writer)
            update = (await watcher.updates(1))[0]
            # Once the instance has delivered offset N, its summary reflects N ratings.
            summary = (await http.get("/games/fresh/summary")).json()
            assert summary["count"] >= update["offset"] == n


async def test_the_fast_summary_path_answers_exactly_as_the_documented_route(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    headers = {"Authorization": f"Bearer {server.token('7')}"}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        await http.put("/games/same/ratings/7", json={"score": 5}, headers=headers)
        fast = await http.get("/games/same/summary")
        # A query string sends the request through FastAPI's route instead.
        routed = await http.get("/games/same/summary", params={"via": "route"})
        assert fast.content == routed.content
        for name in ("content-type", "etag", "cache-control", "x-request-id"):
            assert (name in fast.headers) and (name in routed.headers), name
            if name != "x-request-id":
                assert fast.headers[name] == routed.headers[name], name
        etag = {"If-None-Match": fast.headers["ETag"]}
        assert (await http.get("/games/same/summary", headers=etag)).status_code == 304
        invalid = await http.get("/games/not%20valid/summary")
        assert invalid.status_code == 422
        assert invalid.headers["content-type"] == "application/problem+json"
        assert "gameId" in invalid.json()["detail"]
        document = (await http.get("/openapi.json")).json()
        operation = document["paths"]["/games/{gameId}/summary"]["get"]
        assert set(operation["responses"]) == {"200", "304", "422", "429", "503"}


async def test_the_fast_write_path_answers_as_the_documented_route(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    headers = {"Authorization": f"Bearer {server.token('7')}"}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        fast = await http.post("/ratings", json={"gameId": "w1", "score": 4}, headers=headers)
        routed = await http.post(
            "/ratings", params={"via": "route"}, json={"gameId": "w2", "score": 4}, headers=headers
        )
        assert fast.status_code == routed.status_code == 201
        for name in ("content-type", "etag", "cache-control"):
            assert fast.headers[name] == routed.headers[name], name
        assert fast.headers["location"] == f"/ratings/{fast.json()['id']}"
        ignore = {"id", "gameId", "timestamp", "createdAt", "updatedAt"}
        assert {k: v for k, v in fast.json().items() if k not in ignore} == {
            k: v for k, v in routed.json().items() if k not in ignore
        }
        # Every refusal comes from the route, the same either way.
        for body in ({"gameId": "w1", "score": 4}, {"gameId": "w3", "score": 9}, {"score": 1}):
            answers = [
                await http.post("/ratings", params=params, json=body, headers=headers)
                for params in (None, {"via": "route"})
            ]
            assert answers[0].status_code == answers[1].status_code >= 400
            first, second = (a.json() for a in answers)
            assert (first["type"], first["title"]) == (second["type"], second["title"])
        assert (await http.post("/ratings", json={"gameId": "w4", "score": 2})).status_code == 401


async def test_the_fast_upsert_path_answers_as_the_documented_route(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    headers = {"Authorization": f"Bearer {server.token('7')}"}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        for params in (None, {"via": "route"}):
            game = "u1" if params is None else "u2"
            created = await http.put(
                f"/games/{game}/ratings/7", params=params, json={"score": 2}, headers=headers
            )
            assert created.status_code == 201
            assert created.headers["location"] == f"/ratings/{created.json()['id']}"
            replaced = await http.put(
                f"/games/{game}/ratings/7",
                params=params,
                json={"score": 5},
                headers={**headers, "If-Match": '"1"'},
            )
            assert (replaced.status_code, replaced.headers["etag"]) == (200, '"2"')
            assert "location" not in replaced.headers
        # Refusals come from the route either way: stale version, bad If-Match, other user.
        cases = [
            ("/games/u1/ratings/7", {"If-Match": '"1"'}, {"score": 3}),
            ("/games/u1/ratings/7", {"If-Match": "soon"}, {"score": 3}),
            ("/games/u1/ratings/8", {}, {"score": 3}),
            ("/games/u1/ratings/7", {}, {"score": 6}),
        ]
        for path, extra, body in cases:
            fast, routed = [
                await http.put(path, params=params, json=body, headers={**headers, **extra})
                for params in (None, {"via": "route"})
            ]
            assert fast.status_code == routed.status_code >= 400, path
            assert fast.json()["type"] == routed.json()["type"]
