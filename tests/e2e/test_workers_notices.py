"""``ratewire serve --workers N`` on the embedded default (SQLite, in-process broker): a commit
in one worker reaches the subscribers of every other worker through a commit notice, not at
the relay's next poll of the store, and still exactly once and in order."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.cluster.follower import assert_exactly_once, subscribed_followers
from tests.support.server import ServerProcess

pytestmark = pytest.mark.e2e

WRITES = 20


def notice_sockets(directory: Path) -> int:
    """How many workers have bound their notice socket (under the supervisor's TMPDIR)."""
    return len(list(directory.glob("ratewire-notices-*/w*.sock")))


async def notice_counts(http: httpx.AsyncClient) -> dict[str, float]:
    text = (await http.get("/metrics")).text
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ratewire_worker_notices_total"
    }


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path (pytest's are too long for Unix sockets)."""
    path = Path(tempfile.mkdtemp(prefix="rwt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_a_commit_in_one_worker_is_announced_to_the_other(
    server_factory: Callable[..., ServerProcess], short_tmp: Path
) -> None:
    # The supervisor makes the notices' directory under TMPDIR: here, where the test sees it.
    tmp_path = short_tmp
    server = server_factory(args=("--workers", "2"), env={"TMPDIR": str(tmp_path)})
    found = await asyncio.to_thread(
        subprocess.run, ["pgrep", "-P", str(server.pid)], capture_output=True, text=True
    )
    assert len(found.stdout.split()) == 2
    # The first worker answers /healthz before the second is up; writes committed before a
    # worker starts are not announced to it (it starts at the store's head), so wait for both.
    for _ in range(200):
        if notice_sockets(tmp_path) == 2:
            break
        await asyncio.sleep(0.05)
    assert notice_sockets(tmp_path) == 2
    token = server.token("watcher")
    followers = await subscribed_followers(server, token, "rating.game.n", 12)
    # New connections each time: the kernel spreads them, so both workers take writes.
    for i in range(WRITES):
        user = f"n{i}"
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            answer = await http.put(
                f"/games/n/ratings/{user}",
                json={"score": 1 + i % 5},
                headers={"Authorization": f"Bearer {server.token(user)}"},
            )
        assert answer.status_code == 201
    for follower in followers:
        await follower.wait_for(WRITES)
        assert_exactly_once(follower, WRITES)
    # Every commit was announced to the other worker, and taken from the notice.
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        for _ in range(40):
            counts = await notice_counts(http)
            if counts.get("sent") == counts.get("received") == WRITES:
                break
            await asyncio.sleep(0.25)  # workers copy their counts every second
    assert (counts.get("sent"), counts.get("received")) == (WRITES, WRITES)
    assert counts.get("dropped", 0) == 0
    for follower in followers:
        await follower.stop()


def test_a_worker_that_cannot_bind_its_notice_socket_still_serves(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """A notice socket path too long for Unix sockets turns notices off with one warning,
    never the start off: the relay's poll still brings every event."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    server = server_factory(env={"RATEWIRE_WORKER_NOTIFY_DIR": str(deep)})
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        created = http.post(
            "/ratings",
            json={"gameId": "n", "userId": "u", "score": 3},
            headers={"Authorization": f"Bearer {server.token('u')}"},
        )
        assert created.status_code == 201
    assert "worker notices off" in server.log_text()
