"""Schema migrations on the three SQL backends: a database that the previous release (0.1.0,
before migrations existed) wrote is upgraded by this ratewire once, even by two at once, ends
with the schema a new database gets, and serves everything 0.1.0 wrote (docs/operations.md,
Upgrading)."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from tests.support.datasets import audit_verifies, global_offsets, write_ratings
from tests.support.server import SECRET, ServerProcess

from ratewire.storage.sql import async_url

pytestmark = pytest.mark.e2e

RELEASE = "v0.1.0"
#: The tag's commit, for a clone that did not fetch tags.
RELEASE_COMMIT = "cbdc26fa8b165dea5961bdc5dd439fb847fcfc30"
REPO = Path(__file__).resolve().parents[2]
HOOKS_TO_LOOPBACK = {
    "RATEWIRE_WEBHOOKS__ALLOW_INSECURE_HTTP": "true",
    "RATEWIRE_WEBHOOKS__ALLOW_PRIVATE_NETWORKS": "true",
}


@pytest.fixture(scope="module")
def release_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The source tree of ratewire 0.1.0, from this repository's history."""
    target = tmp_path_factory.mktemp("ratewire-0.1.0")
    for ref in (RELEASE, RELEASE_COMMIT):
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", ref, "src"], capture_output=True
        )
        if archive.returncode == 0:
            with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
                tar.extractall(target, filter="data")
            return target / "src"
    pytest.fail(f"{RELEASE} is not in this clone's history (a shallow clone?): git fetch --tags")


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(backend, url) of an empty database of this test's own."""
    backend = str(request.param)
    if backend == "sqlite":
        return backend, f"sqlite:///{tmp_path / 'ratewire.db'}"
    fixture = {"postgresql": "fresh_postgres_url", "mysql": "fresh_mysql_url"}[backend]
    return backend, str(request.getfixturevalue(fixture))


async def ratewire(
    backend: str, url: str, *args: str, pythonpath: Path | None = None
) -> tuple[int, str]:
    """Run ``python -m ratewire ARGS`` on the database; (exit status, what it printed)."""
    env = {
        **os.environ,
        "RATEWIRE_STORAGE__BACKEND": backend,
        "RATEWIRE_STORAGE__URL": url,
        "RATEWIRE_JWT__SECRET": SECRET,
        **({"PYTHONPATH": str(pythonpath)} if pythonpath else {}),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ratewire", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        raise
    assert process.returncode is not None
    return process.returncode, (out + err).decode()


async def schema_differences(url: str) -> list[Any]:
    """What Alembic's autogenerate finds between the database and this ratewire's schema."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from ratewire.storage.sql import metadata
    from ratewire.storage.sql.migrate import VERSION_TABLE

    engine = create_async_engine(async_url(url))
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"version_table": VERSION_TABLE}),
                    metadata,
                )
            )
    finally:
        await engine.dispose()


async def test_a_database_written_by_0_1_0_is_upgraded_once_and_serves_everything(
    server_factory: Callable[..., ServerProcess],
    release_src: Path,
    database: tuple[str, str],
) -> None:
    backend, url = database
    old = server_factory(backend=backend, storage_url=url, env={"PYTHONPATH": str(release_src)})
    async with httpx.AsyncClient(base_url=old.base_url, timeout=10) as http:
        assert (await http.get("/healthz")).json()["version"] == "0.1.0"
    await write_ratings(old, range(60))
    old.stop()

    (code, said), (refused, refusal) = await asyncio.gather(  # both only read
        ratewire(backend, url, "db", "current"), ratewire(backend, url, "serve", "--no-migrate")
    )
    assert code == 0 and "0001, from before migrations" in said and "ratewire db upgrade" in said
    code, said = refused, refusal
    last = said.strip().splitlines()[-1]
    assert code == 1 and last.startswith("ratewire: cannot start: schema revision 0001"), said
    assert "`ratewire db upgrade`" in last and "Traceback" not in said

    # Two instances upgrading at once: one migrates, the other waits for it and finds it done.
    (code_a, said_a), (code_b, said_b) = await asyncio.gather(
        ratewire(backend, url, "db", "upgrade"), ratewire(backend, url, "db", "upgrade")
    )
    assert (code_a, code_b) == (0, 0), said_a + said_b
    migrated = [s for s in (said_a, said_b) if "upgraded the schema from revision 0001" in s]
    assert len(migrated) == 1, said_a + said_b
    assert await schema_differences(url) == [], "the upgraded schema is a new database's"

    upgraded = server_factory(backend=backend, storage_url=url, env=HOOKS_TO_LOOPBACK)
    async with httpx.AsyncClient(base_url=upgraded.base_url, timeout=10) as http:
        counts = [(await http.get(f"/games/g{g}/summary")).json()["count"] for g in range(7)]
        admin = {"Authorization": f"Bearer {upgraded.token('root', scope='ratings:admin')}"}
        body = {"url": "http://127.0.0.1:9/hook", "topics": ["rating.global"]}
        created = await http.post("/admin/webhooks", json=body, headers=admin)
        assert created.status_code == 201, created.text  # the migration's tables
    assert sum(counts) == 60
    offsets, head = await global_offsets(upgraded)
    assert head == 60 and offsets == list(range(1, 61)), "0.1.0's history, whole"
    upgraded.stop()
    # 0.1.0 on the upgraded schema refuses to start rather than misread it.
    _, (code, said) = await asyncio.gather(
        audit_verifies(backend, url), ratewire(backend, url, "serve", pythonpath=release_src)
    )
    assert code == 1 and "newer than this ratewire" in said, said


async def test_a_schema_from_a_newer_ratewire_or_none_at_all_with_no_migrate_is_refused(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'ratewire.db'}"
    code, said = await ratewire("sqlite", url, "serve", "--no-migrate")
    assert code == 1 and "database is empty" in said and "`ratewire db upgrade`" in said
    code, said = await ratewire("sqlite", url, "db", "upgrade")
    assert code == 0 and "created the schema at revision" in said, said
    import sqlite3

    with sqlite3.connect(tmp_path / "ratewire.db") as conn:
        conn.execute("UPDATE ratewire_alembic_version SET version_num = '9999'")
    for args in (("serve",), ("db", "upgrade"), ("db", "current")):
        code, said = await ratewire("sqlite", url, *args)
        assert code == 1 and "revision 9999 is newer than this ratewire" in said, (args, said)
