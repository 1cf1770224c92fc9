"""The same hostile text gets the same answer on every backend: 422 naming the field, never
a 503 from one database and a stored row on another."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from tests.support.server import ServerProcess

pytestmark = pytest.mark.e2e

HOSTILE = ["nul\x00byte", "bell\x07", "carriage\rreturn", "del\x7f", "c1\x85", "lone\ud800"]
FINE = ["tab\tand\nnewline", "émoji 🎲 and 中文", "quotes ' \" and \\ backslash"]


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def server(
    request: pytest.FixtureRequest, server_factory: Callable[..., ServerProcess]
) -> ServerProcess:
    if request.param == "sqlite":
        return server_factory()
    url = request.getfixturevalue("postgres_url" if request.param == "postgresql" else "mysql_url")
    return server_factory(backend=request.param, storage_url=url)


def test_control_characters_are_refused_alike_and_ordinary_text_round_trips(
    server: ServerProcess,
) -> None:
    headers = {
        "Authorization": f"Bearer {server.token('hostile')}",
        "Content-Type": "application/json",
    }
    answers = []
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as http:
        for index, text in enumerate(HOSTILE):
            # json.dumps escapes each character (\u0000, \ud800), as a client library would.
            body = json.dumps({"gameId": f"hostile{index}", "score": 3, "comment": text})
            answer = http.post("/ratings", content=body)
            answers.append((answer.status_code, answer.headers["content-type"]))
            assert "comment" in answer.json()["detail"]
        for index, text in enumerate(FINE):
            created = http.post(
                "/ratings", json={"gameId": f"fine{index}", "score": 3, "comment": text}
            )
            assert created.status_code == 201
            assert http.get(f"/ratings/{created.json()['id']}").json()["comment"] == text
    assert answers == [(422, "application/problem+json")] * len(HOSTILE)
