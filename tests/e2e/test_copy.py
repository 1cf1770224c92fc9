"""``ratewire copy``, ``export`` and ``import`` between real backends: what a server on the
copy serves is what the source served (ratings, summaries, every topic's history with its
offsets and epoch, revocations, webhooks and their cursors), the audit chain verifies, and a
target with data or a faulty file is refused without writing anything (docs/operations.md,
Moving to PostgreSQL)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from tests.support.datasets import audit_verifies, serves_everything, write_ratings
from tests.support.server import SECRET, ServerProcess
from tests.support.webhook_receiver import Receiver

pytestmark = pytest.mark.e2e

ServerFactory = Callable[..., ServerProcess]
HOOKS = {
    "RATEWIRE_WEBHOOKS__ALLOW_INSECURE_HTTP": "true",
    "RATEWIRE_WEBHOOKS__ALLOW_PRIVATE_NETWORKS": "true",
}


async def ratewire(*args: str) -> tuple[int, str]:
    """``python -m ratewire ARGS``: (exit status, what it printed)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ratewire", *args,
        env={**os.environ, "RATEWIRE_JWT__SECRET": SECRET},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode()


def _admin(server: ServerProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token('root', scope='ratings:admin')}"}


async def build_dataset(server: ServerProcess) -> None:
    """Creates, updates and a delete on seven games; a revocation; a webhook that has
    delivered every event (so its cursor is the global head)."""
    await write_ratings(server, range(40))
    receiver = await Receiver.start()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        for n in range(5):  # updates
            changed = await http.put(
                f"/games/g{n % 7}/ratings/u{n}",
                json={"score": 5 - n % 5, "comment": f"changed «{n}»\n\t\\"},
                headers={"Authorization": f"Bearer {server.token(f'u{n}')}"},
            )
            assert changed.status_code == 200, changed.text
        mine = {"Authorization": f"Bearer {server.token('u6')}"}
        rating = (await http.get("/ratings?userId=u6", headers=mine)).json()["items"][0]
        assert (await http.delete(f"/ratings/{rating['id']}", headers=mine)).status_code == 204
        revoked = await http.post(
            "/admin/revocations", json={"sub": "u39", "reason": "test"}, headers=_admin(server)
        )
        assert revoked.status_code == 201, revoked.text
        hook = await http.post(
            "/admin/webhooks",
            json={"url": receiver.url, "topics": ["rating.global"]},
            headers=_admin(server),
        )
        assert hook.status_code == 201, hook.text
        for _ in range(200):
            state = await http.get(f"/admin/webhooks/{hook.json()['id']}", headers=_admin(server))
            if state.json()["cursor"] == 46:  # 40 creates, 5 updates, 1 delete
                break
            await asyncio.sleep(0.05)
        assert state.json()["cursor"] == 46, state.text
    await receiver.close()


async def served(server: ServerProcess) -> dict[str, Any]:
    """What a client sees of the dataset, by REST."""
    reader = {"Authorization": f"Bearer {server.token('reader')}"}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        summaries = [(await http.get(f"/games/g{g}/summary")).json() for g in range(7)]
        history: list[Any] = []
        while True:
            page = (
                await http.get(
                    f"/topics/rating.global/events?since={len(history)}&limit=100", headers=reader
                )
            ).json()
            history += page["events"]
            if not page["events"]:
                break
        resumed = await http.get("/topics/rating.game.g1/events?since=2", headers=reader)
        ratings = await http.get("/ratings?limit=100", headers=reader)
        revocations = await http.get("/admin/revocations", headers=_admin(server))
        hooks = (await http.get("/admin/webhooks", headers=_admin(server))).json()["items"]
    return {
        "summaries": summaries,
        "epoch": page["epoch"],
        "history": history,
        "resumed": resumed.json()["events"],
        "ratings": ratings.json()["items"],
        # The database keeps milliseconds; the server that revoked serves its own clock's.
        "revocations": [
            {**r, "revokedAt": round(r["revokedAt"], 3), "expiresAt": round(r["expiresAt"], 3)}
            for r in revocations.json()["items"]
        ],
        "webhooks": [(h["id"], h["cursor"], h["status"], h["topics"]) for h in hooks],
    }


