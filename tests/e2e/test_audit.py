"""The audit log on a real server: every change and security event is recorded with who, from
where and which request; ``GET /audit`` filters and pages it for admins only; ``ratewire audit
verify`` catches an altered, deleted, reordered or truncated log; ``export`` streams JSON
lines; and after SIGKILL under writes every change has exactly one entry."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from tests.e2e.wsclient import WsClient
from tests.support.cli import run_ratewire
from tests.support.server import SECRET, ServerProcess

pytestmark = pytest.mark.e2e

AUDIT_KEY = "audit-key-for-tests-0123456789abcdef0123"
ADMIN = "ratings:admin"


def audited_server(factory: Callable[..., ServerProcess], **env: str) -> ServerProcess:
    return factory(env={"RATEWIRE_AUDIT__KEY": AUDIT_KEY, **env})


async def audit_entries(server: ServerProcess, **params: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        answer = await http.get(
            "/audit",
            params=params,
            headers={"Authorization": f"Bearer {server.token('auditor', scope=ADMIN)}"},
        )
    assert answer.status_code == 200, answer.text
    page: dict[str, Any] = answer.json()
    return page


async def wait_for_entry(
    server: ServerProcess, where: Callable[[dict[str, Any]], bool] | None = None, **params: Any
) -> dict[str, Any]:
    """The newest entry matching ``params`` and ``where`` (connection and authentication
    entries are written in batches, a fraction of a second later)."""
    for _ in range(50):
        items = (await audit_entries(server, **params))["items"]
        matching = [item for item in items if where is None or where(item)]
        if matching:
            return dict(matching[0])
        await asyncio.sleep(0.1)
    raise AssertionError(f"no audit entry with {params}")


def cli(server: ServerProcess, *args: str) -> Any:
    env = {
        "RATEWIRE_JWT__SECRET": SECRET,
        "RATEWIRE_AUDIT__KEY": AUDIT_KEY,
        "RATEWIRE_STORAGE__BACKEND": server.env["RATEWIRE_STORAGE__BACKEND"],
        "RATEWIRE_STORAGE__URL": server.env["RATEWIRE_STORAGE__URL"],
    }
    return run_ratewire("audit", *args, cwd=server.workdir, env=env)


async def test_changes_and_security_events_are_recorded_with_their_request(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = audited_server(server_factory, RATEWIRE_LIMITS__WS_MESSAGES_PER_CLIENT_PER_SECOND="2")
    token = server.token("7")
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        created = await http.post("/ratings", json={"gameId": "a", "score": 2}, headers=auth)
        rating_id = created.json()["id"]
        changed = await http.patch(f"/ratings/{rating_id}", json={"score": 4}, headers=auth)
        assert changed.status_code == 200
        deleted = await http.delete(f"/ratings/{rating_id}", headers=auth)
        assert deleted.status_code == 204
        forged = await http.get(
            "/games/a/summary", headers={"Authorization": f"Bearer {server.token('8')}x"}
        )
        assert forged.status_code == 200  # a public route: the bad token is still recorded
        supplied = await http.get("/games/a/summary", headers={"X-Request-Id": "mine"})
    assert supplied.headers["X-Request-Id"] != "mine"  # only trusted proxies may set it

    entry = await wait_for_entry(server, action="rating.create")
    assert entry["requestId"] == created.headers["X-Request-Id"]
    assert (entry["actor"], entry["ip"], entry["ratingId"]) == ("7", "127.0.0.1", rating_id)
    assert entry["detail"]["before"] is None and entry["detail"]["after"]["score"] == 2
    update = await wait_for_entry(server, action="rating.update")
    assert (update["detail"]["before"]["score"], update["detail"]["after"]["score"]) == (2, 4)
    assert update["requestId"] == changed.headers["X-Request-Id"]
    removal = await wait_for_entry(server, action="rating.delete")
    assert removal["detail"]["after"] is None and removal["ratingId"] == rating_id
    refused = await wait_for_entry(server, action="auth.refused")
    assert refused["detail"]["channel"] == "rest" and refused["detail"]["sub"] == "8"
    assert refused["requestId"] == forged.headers["X-Request-Id"]
    assert token not in orjson.dumps(await audit_entries(server)).decode()

    # WebSockets: connect, disconnect with its code, a refused token, a 4008.
    async with await WsClient.open(server.module_ws_url, token) as client:
        await client.recv()
    await wait_for_entry(server, action="ws.connect", actor="7")
    gone = await wait_for_entry(server, action="ws.disconnect", actor="7")
    assert gone["detail"] == {"code": 1000, "endpoint": "module"}
    async with await WsClient.open(server.ws_url, "not-a-token") as client:
        await client.closed_with()
    refused_ws = await wait_for_entry(
        server, lambda e: e["detail"]["channel"] == "websocket", action="auth.refused"
    )
    assert (refused_ws["ip"], refused_ws["detail"]["endpoint"]) == ("127.0.0.1", "/ws")
    async with await WsClient.open(server.ws_url, token) as flooder:
        await flooder.recv()
        for _ in range(10):
            await flooder.send(action="ping")
        assert (await flooder.closed_with())[0] == 4008
    flooded = await wait_for_entry(server, action="ws.rate_limited")
    assert flooded["detail"]["code"] == 4008 and flooded["detail"]["endpoint"] == "/ws"

    # A revocation: its entry, its log line and its response share one request id.
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        revoked = await http.post(
            "/admin/revocations",
            json={"sub": "9"},
            headers={"Authorization": f"Bearer {server.token('root', scope=ADMIN)}"},
        )
    request_id = revoked.headers["X-Request-Id"]
    recorded = await wait_for_entry(server, action="revocation.create")
    assert (recorded["requestId"], recorded["actor"]) == (request_id, "root")
    assert recorded["detail"]["value"] == "9"
    lines = [orjson.loads(line) for line in server.log_text().splitlines() if "revoked" in line]
    assert any(line.get("requestId") == request_id for line in lines)


async def test_get_audit_is_for_admins_and_filters_and_pages(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = audited_server(server_factory)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        for user in ("1", "2", "3"):
            headers = {"Authorization": f"Bearer {server.token(user)}"}
            await http.put(f"/games/p/ratings/{user}", json={"score": 3}, headers=headers)
        plain = {"Authorization": f"Bearer {server.token('1')}"}
        assert (await http.get("/audit")).status_code == 401
        refused = await http.get("/audit", headers=plain)
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        admin = {"Authorization": f"Bearer {server.token('root', scope=ADMIN)}"}
        bad = await http.get("/audit", params={"cursor": "nope"}, headers=admin)
        assert bad.status_code == 422
    first = await audit_entries(server, action="rating.create", limit=2)
    assert [e["actor"] for e in first["items"]] == ["3", "2"]  # newest first
    rest = await audit_entries(server, action="rating.create", cursor=first["nextCursor"])
    assert [e["actor"] for e in rest["items"]] == ["1"] and rest["nextCursor"] is None
    assert [e["actor"] for e in (await audit_entries(server, actor="2"))["items"]] == ["2"]
    assert (await audit_entries(server, since="2999-01-01T00:00:00Z"))["items"] == []
    assert len((await audit_entries(server, until="2999-01-01T00:00:00"))["items"]) >= 3


def copy_db(source: Path, target: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copy(source, target)


def tamper(db: Path, *statements: str) -> None:
    """What someone with write access to the database file might do."""
    with closing(sqlite3.connect(db)) as connection, connection:
        for statement in statements:
            connection.execute(statement)


async def test_verify_catches_every_kind_of_tampering_and_export_streams_lines(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = audited_server(server_factory)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        for score in (1, 2, 3, 4, 5, 4, 3):
            headers = {"Authorization": f"Bearer {server.token('7')}"}
            await http.put("/games/t/ratings/7", json={"score": score}, headers=headers)
    server.terminate()
    intact = await asyncio.to_thread(cli, server, "verify")
    assert intact.returncode == 0, intact.stderr
    assert "audit chain intact: 7 entries" in intact.stdout
    anchor = (await asyncio.to_thread(cli, server, "anchor")).stdout.strip()
    assert anchor.startswith("7:")
    exported = await asyncio.to_thread(cli, server, "export", "--since", "2020-01-01")
    lines = [orjson.loads(line) for line in exported.stdout.splitlines()]
    assert [line["seq"] for line in lines] == list(range(1, 8))
    assert set(lines[0]) == {
        "seq", "at", "action", "actor", "scopes", "ip", "requestId", "ratingId", "detail", "mac"
    }  # fmt: skip

    db = server.workdir / "ratewire.db"
    pristine = server.workdir / "pristine.db"
    await asyncio.to_thread(copy_db, db, pristine)
    cases = {
        "altered": (
            [
                "UPDATE audit_log SET detail = replace(detail, '\"score\":3', '\"score\":5') "
                "WHERE seq = 3"
            ],
            "entry #3 (rating.update) does not match its MAC",
        ),
        "deleted": (["DELETE FROM audit_log WHERE seq = 4"], "entry #4 is missing"),
        "reordered": (
            [
                "UPDATE audit_log SET seq = -1 WHERE seq = 2",
                "UPDATE audit_log SET seq = 2 WHERE seq = 5",
                "UPDATE audit_log SET seq = 5 WHERE seq = -1",
            ],
            "entry #2",
        ),
        "tail truncated": (
            ["DELETE FROM audit_log WHERE seq >= 6"],
            "the log ends at entry #5 but the head names entry #7",
        ),
    }
    for name, (statements, message) in cases.items():
        await asyncio.to_thread(copy_db, pristine, db)
        await asyncio.to_thread(tamper, db, *statements)
        broken = await asyncio.to_thread(cli, server, "verify")
        assert broken.returncode == 1, name
        assert message in broken.stderr, (name, broken.stderr)

    # Truncating and rewinding the head to a genuine earlier state passes the chain check,
    # but not an anchor recorded before.
    await asyncio.to_thread(copy_db, pristine, db)
    with closing(sqlite3.connect(pristine)) as connection:
        mac5 = connection.execute("SELECT mac FROM audit_log WHERE seq = 5").fetchone()[0]
    await asyncio.to_thread(
        tamper,
        db,
        "DELETE FROM audit_log WHERE seq >= 6",
        f"UPDATE audit_head SET seq = 5, mac = '{mac5}'",
    )
    assert (await asyncio.to_thread(cli, server, "verify")).returncode == 0
    rewound = await asyncio.to_thread(cli, server, "verify", "--anchor", anchor)
    assert rewound.returncode == 1 and "anchor entry #7 is missing" in rewound.stderr


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "sqlite":
        return {}
    return {"backend": "postgresql", "storage_url": request.getfixturevalue("fresh_postgres_url")}


async def test_sigkill_under_writes_leaves_one_entry_per_change(
    server_factory: Callable[..., ServerProcess], storage_options: dict[str, Any]
) -> None:
    options = storage_options
    server = server_factory(env={"RATEWIRE_AUDIT__KEY": AUDIT_KEY}, **options)
    acknowledged: list[str] = []
    enough = asyncio.Event()

    async def writer(user: str) -> None:
        headers = {"Authorization": f"Bearer {server.token(user)}"}
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as http:
            for n in range(1000):
                try:
                    answer = await http.put(
                        f"/games/k{n % 7}/ratings/{user}",
                        json={"score": n % 5 + 1},
                        headers=headers,
                    )
                except httpx.HTTPError:
                    return
                if answer.status_code in (200, 201):
                    acknowledged.append(answer.json()["id"])
                    if len(acknowledged) > 50:
                        enough.set()

    writers = [asyncio.create_task(writer(f"u{i}")) for i in range(8)]
    # Killed once a good number of writes were answered (whatever the machine's load), with
    # eight more in flight.
    await asyncio.wait_for(enough.wait(), 60)
    server.kill()
    await asyncio.gather(*writers)
    assert len(acknowledged) > 50
    server.start()
    verdict = await asyncio.to_thread(cli, server, "verify")
    assert verdict.returncode == 0, verdict.stderr
    exported = await asyncio.to_thread(cli, server, "export")
    changes = [orjson.loads(line) for line in exported.stdout.splitlines()]
    change_seqs = [c["detail"]["eventSeq"] for c in changes if c["action"].startswith("rating.")]
    event_seqs: list[int] = []
    admin = {"Authorization": f"Bearer {server.token('root', scope=ADMIN)}"}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        while True:  # every committed event, a page at a time
            page = await http.get(
                "/topics/rating.global/events",
                params={"since": event_seqs[-1] if event_seqs else 0, "limit": 1000},
                headers=admin,
            )
            events = page.json()["events"]
            if not events:
                break
            event_seqs.extend(event["offset"] for event in events)
    # Exactly one entry per committed change, and no entry without its change.
    assert sorted(change_seqs) == event_seqs
    audited_ratings = {c["ratingId"] for c in changes if c["action"].startswith("rating.")}
    assert set(acknowledged) <= audited_ratings
