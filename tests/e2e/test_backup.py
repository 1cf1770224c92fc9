"""``ratewire backup``: an online copy of the live SQLite database that a new server serves,
its ratings, its topics' history and its audit chain included."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
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
    async with httpx.AsyncClient(base_url=live.base_url, timeout=10) as http:

        async def write(n: int) -> None:
            answer = await http.put(
                f"/games/g{n % 7}/ratings/u{n}",
                json={"score": 1 + n % 5},
                headers={"Authorization": f"Bearer {live.token(f'u{n}')}"},
            )
            assert answer.status_code == 201

        await asyncio.gather(*(write(n) for n in range(200)))
        # The copy is taken while writes go on.
        writing = asyncio.gather(*(write(n) for n in range(200, 400)))
        code, said = await _backup(database, target)
        await writing
    assert code == 0, said
    assert "backed up" in said and str(target) in said
    restored = server_factory(storage_url=f"sqlite:///{target}")
    async with httpx.AsyncClient(base_url=restored.base_url, timeout=10) as http:
        counts = [(await http.get(f"/games/g{g}/summary")).json()["count"] for g in range(7)]
        total = sum(counts)
        assert 200 <= total <= 400, "at least everything written before the copy began"
        offsets: list[int] = []
        while True:  # the whole history of rating.global, page by page
            page = await http.get(
                f"/topics/rating.global/events?since={len(offsets)}&limit=100",
                headers={"Authorization": f"Bearer {restored.token('reader')}"},
            )
            assert page.status_code == 200, page.text
            offsets += [e["offset"] for e in page.json()["events"]]
            if not page.json()["events"]:
                break
        assert page.json()["head"] == total and offsets == list(range(1, total + 1))
    restored.stop()
    verify = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ratewire", "audit", "verify",
        env={**os.environ, "RATEWIRE_STORAGE__URL": f"sqlite:///{target}"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await verify.communicate()
    assert verify.returncode == 0, out.decode()


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