# Synchronous, with its own event loop: a module's fixture outlives each test's loop.
@pytest.fixture(scope="module")
def source(module_server_factory: ServerFactory) -> tuple[str, dict[str, Any]]:
    """A stopped SQLite database holding the dataset, and what it served."""
    server = module_server_factory(env=HOOKS)

    async def build() -> dict[str, Any]:
        await build_dataset(server)
        return await served(server)

    seen = asyncio.run(build())
    assert len(seen["history"]) == 46 and len(seen["revocations"]) == 1
    server.stop()
    return server.env["RATEWIRE_STORAGE__URL"], seen


@pytest.fixture(params=["postgresql", "mysql", "redis"])
def middle(request: pytest.FixtureRequest) -> tuple[str, str]:
    backend = str(request.param)
    fixture = {"postgresql": "fresh_postgres_url", "mysql": "fresh_mysql_url"}.get(
        backend, "redis_store_url"
    )
    return backend, str(request.getfixturevalue(fixture))


async def test_a_copy_through_each_backend_and_back_serves_what_the_source_served(
    server_factory: ServerFactory,
    source: tuple[str, dict[str, Any]],
    middle: tuple[str, str],
    tmp_path: Path,
) -> None:
    source_url, expected = source
    backend, url = middle
    code, said = await ratewire("copy", "--from", source_url, "--to", url)
    assert code == 0 and "copied 39 ratings, 46 rating_events" in said, said
    on_middle = server_factory(backend=backend, storage_url=url, env=HOOKS)
    assert await served(on_middle) == expected
    # Into a database that holds data: refused, and nothing changes.
    code, said = await ratewire("copy", "--from", source_url, "--to", url)
    assert code == 1 and "is not empty" in said and "nothing was written" in said, said
    assert "Traceback" not in said and len(said.strip().splitlines()) == 1
    assert await served(on_middle) == expected
    on_middle.stop()
    back = f"sqlite:///{tmp_path / 'back.db'}"
    _, (code, said) = await asyncio.gather(  # both only read the middle
        audit_verifies(backend, url), ratewire("copy", "--from", url, "--to", back)
    )
    assert code == 0, said
    on_back = server_factory(storage_url=back, env=HOOKS)
    assert await served(on_back) == expected
    on_back.stop()
    await audit_verifies("sqlite", back)


async def test_a_copy_of_a_live_database_is_one_consistent_state(
    server_factory: ServerFactory, fresh_postgres_url: str
) -> None:
    live = server_factory()
    await write_ratings(live, range(60))
    writing = asyncio.create_task(write_ratings(live, range(60, 300)))
    code, said = await ratewire(
        "copy", "--from", live.env["RATEWIRE_STORAGE__URL"], "--to", fresh_postgres_url
    )
    await writing
    assert code == 0 and "consistent snapshot" in said, said
    await serves_everything(server_factory, "postgresql", fresh_postgres_url, 60, 300)


async def test_copy_names_what_it_cannot_do(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'a.db'}"
    for args, expected in (
        (("--from", "memory://", "--to", db), "lives inside one process"),
        (("--from", db, "--to", db), "the same database"),
        (("--from", f"sqlite:///{tmp_path / 'none.db'}", "--to", db), "no such database"),
        (("--from", "ftp://x", "--to", db), "not a storage URL"),
    ):
        code, said = await ratewire("copy", *args)
        assert code == 1 and expected in said and "Traceback" not in said, (args, said)


def _rewrite(lines: list[bytes], out: Path, *, reseal: bool) -> None:
    """``lines`` to ``out``; with ``reseal`` the end line's checksum is made to match."""
    if reseal:
        digest = hashlib.sha256(b"".join(lines[:-1])).hexdigest()
        end = orjson.loads(lines[-1])
        lines = [*lines[:-1], orjson.dumps({**end, "sha256": digest}) + b"\n"]
    out.write_bytes(b"".join(lines))


