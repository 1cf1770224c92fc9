"""Outbound webhooks on real server processes: the admin API and CLI, delivery in order with
valid signatures through 500s, an unreachable receiver and a SIGKILL of ratewire, the retry
schedule and the failing state, 410, and the addresses a webhook may not call."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable

import httpx
import pytest
from tests.support.cli import run_ratewire
from tests.support.server import SECRET, ServerProcess
from tests.support.webhook_receiver import Receiver

pytestmark = pytest.mark.e2e
ServerFactory = Callable[..., ServerProcess]
ADMIN = "ratings:admin"
#: Tests call receivers on 127.0.0.1 over http: both allowed here, refused by default.
LOCAL = {
    "RATEWIRE_WEBHOOKS__ALLOW_INSECURE_HTTP": "true",
    "RATEWIRE_WEBHOOKS__ALLOW_PRIVATE_NETWORKS": "true",
}


def admin(server: ServerProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token('root', scope=ADMIN)}"}


async def rate(server: ServerProcess, game: str, user: str, score: int = 3) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        answer = await http.put(
            f"/games/{game}/ratings/{user}",
            json={"score": score},
            headers={"Authorization": f"Bearer {server.token(user)}"},
        )
        assert answer.status_code in (200, 201), answer.text


async def register(server: ServerProcess, url: str, topics: list[str]) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        answer = await http.post(
            "/admin/webhooks", json={"url": url, "topics": topics}, headers=admin(server)
        )
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def webhook_state(server: ServerProcess, webhook_id: object) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        return (await http.get(f"/admin/webhooks/{webhook_id}", headers=admin(server))).json()  # type: ignore[no-any-return]


async def test_every_event_arrives_once_in_order_through_500s_an_outage_and_a_sigkill(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(
        env={
            **LOCAL,
            "RATEWIRE_WEBHOOKS__RETRY_SCHEDULE_SECONDS": "[0.2, 0.2, 0.3, 0.5" + ", 1" * 20 + "]",
        }
    )
    receiver = await Receiver.start()
    receiver.answer = lambda n: 500 if n < 3 else 204  # the first three attempts fail
    webhook = await register(server, receiver.url, ["rating.game.*"])
    secret = str(webhook["secret"])
    assert secret.startswith("whsec_")
    for index in range(8):
        await rate(server, "wh1", f"a{index}")
    await rate(server, "other", "x")  # rating.game.other: a second topic, its own offsets
    await receiver.wait_for(secret, 5)
    await receiver.down()  # unreachable for a while: connections refused
    for index in range(6):
        await rate(server, "wh1", f"b{index}")
    await asyncio.sleep(0.5)
    server.kill()  # mid-delivery, with attempts failing
    server.start()
    for index in range(6):
        await rate(server, "wh1", f"c{index}")
    await receiver.listen()
    delivered = await receiver.wait_for(secret, 21, within=40)
    await asyncio.sleep(0.5)  # anything more would come now
    delivered = receiver.delivered(secret)
    game = [p for p in delivered if p["topic"] == "rating.game.wh1"]
    assert [p["offset"] for p in game] == list(range(1, 21))
    users = [p["data"]["userId"] for p in game]  # type: ignore[index]
    assert users == [f"a{i}" for i in range(8)] + [f"b{i}" for i in range(6)] + [
        f"c{i}" for i in range(6)
    ]
    assert [(p["topic"], p["offset"]) for p in delivered if p["topic"] != "rating.game.wh1"] == [
        ("rating.game.other", 1)
    ]
    assert all(p["type"] == "rating_update" and p["epoch"] for p in delivered)
    assert sum(r.status == 500 for r in receiver.received) == 3
    # The same event always had the same webhook-id, retries and repeats included.
    ids = {}
    for request in receiver.received:
        key = (request.payload["topic"], request.payload["offset"])
        assert ids.setdefault(key, request.message_id) == request.message_id
    assert len(set(ids.values())) == len(ids) == 21
    await receiver.close()


async def test_the_retry_schedule_ends_in_failing_and_a_re_enable_resumes(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(
        env={**LOCAL, "RATEWIRE_WEBHOOKS__RETRY_SCHEDULE_SECONDS": "[0.2, 0.4]"}
    )
    receiver = await Receiver.start()
    receiver.answer = lambda _: 503
    webhook = await register(server, receiver.url, ["rating.user.f1"])
    await rate(server, "g1", "f1")
    for _ in range(100):
        state = await webhook_state(server, webhook["id"])
        if state["status"] == "failing":
            break
        await asyncio.sleep(0.1)
    assert state["status"] == "failing" and "503" in str(state["lastError"])
    assert len(receiver.received) == 3  # the first attempt and one per wait of the schedule
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        attempts = (
            await http.get(f"/admin/webhooks/{webhook['id']}/deliveries", headers=admin(server))
        ).json()["items"]
        assert [(a["attempt"], a["outcome"], a["statusCode"]) for a in attempts] == [
            (3, "failed", 503),
            (2, "failed", 503),
            (1, "failed", 503),
        ]
        assert all(a["durationMs"] >= 0 and a["offset"] == 1 for a in attempts)
        await rate(server, "g2", "f1")  # waits, with the first, for the re-enable
        receiver.answer = lambda _: 200
        resumed = await http.patch(
            f"/admin/webhooks/{webhook['id']}", json={"enabled": True}, headers=admin(server)
        )
        assert resumed.status_code == 200 and resumed.json()["status"] == "active"
        delivered = await receiver.wait_for(str(webhook["secret"]), 2)
        assert [p["offset"] for p in delivered] == [1, 2]
        for _ in range(50):  # the deliverer counts an answer just after the receiver sent it
            metrics = (await http.get("/metrics")).text
            if 'ratewire_webhook_attempts_total{outcome="delivered"} 2.0' in metrics:
                break
            await asyncio.sleep(0.1)
    assert 'ratewire_webhook_attempts_total{outcome="failed"} 3.0' in metrics
    assert 'ratewire_webhook_attempts_total{outcome="delivered"} 2.0' in metrics
    await receiver.close()


async def test_a_410_disables_the_webhook_and_a_replay_delivers_again(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(env=LOCAL)
    receiver = await Receiver.start()
    receiver.answer = lambda n: 204 if n < 2 else 410
    webhook = await register(server, receiver.url, ["rating.global"])
    for user in ("r1", "r2", "r3"):
        await rate(server, "g410", user)
    for _ in range(100):
        state = await webhook_state(server, webhook["id"])
        if state["status"] == "disabled":
            break
        await asyncio.sleep(0.1)
    assert state["status"] == "disabled" and state["cursor"] == 2
    receiver.answer = lambda _: 204
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        replayed = await http.post(
            f"/admin/webhooks/{webhook['id']}/replay", json={"since": 0}, headers=admin(server)
        )
    assert replayed.status_code == 200 and replayed.json()["status"] == "active"
    for _ in range(100):
        if len(receiver.received) >= 6:
            break
        await asyncio.sleep(0.1)
    offsets = [r.payload["offset"] for r in receiver.received]
    assert offsets == [1, 2, 3, 1, 2, 3]  # the 410'd one again, then a replay from the start
    await receiver.close()


async def test_the_admin_api_and_the_command_line(server_factory: ServerFactory) -> None:
    server = server_factory(env=LOCAL)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        body = {"url": "http://127.0.0.1:9/hook", "topics": ["rating.game.1"], "description": "d"}
        plain = {"Authorization": f"Bearer {server.token('7')}"}
        assert (await http.post("/admin/webhooks", json=body)).status_code == 401
        assert (await http.post("/admin/webhooks", json=body, headers=plain)).status_code == 403
        created = await http.post("/admin/webhooks", json=body, headers=admin(server))
        assert created.status_code == 201
        hook = created.json()
        assert created.headers["location"] == f"/admin/webhooks/{hook['id']}"
        assert (hook["topics"], hook["description"], hook["status"]) == (
            ["rating.game.1"],
            "d",
            "active",
        )
        shown = (await http.get(f"/admin/webhooks/{hook['id']}", headers=admin(server))).json()
        assert "secret" not in shown or shown["secret"] is None
        listed = (await http.get("/admin/webhooks", headers=admin(server))).json()["items"]
        assert [w["id"] for w in listed] == [hook["id"]]
        changed = await http.patch(
            f"/admin/webhooks/{hook['id']}",
            json={"topics": ["rating.global", "rating.user.7"], "enabled": False},
            headers=admin(server),
        )
        assert changed.json()["topics"] == ["rating.global", "rating.user.7"]
        assert changed.json()["status"] == "disabled"
        for bad in (
            {"url": "http://127.0.0.1:9/", "topics": ["rating.nope"]},
            {"url": "http://127.0.0.1:9/", "topics": []},
            {"url": "ftp://127.0.0.1/", "topics": ["rating.global"]},
            {"url": "http://127.0.0.1:9/", "topics": ["rating.global"], "extra": 1},
        ):
            refused = await http.post("/admin/webhooks", json=bad, headers=admin(server))
            assert refused.status_code == 422, bad
            assert refused.headers["content-type"] == "application/problem+json"
        missing = await http.get("/admin/webhooks/wh_missing", headers=admin(server))
        assert missing.status_code == 404
        for _ in range(50):  # audit entries are written every 0.2 s
            audit = await http.get("/audit?action=webhook.change", headers=admin(server))
            if audit.json()["items"]:
                break
            await asyncio.sleep(0.1)
        (entry,) = audit.json()["items"]
        assert hook["id"] in str(entry) and "rating.user.7" in str(entry)

    env = {"RATEWIRE_SERVER__PORT": str(server.http_port), "RATEWIRE_JWT__SECRET": SECRET}

    async def run_cli(args: list[str]) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(run_ratewire, *args, cwd=server.workdir, env=env)

    added = await run_cli(["webhook", "add", "http://127.0.0.1:9/cli", "--topic", "rating.global"])
    assert added.returncode == 0, added.stderr
    assert "whsec_" in added.stdout
    cli_id = added.stdout.split()[0]
    listed_cli = await run_cli(["webhook", "list"])
    assert cli_id in listed_cli.stdout and hook["id"] in listed_cli.stdout
    replay = await run_cli(["webhook", "replay", cli_id, "--since", "0"])
    assert replay.returncode == 0, replay.stderr
    removed = await run_cli(["webhook", "rm", cli_id])
    assert removed.returncode == 0, removed.stderr
    again = await run_cli(["webhook", "rm", cli_id])
    assert again.returncode == 1 and cli_id in again.stderr
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        deleted = await http.delete(f"/admin/webhooks/{hook['id']}", headers=admin(server))
        assert deleted.status_code == 204
        assert (await http.get("/admin/webhooks", headers=admin(server))).json()["items"] == []


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://127.0.0.1/hook", "loopback"),
        ("https://[::1]:8443/hook", "loopback"),
        ("https://10.20.30.40/hook", "private"),
        ("https://192.168.1.1/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "metadata"),
        ("https://localhost/hook", "loopback"),  # a name that resolves to one
        ("http://93.184.215.14/hook", "https"),
    ],
)
async def test_addresses_a_webhook_may_not_call_are_refused_by_default(
    module_server_factory: ServerFactory, url: str, why: str
) -> None:
    server = module_server_factory()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        refused = await http.post(
            "/admin/webhooks", json={"url": url, "topics": ["rating.global"]}, headers=admin(server)
        )
    assert refused.status_code == 422
    assert why in refused.json()["detail"]
