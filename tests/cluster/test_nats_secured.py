"""The NATS broker through a server that wants TLS and a password, as production ones do:
instances given ``tls://user:password@...`` and the CA file deliver across the cluster; an
instance with the wrong password stops at start with one line that does not print it."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.cluster.conftest import ClusterFactory
from tests.cluster.follower import Follower, assert_exactly_once
from tests.support.certs import self_signed
from tests.support.nats_server import NatsServer

pytestmark = [pytest.mark.e2e, pytest.mark.postgresql]

PASSWORD = "s3cret-broker-password"


@pytest.fixture
def secured_nats(tmp_path: Path) -> Iterator[tuple[NatsServer, Path]]:
    cert, key = self_signed(tmp_path)
    server = NatsServer(
        tmp_path,
        extra_args=(
            "--tls", "--tlscert", str(cert), "--tlskey", str(key),
            "--user", "ratewire", "--pass", PASSWORD,
        ),
    )  # fmt: skip
    yield server, cert
    server.stop()


@pytest.mark.parametrize("cluster_broker", ["nats"], indirect=True)
async def test_instances_on_a_tls_and_password_nats_deliver_to_each_other(
    instance: ClusterFactory, secured_nats: tuple[NatsServer, Path]
) -> None:
    server, cert = secured_nats
    env = {
        "RATEWIRE_BROKER__URL": f"tls://ratewire:{PASSWORD}@127.0.0.1:{server.port}",
        "RATEWIRE_BROKER__TLS_CA_FILE": str(cert),
    }
    writer, reader = instance(env=env), instance(role="stream", env=env)
    follower = Follower([reader.module_ws_url], writer.token("watcher"), "rating.game.tls")
    follower.start()
    await asyncio.wait_for(follower.subscribed.wait(), 10)
    async with httpx.AsyncClient(base_url=writer.base_url, timeout=10) as http:
        for i in range(5):
            answer = await http.put(
                f"/games/tls/ratings/u{i}",
                json={"score": 4},
                headers={"Authorization": f"Bearer {writer.token(f'u{i}')}"},
            )
            assert answer.status_code == 201
    await follower.wait_for(5)
    await follower.stop()
    assert_exactly_once(follower, 5)

    wrong = {**env, "RATEWIRE_BROKER__URL": env["RATEWIRE_BROKER__URL"].replace(PASSWORD, "no")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ratewire", "serve", "--role", "stream",
        env={**reader.env, **wrong, "RATEWIRE_STORAGE__BACKEND": "none"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    text = stderr.decode()
    last = text.strip().splitlines()[-1]
    assert last.startswith("ratewire: cannot start: broker unreachable at tls://REDACTED@"), last
    assert PASSWORD not in text and "Traceback" not in text
