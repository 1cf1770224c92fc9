"""SIGHUP (``ratewire reload``) on real server processes: the TLS certificate swapped under
live ``wss://`` subscribers (they keep streaming on their connection; a new client sees the new
certificate on both ports), a JWT key removed mid-stream (tokens it signed are refused at
their next check, the cache of verified tokens included; live connections stay), a bad new
file refused with one line naming it while the old one stays in use, and the workers of
``serve --workers`` reloading through their supervisor."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from tests.e2e.wsclient import WsClient
from tests.support.certs import self_signed
from tests.support.cli import run_ratewire
from tests.support.server import SECRET, ServerProcess, free_port
from websockets.sync.client import ClientConnection, connect

from ratewire.config import JwtSettings
from ratewire.security.tokens import TokenService

pytestmark = pytest.mark.e2e

OLD_SECRET = "old-key-0123456789abcdef0123456789abcdef"
NEW_SECRET = "new-key-0123456789abcdef0123456789abcdef"


def wait_for_log(log: Path, text: str, count: int = 1, timeout: float = 20) -> None:
    """Until ``text`` appears ``count`` times in the server's log (the reload is done)."""
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count(text) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} not logged {count}x:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


class TlsServer:
    """``ratewire serve`` with TLS from ``workdir/cert.pem`` and ``workdir/key.pem``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.cert, self.key = self_signed(workdir)
        self.log = workdir / "server.log"
        self.http_port, self.ws_port = free_port(), free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RATEWIRE_")},
            "RATEWIRE_SERVER__HOST": "127.0.0.1",
            "RATEWIRE_SERVER__PORT": str(self.http_port),
            "RATEWIRE_MODULES__WEBSOCKET__PORT": str(self.ws_port),
            "RATEWIRE_STORAGE__URL": f"sqlite:///{workdir / 'tls.db'}",
            "RATEWIRE_JWT__SECRET": SECRET,
            "RATEWIRE_TLS__CERT": str(self.cert),
            "RATEWIRE_TLS__KEY": str(self.key),
        }
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ratewire", "serve"], cwd=workdir, env=env, stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{self.base_url}/readyz", verify=self.trust()).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.process.kill()
                pytest.fail(self.log.read_text())
            time.sleep(0.1)

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"

    def urls(self) -> list[str]:
        return [f"wss://127.0.0.1:{self.ws_port}/", f"wss://127.0.0.1:{self.http_port}/ws"]

    def trust(self, cert: Path | None = None) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(cert or self.cert))

    def swap_certificate(self) -> Path:
        """A new certificate and key in place of the served ones; the new certificate."""
        fresh = self.workdir / "fresh"
        fresh.mkdir(exist_ok=True)
        cert, key = self_signed(fresh)
        kept = fresh / "new-cert.pem"
        shutil.copy(cert, kept)
        os.replace(key, self.key)  # as certbot's renewal does: the files change in place
        os.replace(cert, self.cert)
        return kept

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TlsServer]:
    server = TlsServer(tmp_path)
    yield server
    server.stop()


def served_certificate(url: str, trust: ssl.SSLContext, token: str) -> bytes:
    # 30 s, not the library's 10: a CI run with four workers on two cores (a container build
    # beside it) once took longer than 10 s to answer one handshake; the certificate is the
    # point here, not the time.
    with connect(f"{url}?token={token}", ssl=trust, open_timeout=30) as ws:
        assert json.loads(ws.recv(30))["type"] == "connection_success"
        ssl_object = ws.socket.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        assert ssl_object is not None
        return ssl_object


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


def test_a_certificate_swapped_under_live_wss_subscribers(tls_server: TlsServer) -> None:
    server = tls_server
    token = TokenService(JwtSettings(secret=SECRET)).issue("7")
    old_cert = server.workdir / "old-cert.pem"
    shutil.copy(server.cert, old_cert)
    live: list[ClientConnection] = []
    stack = contextlib.ExitStack()
    for url in server.urls():
        ws = stack.enter_context(connect(f"{url}?token={token}", ssl=server.trust()))
        live.append(ws)
        assert json.loads(ws.recv(10))["type"] == "connection_success"
        ws.send(json.dumps({"action": "subscribe", "topic": "rating.game.certs"}))
        assert json.loads(ws.recv(10))["type"] == "subscribed"

    new_cert = server.swap_certificate()
    result = run_ratewire("reload", "--pid", str(server.process.pid), cwd=server.workdir)
    assert result.returncode == 0, result.stderr
    wait_for_log(server.log, "reload: new TLS handshakes use the certificate")

    # New clients get the new certificate on both ports; one trusting only the old fails.
    for url in server.urls():
        assert served_certificate(url, server.trust(new_cert), token) == der(new_cert)
        with pytest.raises(ssl.SSLCertVerificationError):
            served_certificate(url, server.trust(old_cert), token)
    # The live subscribers kept their connections (and their certificate) and stream on.
    answer = httpx.post(
        f"{server.base_url}/ratings",
        json={"gameId": "certs", "score": 5},
        headers={"Authorization": f"Bearer {token}"},
        verify=server.trust(new_cert),
    )
    assert answer.status_code == 201, answer.text
    for ws in live:
        ssl_socket = ws.socket
        assert ssl_socket.getpeercert(binary_form=True) == der(old_cert)  # type: ignore[attr-defined]
        update = json.loads(ws.recv(10))
        assert update["type"] == "rating_update" and update["data"]["gameId"] == "certs"

    # A bad new certificate is refused in one line naming it; the current one stays.
    server.cert.write_text("not a certificate\n")
    os.kill(server.process.pid, signal.SIGHUP)
    wait_for_log(server.log, "reload refused")
    refusals = [line for line in server.log.read_text().splitlines() if "reload refused" in line]
    assert len(refusals) == 1 and str(server.cert) in refusals[0], refusals
    for url in server.urls():
        assert served_certificate(url, server.trust(new_cert), token) == der(new_cert)
    stack.close()


def write_auth(path: Path, *kids: str) -> None:
    secrets = {"new": NEW_SECRET, "old": OLD_SECRET}
    keys = "".join(
        f"    - {{kid: {kid}, algorithm: HS256, secret: {secrets[kid]}}}\n" for kid in kids
    )
    path.write_text(f"jwt:\n  keys:\n{keys}")


def signed(kid: str, sub: str) -> str:
    secret = {"new": NEW_SECRET, "old": OLD_SECRET}[kid]
    return TokenService(
        JwtSettings.model_validate({"keys": [{"kid": kid, "algorithm": "HS256", "secret": secret}]})
    ).issue(sub)


async def rest_status(server: ServerProcess, token: str, user: str, score: int = 3) -> int:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        answer = await http.put(
            f"/games/keys/ratings/{user}",
            json={"score": score},
            headers={"Authorization": f"Bearer {token}"},
        )
    return answer.status_code


async def test_a_key_removed_mid_stream_is_refused_at_the_next_check(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    auth = tmp_path / "auth.yml"
    write_auth(auth, "old")
    server = server_factory(args=("--auth", str(auth)))
    log = server.workdir / "server.log"
    old_token = signed("old", "7")
    assert await rest_status(server, old_token, "7") == 201  # now in the verified cache
    live = [await WsClient.open(url, old_token) for url in (server.module_ws_url, server.ws_url)]
    for client in live:
        assert (await client.recv())["type"] == "connection_success"
        await client.subscribe("rating.game.keys")

    # Rotation, step 1: the new key first (it signs), the old one still verifies.
    write_auth(auth, "new", "old")
    os.kill(server.pid, signal.SIGHUP)
    wait_for_log(log, "reload: JWT key set re-read")
    new_token = signed("new", "8")
    assert await rest_status(server, new_token, "8") == 201
    assert await rest_status(server, old_token, "7", score=4) == 200
    # Step 2: the old key removed. Tokens it signed are refused from their next check on.
    write_auth(auth, "new")
    os.kill(server.pid, signal.SIGHUP)
    wait_for_log(log, "reload: JWT key set re-read", count=2)
    assert await rest_status(server, old_token, "7") == 401  # the cache did not keep it
    for url in (server.module_ws_url, server.ws_url):
        async with await WsClient.open(url, old_token) as refused:
            assert (await refused.closed_with())[0] == 4001
    # The live connections were not dropped: they stream on, and their next check (a
    # refresh) refuses the old key's token and takes one the new key signed.
    assert await rest_status(server, new_token, "8", score=5) == 200
    for client in live:
        updates = await client.updates(3)
        assert [u["data"]["userId"] for u in updates] == ["8", "7", "8"]
        await client.send(action="refresh", token=old_token)
        refused_refresh = await client.recv_type("error")
        assert refused_refresh["code"] == "forbidden"
        await client.send(action="refresh", token=signed("new", "7"))
        assert (await client.recv_type("refreshed"))["type"] == "refreshed"
        await client.close()

    # A key set that does not load is refused in one line; the current keys stay.
    auth.write_text("jwt:\n  keys:\n    - {kid: short, algorithm: HS256, secret: tooshort}\n")
    os.kill(server.pid, signal.SIGHUP)
    wait_for_log(log, "reload refused")
    refusals = [line for line in log.read_text().splitlines() if "reload refused" in line]
    assert len(refusals) == 1 and "jwt.keys 'short'" in refusals[0], refusals
    assert await rest_status(server, new_token, "8") == 200
    server.stop()
    assert old_token not in log.read_text() and new_token not in log.read_text()


async def test_workers_reload_through_their_supervisor(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    auth = tmp_path / "auth.yml"
    write_auth(auth, "old")
    pid_file = tmp_path / "ratewire.pid"
    server = server_factory(
        args=("--auth", str(auth), "--workers", "2", "--pid-file", str(pid_file))
    )
    assert pid_file.read_text().strip() == str(server.pid)
    wait_for_log(server.workdir / "server.log", "listening: REST", count=2)  # both workers up
    write_auth(auth, "new")
    result = run_ratewire("reload", "--pid-file", str(pid_file), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    wait_for_log(server.workdir / "server.log", "reload: JWT key set re-read", count=2)
    # Whichever worker answers, the new key verifies and the removed one does not.
    for _ in range(4):
        assert await rest_status(server, signed("new", "9"), "9") in (200, 201)
        assert await rest_status(server, signed("old", "9"), "9") == 401
