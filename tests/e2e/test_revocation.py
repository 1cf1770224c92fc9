"""Token revocation on a real server: the admin API and ``ratewire revoke``; revoked tokens are
refused on REST, at upgrade and in ``refresh``; live connections using them close with 4001
"Token revoked" within a second; the deny list survives a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import jwt
import pytest
from tests.e2e.wsclient import WsClient
from tests.support.cli import run_ratewire
from tests.support.server import SECRET, ServerProcess

pytestmark = pytest.mark.e2e

ADMIN = "ratings:admin"


async def revoke(server: ServerProcess, **target: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        return await http.post(
            "/admin/revocations",
            json=target,
            headers={"Authorization": f"Bearer {server.token('root', scope=ADMIN)}"},
        )


async def rest_write(server: ServerProcess, token: str, user: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        return await http.put(
            f"/games/rev/ratings/{user}",
            json={"score": 4},
            headers={"Authorization": f"Bearer {token}"},
        )


async def connected(url: str, token: str) -> WsClient:
    client = await WsClient.open(url, token)
    assert (await client.recv())["type"] == "connection_success"
    await client.subscribe("rating.global")
    return client


def jti_of(token: str) -> str:
    return str(jwt.decode(token, SECRET, algorithms=["HS256"])["jti"])


async def test_revoking_a_jti_closes_its_connections_and_refuses_it_everywhere(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    victim, bystander = server.token("7"), server.token("7")
    live = [await connected(url, victim) for url in (server.module_ws_url, server.ws_url)]
    other = await connected(server.module_ws_url, bystander)

    answer = await revoke(server, jti=jti_of(victim), reason="laptop stolen")
    assert answer.status_code == 201, answer.text
    entry = answer.json()
    assert (entry["kind"], entry["value"], entry["revokedBy"]) == ("jti", jti_of(victim), "root")
    assert entry["expiresAt"] - entry["revokedAt"] == pytest.approx(900 + 2 * 5)
    # The promise is one second; on a quiet machine it takes milliseconds.
    for client in live:
        assert await client.closed_with(within=1.0) == (4001, "Token revoked")

    refused = await rest_write(server, victim, "7")
    assert refused.status_code == 401 and refused.json()["detail"] == "Token revoked"
    for url in (server.module_ws_url, server.ws_url):
        async with await WsClient.open(url, victim) as client:
            assert await client.closed_with() == (4001, "Token revoked")
    # Another token of the same user is untouched, and cannot refresh to the revoked one.
    assert (await rest_write(server, bystander, "7")).status_code in (200, 201)
    await other.send(action="refresh", token=victim, id="r1")
    refusal = await other.recv_type("error")
    assert refusal["code"] == "forbidden" and refusal["message"] == "Token revoked"
    await other.send(action="ping", id="p")
    assert (await other.recv_type("pong"))["id"] == "p"
    await other.close()


async def test_revoking_a_sub_covers_tokens_issued_before_not_after(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    before = server.token("8")
    client = await connected(server.ws_url, before)
    assert (await revoke(server, sub="8")).status_code == 201
    assert await client.closed_with(within=1.0) == (4001, "Token revoked")
    assert (await rest_write(server, before, "8")).status_code == 401
    after = server.token("8")
    assert (await rest_write(server, after, "8")).status_code in (200, 201)
    async with await WsClient.open(server.module_ws_url, after) as fresh:
        assert (await fresh.recv())["type"] == "connection_success"
    # A token without iat cannot prove it is newer than the revocation.
    no_iat = jwt.encode({"sub": "8", "exp": int(time.time()) + 60}, SECRET, "HS256")
    assert (await rest_write(server, no_iat, "8")).status_code == 401


async def test_only_admins_revoke_and_bad_requests_are_explained(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        plain = {"Authorization": f"Bearer {server.token('7')}"}
        admin = {"Authorization": f"Bearer {server.token('root', scope=ADMIN)}"}
        assert (await http.post("/admin/revocations", json={"sub": "9"})).status_code == 401
        forbidden = await http.post("/admin/revocations", json={"sub": "9"}, headers=plain)
        assert forbidden.status_code == 403
        assert forbidden.headers["content-type"] == "application/problem+json"
        assert (await http.get("/admin/revocations", headers=plain)).status_code == 403
        for body in ({}, {"sub": "9", "jti": "x"}, {"sub": ""}, {"sub": "a\x00b"}, {"who": "9"}):
            bad = await http.post("/admin/revocations", json=body, headers=admin)
            assert bad.status_code == 422, body
            assert bad.headers["content-type"] == "application/problem+json"
        assert (await http.get("/admin/revocations", headers=admin)).json() == {"items": []}


async def test_the_deny_list_survives_a_restart_and_the_cli_revokes_and_lists(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    victim = server.token("9")
    env = {
        "RATEWIRE_JWT__SECRET": SECRET,
        "RATEWIRE_SERVER__PORT": str(server.http_port),
    }
    done = await asyncio.to_thread(
        run_ratewire, "revoke", "--sub", "9", "--reason", "left", cwd=server.workdir, env=env
    )
    assert done.returncode == 0, done.stderr
    assert '"kind":"sub"' in done.stdout and '"reason":"left"' in done.stdout
    server.restart()
    assert (await rest_write(server, victim, "9")).status_code == 401
    listed = await asyncio.to_thread(run_ratewire, "revoke", "--list", cwd=server.workdir, env=env)
    assert listed.returncode == 0 and '"value":"9"' in listed.stdout
    victim_jti = jti_of(server.token("10"))
    positional = await asyncio.to_thread(
        run_ratewire, "revoke", victim_jti, cwd=server.workdir, env=env
    )
    assert positional.returncode == 0 and f'"value":"{victim_jti}"' in positional.stdout
    usage = await asyncio.to_thread(run_ratewire, "revoke", cwd=server.workdir, env=env)
    assert usage.returncode == 2 and "exactly one of --jti or --sub" in usage.stderr
    unreachable = await asyncio.to_thread(
        run_ratewire, "revoke", "--sub", "9", "--url", "http://127.0.0.1:9", cwd=server.workdir
    )
    assert unreachable.returncode == 1 and "cannot reach the server" in unreachable.stderr
