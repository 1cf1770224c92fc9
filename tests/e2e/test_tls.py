"""TLS on both ports: with ``tls.cert`` and ``tls.key`` the main port serves ``https://``
(REST and ``wss://.../ws``) and the WebSocket port ``wss://``, from one certificate; a client
that trusts it gets a rating's update on both, and a plain-text client gets nothing."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.certs import self_signed
from tests.support.server import SECRET, free_port
from websockets.sync.client import connect

from ratewire.config import JwtSettings
from ratewire.security.tokens import TokenService

pytestmark = pytest.mark.e2e


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    cert, key = self_signed(tmp_path)
    http_port, ws_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RATEWIRE_")},
        "RATEWIRE_SERVER__HOST": "127.0.0.1",
        "RATEWIRE_SERVER__PORT": str(http_port),
        "RATEWIRE_MODULES__WEBSOCKET__PORT": str(ws_port),
        "RATEWIRE_STORAGE__URL": f"sqlite:///{tmp_path / 'tls.db'}",
        "RATEWIRE_JWT__SECRET": SECRET,
        "RATEWIRE_TLS__CERT": str(cert),
        "RATEWIRE_TLS__KEY": str(key),
    }
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "ratewire", "serve"], cwd=tmp_path, env=env, stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    trust = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"https://127.0.0.1:{http_port}/readyz", verify=trust).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail((tmp_path / "server.log").read_text())
        time.sleep(0.1)
    yield http_port, ws_port, cert
    process.terminate()
    process.wait(20)
    log.close()


def test_both_ports_serve_tls_with_one_certificate(tls_server: tuple[int, int, Path]) -> None:
    http_port, ws_port, cert = tls_server
    trust = ssl.create_default_context(cafile=str(cert))
    token = TokenService(JwtSettings(secret=SECRET)).issue("7")
    with (
        connect(f"wss://127.0.0.1:{ws_port}/?token={token}", ssl=trust) as module_port,
        connect(f"wss://127.0.0.1:{http_port}/ws?token={token}", ssl=trust) as main_port,
    ):
        for socket in (module_port, main_port):
            assert json.loads(socket.recv(10))["type"] == "connection_success"
            socket.send(json.dumps({"action": "subscribe", "topic": "rating.game.tls"}))
            assert json.loads(socket.recv(10))["type"] == "subscribed"
        answer = httpx.post(
            f"https://127.0.0.1:{http_port}/ratings",
            json={"gameId": "tls", "score": 5},
            headers={"Authorization": f"Bearer {token}"},
            verify=trust,
        )
        assert answer.status_code == 201, answer.text
        for socket in (module_port, main_port):
            update = json.loads(socket.recv(10))
            assert (update["type"], update["data"]["score"]) == ("rating_update", 5)
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets no answer
        httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=3)


@pytest.mark.parametrize("problem", ["missing", "not a certificate"])
def test_unusable_tls_files_stop_the_start_naming_them_not_a_port(
    tmp_path: Path, problem: str
) -> None:
    cert, key = tmp_path / "missing.pem", tmp_path / "missing.key"
    if problem == "not a certificate":
        cert.write_text("garbage")
        key.write_text("garbage")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RATEWIRE_")},
        "RATEWIRE_SERVER__PORT": str(free_port()),
        "RATEWIRE_MODULES__WEBSOCKET__PORT": str(free_port()),
        "RATEWIRE_STORAGE__URL": f"sqlite:///{tmp_path / 'tls.db'}",
        "RATEWIRE_JWT__SECRET": SECRET,
        "RATEWIRE_TLS__CERT": str(cert),
        "RATEWIRE_TLS__KEY": str(key),
    }
    started = subprocess.run(
        [sys.executable, "-m", "ratewire", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 1
    last = started.stderr.strip().splitlines()[-1]
    assert last.startswith("ratewire: cannot start: tls.cert"), last
    assert str(cert) in last and "port" not in last