async def test_an_export_imports_whole_and_a_faulty_one_not_at_all(
    server_factory: ServerFactory,
    source: tuple[str, dict[str, Any]],
    fresh_postgres_url: str,
    tmp_path: Path,
) -> None:
    source_url, expected = source
    export = tmp_path / "ratewire.jsonl"
    code, said = await ratewire("export", "--from", source_url, "--out", str(export))
    assert code == 0 and "exported 39 ratings" in said, said
    code, said = await ratewire("export", "--from", source_url, "--out", str(export))
    assert code == 1 and "exists already" in said
    lines = export.read_bytes().splitlines(keepends=True)
    header = orjson.loads(lines[0])
    assert header["format"] == "ratewire-export" and header["version"] == 1
    assert header["tables"]["ratings"]["rows"] == 39
    assert orjson.loads(lines[-1])["rows"] == len(lines) - 2
    rating_line = next(i for i, line in enumerate(lines) if line.startswith(b'{"t":"ratings"'))
    number = rating_line + 1  # what an error message calls it

    changed = lines[rating_line].replace(b'"g', b'"h', 1)
    wrong_type = orjson.loads(lines[rating_line])
    wrong_type["r"][3] = "five"
    newer = {**header, "version": 2}
    cases = (
        (lines[:-1], False, f"line {len(lines) - 1}: the file ends without its end line"),
        ([*lines[:-1], lines[-1][:20]], False, f"line {len(lines)}: cut short"),
        (
            [*lines[:rating_line], changed, *lines[rating_line + 1 :]],
            False,
            f"line {len(lines)}: the checksum does not match",
        ),
        (
            [*lines[:rating_line], orjson.dumps(wrong_type) + b"\n", *lines[rating_line + 1 :]],
            True,
            f"line {number}: ratings.score must be an integer",
        ),
        (
            [*lines[:rating_line], b"{not json\n", *lines[rating_line + 1 :]],
            True,
            f"line {number}: not JSON",
        ),
        ([orjson.dumps(newer) + b"\n", *lines[1:]], True, "line 1: format version 2"),
        ([b'{"id": 1}\n'], False, "line 1: not a ratewire export"),
    )
    files = []
    for index, (content, reseal, _) in enumerate(cases):
        files.append(tmp_path / f"faulty-{index}.jsonl")
        _rewrite(content, files[-1], reseal=reseal)
    # Each is refused while the file is read, before the target is opened: all at once.
    answers = await asyncio.gather(
        *(ratewire("import", str(file), "--to", fresh_postgres_url) for file in files)
    )
    for (code, said), (_, _, expected_error) in zip(answers, cases, strict=True):
        assert code == 1 and expected_error in said and "nothing was imported" in said, said
        assert len(said.strip().splitlines()) == 1

    # Nothing was written by any of them: the target is still empty, and takes the export.
    code, said = await ratewire("import", str(export), "--to", fresh_postgres_url)
    assert code == 0 and "imported 39 ratings" in said, said
    imported = server_factory(backend="postgresql", storage_url=fresh_postgres_url, env=HOOKS)
    assert await served(imported) == expected
    imported.stop()
    await audit_verifies("postgresql", fresh_postgres_url)


async def test_rows_the_database_refuses_leave_the_target_as_it_was(
    source: tuple[str, dict[str, Any]], fresh_postgres_url: str, tmp_path: Path
) -> None:
    """A file that passes every check of its own but holds one rating twice: PostgreSQL
    refuses it when the copy builds the primary key, after every row went in."""
    source_url, _ = source
    export = tmp_path / "ratewire.jsonl"
    code, said = await ratewire("export", "--from", source_url, "--out", str(export))
    assert code == 0, said
    lines = export.read_bytes().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if line.startswith(b'{"t":"ratings"'))
    twice = tmp_path / "twice.jsonl"
    header = orjson.loads(lines[0])
    header["tables"]["ratings"]["rows"] += 1
    end = orjson.loads(lines[-1])
    end["rows"] += 1
    _rewrite(
        [
            orjson.dumps(header) + b"\n",
            *lines[1 : first + 1],
            *lines[first:-1],
            orjson.dumps(end) + b"\n",
        ],
        twice,
        reseal=True,
    )
    for target in (fresh_postgres_url, f"sqlite:///{tmp_path / 'target.db'}"):
        code, said = await ratewire("import", str(twice), "--to", target)
        assert code == 1 and "nothing was written" in said and "Traceback" not in said, said
        code, said = await ratewire("import", str(export), "--to", target)
        assert code == 0 and "imported 39 ratings" in said, said  # it was still empty
    import asyncpg

    conn = await asyncpg.connect(fresh_postgres_url.replace("postgresql://", "postgres://"))
    try:
        left = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'ratewire_copy%'"
        )
    finally:
        await conn.close()
    assert left == [], "the copy's own schema is dropped"
