"""The REST API of docs/protocol.md, in process."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import jwt
import pytest

from tests.api.conftest import SECRET, Api

PROBLEM = "application/problem+json"


async def post(api: Api, body: object, sub: str = "7", scope: str | None = None):  # type: ignore[no-untyped-def]
    return await api.http.post("/ratings", json=body, headers=api.auth(sub, scope))


def assert_problem(response, status: int, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["title"] and body["type"].startswith("urn:")
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]


# -- create / read --------------------------------------------------------------------------------


async def test_create_returns_201_location_and_etag(api: Api) -> None:
    response = await post(api, {"gameId": 42, "score": 4, "comment": "fun"})
    assert response.status_code == 201
    rating = response.json()
    assert response.headers["location"] == f"/ratings/{rating['id']}"
    assert response.headers["etag"] == '"1"'
    assert rating["gameId"] == "42" and rating["userId"] == "7", "int id -> string; user = sub"
    assert rating["timestamp"] == rating["updatedAt"] == rating["createdAt"]
    assert rating["timestamp"].endswith("Z") and rating["version"] == 1
    fetched = await api.http.get(rating["id"].join(["/ratings/", ""]))
    assert fetched.status_code == 200 and fetched.json() == rating


async def test_create_twice_is_409(api: Api) -> None:
    first = (await post(api, {"gameId": "42", "score": 4})).json()
    response = await post(api, {"gameId": "42", "score": 5})
    assert_problem(response, 409, "already rated")
    assert response.json()["existingId"] == first["id"]


async def test_unknown_rating_is_404(api: Api) -> None:
    assert_problem(await api.http.get("/ratings/r_nope"), 404, "r_nope")


# -- authentication and ownership -----------------------------------------------------------------


async def test_writes_need_a_valid_token(api: Api) -> None:
    body = {"gameId": "42", "score": 4}
    assert_problem(await api.http.post("/ratings", json=body), 401, "missing bearer token")
    bad = {"Authorization": "Bearer not-a-token"}
    assert_problem(await api.http.post("/ratings", json=body, headers=bad), 401, "Invalid token")
    expired = jwt.encode({"sub": "7", "exp": int(time.time()) - 3600}, SECRET, "HS256")
    headers = {"Authorization": f"Bearer {expired}"}
    assert_problem(await api.http.post("/ratings", json=body, headers=headers), 401, "expired")
    none_alg = jwt.encode({"sub": "7", "exp": int(time.time()) + 60}, None, "none")
    headers = {"Authorization": f"Bearer {none_alg}"}
    assert_problem(await api.http.post("/ratings", json=body, headers=headers), 401)
    basic = {"Authorization": "Basic dTpw"}
    assert_problem(await api.http.post("/ratings", json=body, headers=basic), 401, "Bearer")


async def test_a_user_writes_only_their_own_ratings(api: Api) -> None:
    assert_problem(await post(api, {"gameId": "42", "userId": "8", "score": 4}), 403, "'7'")
    assert (
        await post(api, {"gameId": "42", "userId": "8", "score": 4}, "7", "ratings:write:any")
    ).status_code == 201
    assert (
        await post(api, {"gameId": "43", "userId": "8", "score": 4}, "boss", "ratings:admin")
    ).status_code == 201
    rating = (await post(api, {"gameId": "44", "score": 2}, "8")).json()
    other = api.auth("9")
    assert_problem(
        await api.http.patch(f"/ratings/{rating['id']}", json={"score": 1}, headers=other), 403
    )
    assert_problem(await api.http.delete(f"/ratings/{rating['id']}", headers=other), 403)
    put = await api.http.put("/games/44/ratings/8", json={"score": 1}, headers=other)
    assert_problem(put, 403)


# -- update / upsert / delete ---------------------------------------------------------------------


async def test_patch_and_if_match(api: Api) -> None:
    rating = (await post(api, {"gameId": "42", "score": 2, "comment": "hmm"})).json()
    url, auth = f"/ratings/{rating['id']}", api.auth()
    patched = await api.http.patch(url, json={"score": 5}, headers={**auth, "If-Match": '"1"'})
    assert patched.status_code == 200 and patched.json()["score"] == 5
    assert patched.json()["comment"] == "hmm" and patched.headers["etag"] == '"2"'
    stale = await api.http.patch(url, json={"score": 1}, headers={**auth, "If-Match": '"1"'})
    assert_problem(stale, 412, "version 2")
    assert stale.json()["currentVersion"] == 2
    cleared = await api.http.patch(url, json={"comment": None}, headers=auth)
    assert cleared.json()["comment"] is None
    assert_problem(await api.http.patch(url, json={}, headers=auth), 422, "score and/or comment")
    assert_problem(await api.http.patch(url, json={"score": None}, headers=auth), 422)
    bad_tag = await api.http.patch(url, json={"score": 1}, headers={**auth, "If-Match": "abc"})
    assert_problem(bad_tag, 400, "If-Match")


async def test_put_is_an_idempotent_upsert(api: Api) -> None:
    auth = api.auth()
    created = await api.http.put("/games/42/ratings/7", json={"score": 3}, headers=auth)
    assert created.status_code == 201 and created.headers["location"].startswith("/ratings/r_")
    again = await api.http.put("/games/42/ratings/7", json={"score": 3}, headers=auth)
    assert again.status_code == 200 and again.json()["version"] == 1, "a repeat changes nothing"
    changed = await api.http.put(
        "/games/42/ratings/7", json={"score": 4}, headers={**auth, "If-Match": '"1"'}
    )
    assert changed.status_code == 200 and changed.json()["version"] == 2
    stale = await api.http.put(
        "/games/42/ratings/7", json={"score": 5}, headers={**auth, "If-Match": '"1"'}
    )
    assert_problem(stale, 412)


async def test_delete(api: Api) -> None:
    rating = (await post(api, {"gameId": "42", "score": 2})).json()
    url, auth = f"/ratings/{rating['id']}", api.auth()
    assert_problem(await api.http.delete(url, headers={**auth, "If-Match": '"9"'}), 412)
    response = await api.http.delete(url, headers=auth)
    assert response.status_code == 204 and response.content == b""
    assert_problem(await api.http.get(url), 404)
    assert_problem(await api.http.delete(url, headers=auth), 404)


# -- list, summary, top ---------------------------------------------------------------------------


async def test_list_filters_and_cursor(api: Api) -> None:
    for index in range(7):
        await post(
            api,
            {"gameId": f"g{index % 2}", "userId": f"u{index}", "score": 3},
            "x",
            "ratings:admin",
        )
    page = (await api.http.get("/ratings?limit=3")).json()
    assert len(page["items"]) == 3 and page["nextCursor"]
    seen = [r["id"] for r in page["items"]]
    while page["nextCursor"]:
        page = (await api.http.get(f"/ratings?limit=3&cursor={page['nextCursor']}")).json()
        seen += [r["id"] for r in page["items"]]
    assert len(seen) == 7 and seen == sorted(seen, reverse=True), "newest first, no repeats"
    only_g1 = (await api.http.get("/ratings?gameId=g1")).json()["items"]
    assert {r["gameId"] for r in only_g1} == {"g1"} and len(only_g1) == 3
    assert len((await api.http.get("/ratings?userId=u4&gameId=g0")).json()["items"]) == 1
    assert_problem(await api.http.get("/ratings?cursor=bogus!"), 422, "cursor")
    assert_problem(await api.http.get("/ratings?limit=0"), 422, "limit")
    assert_problem(await api.http.get("/ratings?gameId=has space"), 422, "gameId")


async def test_summary_and_top_games(api: Api) -> None:
    for user, score in (("a", 5), ("b", 4), ("c", 3)):
        await post(api, {"gameId": "good", "userId": user, "score": score}, user)
    await post(api, {"gameId": "bad", "userId": "a", "score": 1}, "a")
    summary = (await api.http.get("/games/good/summary")).json()
    assert summary == {
        "gameId": "good",
        "count": 3,
        "mean": 4.0,
        "histogram": {"1": 0, "2": 0, "3": 1, "4": 1, "5": 1},
        "bayesianMean": round((10 * 3.0 + 12) / 13, 6),
    }
    empty = (await api.http.get("/games/nobody/summary")).json()
    assert empty["count"] == 0 and empty["mean"] is None
    top = (await api.http.get("/games/top?limit=5")).json()["items"]
    assert [g["gameId"] for g in top] == ["good", "bad"]
    assert [g["gameId"] for g in (await api.http.get("/games/top?minCount=2")).json()["items"]] == [
        "good"
    ]


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("score", [0, 6, "4", 4.5, None, True])
async def test_bad_scores_are_422_naming_score(api: Api, score: object) -> None:
    assert_problem(await post(api, {"gameId": "42", "score": score}), 422, "score")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"score": 4}, "gameId"),
        ({"gameId": "", "score": 4}, "gameId"),
        ({"gameId": "a/b", "score": 4}, "gameId"),
        ({"gameId": "x" * 65, "score": 4}, "gameId"),
        ({"gameId": "42", "userId": "bad id", "score": 4}, "userId"),
        ({"gameId": "42", "score": 4, "comment": "x" * 2001}, "comment"),
        ({"gameId": "42", "score": 4, "stars": 5}, "stars: unknown field"),
    ],
)
async def test_bad_fields_are_422_naming_the_field(api: Api, body: object, field: str) -> None:
    assert_problem(await post(api, body), 422, field)


async def test_malformed_json_is_400(api: Api) -> None:
    response = await api.http.post(
        "/ratings",
        content=b'{"gameId": 42,',
        headers={**api.auth(), "Content-Type": "application/json"},
    )
    assert_problem(response, 400, "not valid JSON")


async def test_wrong_content_type_is_415(api: Api) -> None:
    response = await api.http.post(
        "/ratings",
        content=b"gameId=42&score=4",
        headers={**api.auth(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_problem(response, 415, "application/json")


async def test_oversized_bodies_are_413(api: Api) -> None:
    big = b'{"gameId": "42", "score": 4, "comment": "' + b"x" * 5000 + b'"}'
    headers = {**api.auth(), "Content-Type": "application/json"}
    assert_problem(await api.http.post("/ratings", content=big, headers=headers), 413, "4096")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    response = await api.http.post("/ratings", content=chunks(), headers=headers)
    assert_problem(response, 413, "4096")


async def test_rate_limit_is_429_with_headers(api_with: Callable[..., AsyncIterator[Api]]) -> None:
    async for api in api_with(rest_requests_per_client_per_minute=3):
        answers = [await api.http.get("/games/42/summary") for _ in range(4)]
        assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
        # Every answer tells the client its quota, not only the refusal.
        assert [a.headers["ratelimit-remaining"] for a in answers[:3]] == ["2", "1", "0"]
        assert all(a.headers["ratelimit-limit"] == "3" for a in answers)
        assert 1 <= int(answers[0].headers["ratelimit-reset"]) <= 60
        limited = await api.http.get("/games/42/summary")
        assert_problem(limited, 429, "rate limit")
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.headers["ratelimit-limit"] == "3"
        assert limited.headers["ratelimit-remaining"] == "0"
        # per token sub: another user still gets through
        other = await api.http.get("/games/42/summary", headers=api.auth("someone-else"))
        assert other.status_code == 200
        assert (await api.http.get("/healthz")).status_code == 200, "health is never limited"


# -- service endpoints ----------------------------------------------------------------------------


async def test_health_readiness_metrics_and_docs(api: Api) -> None:
    from ratewire import __version__

    assert (await api.http.get("/healthz")).json() == {"status": "ok", "version": __version__}
    ready = await api.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["storage"] == "ok"
    assert (await api.http.get("/metrics")).status_code == 200
    assert (await api.http.get("/docs")).status_code == 200
    paths = (await api.http.get("/openapi.json")).json()["paths"]
    for path in (
        "/ratings",
        "/ratings/{rating_id}",
        "/games/{gameId}/ratings/{userId}",
        "/games/{gameId}/summary",
        "/games/top",
        "/topics/{topic}/events",
        "/healthz",
        "/readyz",
    ):
        assert path in paths, path
