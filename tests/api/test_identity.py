"""``GET /whoami`` and read-only tokens (scope ``ratings:read``)."""

from __future__ import annotations

from tests.api.conftest import Api
from tests.api.test_ratings_api import assert_problem


async def test_whoami_answers_what_the_token_is_worth(api: Api) -> None:
    answer = await api.http.get("/whoami", headers=api.auth("7", scope="ratings:read"))
    assert answer.status_code == 200
    body = answer.json()
    assert body["sub"] == "7" and body["scopes"] == ["ratings:read"] and body["readOnly"]
    assert body["expiresAt"].startswith("20")
    writer = (await api.http.get("/whoami", headers=api.auth("8"))).json()
    assert writer["sub"] == "8" and not writer["readOnly"]


async def test_whoami_refuses_a_missing_or_forged_token(api: Api) -> None:
    missing = await api.http.get("/whoami")
    assert_problem(missing, 401, "missing bearer token")
    forged = await api.http.get("/whoami", headers={"Authorization": "Bearer a.b.c"})
    assert forged.status_code == 401
    assert 'error="invalid_token"' in forged.headers["www-authenticate"]


async def test_a_read_only_token_reads_but_never_writes(api: Api) -> None:
    reader = api.auth("7", scope="ratings:read")
    refused = await api.http.post("/ratings", json={"gameId": "42", "score": 4}, headers=reader)
    assert_problem(refused, 403, "read-only (scope ratings:read)")
    put = await api.http.put("/games/42/ratings/7", json={"score": 4}, headers=reader)
    assert_problem(put, 403, "read-only")
    created = await api.http.post(
        "/ratings", json={"gameId": "42", "score": 4}, headers=api.auth("7")
    )
    assert created.status_code == 201
    rating_id = created.json()["id"]
    patched = await api.http.patch(f"/ratings/{rating_id}", json={"score": 1}, headers=reader)
    assert_problem(patched, 403, "read-only")
    deleted = await api.http.delete(f"/ratings/{rating_id}", headers=reader)
    assert_problem(deleted, 403, "read-only")
    assert (await api.http.get(f"/ratings/{rating_id}", headers=reader)).json()["score"] == 4
    # ratings:write beside it lifts it: the token is no longer read-only.
    both = api.auth("7", scope="ratings:read ratings:write")
    assert (
        await api.http.patch(f"/ratings/{rating_id}", json={"score": 2}, headers=both)
    ).status_code == 200
