"""Backups that a new server serves, ratings, topics' history and the audit chain included:
``ratewire backup`` of the live SQLite database, and ``pg_dump``/``pg_restore`` of a live
PostgreSQL one (docs/operations.md, Backups)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.conftest import _postgres_database
from tests.support.datasets import serves_everything, write_ratings
from tests.support.server import SECRET, ServerProcess

pytestmark = pytest.mark.e2e


async def _backup(database: Path, target: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ratewire", "backup", str(target),
        env={**os.environ, "RATEWIRE_STORAGE__URL": f"sqlite:///{database}",
             "RATEWIRE_JWT__SECRET": SECRET},
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_a_backup_taken_under_writes_serves_everything_it_holds(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    live = server_factory()
    database = Path(live.env["RATEWIRE_STORAGE__URL"].removeprefix("sqlite:///"))
    target = tmp_path / "copy.db"
    await write_ratings(live, range(200))
    writing = asyncio.create_task(
        write_ratings(live, range(200, 400))
    )  # the copy is taken meanwhile
    code, said = await _backup(database, target)
    await writing
    assert code == 0, said
    assert "backed up" in said and str(target) in said
    await serves_everything(server_factory, "sqlite", f"sqlite:///{target}", 200, 400)


@pytest.fixture
def restored_postgres_url() -> Iterator[str]:
    """An empty PostgreSQL database to restore into."""
    yield from _postgres_database("ratewire_r")


async def test_a_pg_dump_of_a_live_database_restores_into_one_that_serves(
    server_factory: Callable[..., ServerProcess],
    fresh_postgres_url: str,
    restored_postgres_url: str,
    tmp_path: Path,
) -> None:
    """The documented PostgreSQL backup: pg_dump -Fc while writes go on, pg_restore."""
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.fail("pg_dump and pg_restore are needed (Debian's postgresql-client)")
    live = server_factory(backend="postgresql", storage_url=fresh_postgres_url)
    await write_ratings(live, range(150))
    dump = tmp_path / "ratewire.dump"
    writing = asyncio.create_task(write_ratings(live, range(150, 300)))
    done = await asyncio.to_thread(
        subprocess.run,
        ["pg_dump", "--format=custom", f"--file={dump}", f"--dbname={fresh_postgres_url}"],
        capture_output=True,
        text=True,
    )
    await writing
    assert done.returncode == 0, done.stderr
    restored = await asyncio.to_thread(
        subprocess.run,
        ["pg_restore", "--no-owner", f"--dbname={restored_postgres_url}", str(dump)],
        capture_output=True,
        text=True,
    )
    assert restored.returncode == 0, restored.stderr
    await serves_everything(server_factory, "postgresql", restored_postgres_url, 150, 300)


async def test_a_backup_never_overwrites_and_names_the_tool_for_other_backends(
    tmp_path: Path,
) -> None:
    taken = tmp_path / "taken.db"
    taken.write_text("mine")
    source = tmp_path / "source.db"
    source.write_bytes(b"")  # an empty file is an empty SQLite database
    code, said = await _backup(source, taken)
    assert code == 1 and "exists already" in said and taken.read_text() == "mine"
    code, said = await _backup(tmp_path / "absent.db", tmp_path / "new.db")
    assert code == 1 and "absent.db: no such database" in said
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ratewire", "backup", str(tmp_path / "x.db"),
        env={**os.environ, "RATEWIRE_STORAGE__BACKEND": "postgresql"},
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    assert process.returncode == 2 and "pg_dump" in err.decode()
    assert len(err.decode().strip().splitlines()) == 1
