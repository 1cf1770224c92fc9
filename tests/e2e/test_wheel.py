"""The package as a user installs it: ``python -m build`` makes an sdist and a wheel, the wheel
goes into a fresh virtual environment outside the checkout, and from a directory that is not
the checkout ``ratewire`` serves REST, both WebSocket endpoints, the dashboard and the API
docs, and ``ratewire tail`` receives a POSTed rating. The same environment, which has no
optional driver, shows that each extra a configuration needs is named in one line."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.server import free_port
from websockets.sync.client import connect

from ratewire import __version__

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


class Installed:
    """A virtual environment with the wheel (and nothing of the checkout) in it."""

    def __init__(self, root: Path, dist: Path) -> None:
        self.root, self.dist = root, dist
        self.bin = root / "venv" / "bin"
        self.home = root / "home"  # the working directory: not the checkout
        self.home.mkdir()
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "VIRTUAL_ENV") and not key.startswith("RATEWIRE_")
        }

    def ratewire(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "ratewire"), *args],
            cwd=self.home,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    (wheel,) = dist.glob("ratewire-*.whl")
    subprocess.run(
        [
            str(root / "venv" / "bin" / "pip"),
            "install",
            "-q",
            "--disable-pip-version-check",
            str(wheel),
        ],
        check=True,
        timeout=600,
    )
    yield Installed(root, dist)


def test_the_sdist_and_the_wheel_carry_the_release_files(installed: Installed) -> None:
    (wheel,) = installed.dist.glob(f"ratewire-{__version__}-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("ratewire/py.typed", "ratewire/dashboard/index.html"):
        assert needed in names
    assert any(name.endswith("/licenses/LICENSE") for name in names)
    assert any(name.endswith("/share/doc/ratewire/CHANGELOG.md") for name in names)
    (sdist,) = installed.dist.glob(f"ratewire-{__version__}.tar.gz")
    with tarfile.open(sdist) as archive:
        members = {Path(name).name for name in archive.getnames()}
    assert {"LICENSE", "CHANGELOG.md", "pyproject.toml"} <= members
    version = installed.ratewire("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"ratewire, version {__version__}"


def test_the_installed_server_serves_and_tail_receives_a_rating(installed: Installed) -> None:
    http_port, ws_port = free_port(), free_port()
    env = {
        **installed.env,
        "RATEWIRE_SERVER__HOST": "127.0.0.1",
        "RATEWIRE_SERVER__PORT": str(http_port),
        "RATEWIRE_MODULES__WEBSOCKET__PORT": str(ws_port),
    }
    base = f"http://127.0.0.1:{http_port}"
    log = (installed.root / "serve.log").open("w")
    server = subprocess.Popen(
        [str(installed.bin / "ratewire"), "serve", "--dev"],
        cwd=installed.home,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    tail = None
    try:
        _wait_until_ready(base, server, installed.root / "serve.log")
        health = httpx.get(f"{base}/healthz").json()
        assert health == {"status": "ok", "version": __version__}
        assert httpx.get(f"{base}/openapi.json").json()["info"]["version"] == __version__
        for page in ("/dashboard", "/docs"):
            answer = httpx.get(base + page)
            assert answer.status_code == 200 and "text/html" in answer.headers["content-type"]

        token = installed.ratewire("token", "7", env=env).stdout.strip()
        tail = subprocess.Popen(
            # --since 0: it replays the rating even if it subscribes after the POST (a loaded
            # machine may take longer than the second below to start it).
            [str(installed.bin / "ratewire"), "tail", "rating.game.42", "--since", "0", "--json"],
            cwd=installed.home,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        with (
            connect(f"ws://127.0.0.1:{ws_port}/?token={token}") as module_port,
            connect(f"ws://127.0.0.1:{http_port}/ws?token={token}") as main_port,
        ):
            for socket in (module_port, main_port):
                assert json.loads(socket.recv(10))["type"] == "connection_success"
                socket.send(json.dumps({"action": "subscribe", "topic": "rating.game.42"}))
                assert json.loads(socket.recv(10))["type"] == "subscribed"
            created = httpx.post(
                f"{base}/ratings",
                headers={"Authorization": f"Bearer {token}"},
                json={"gameId": 42, "score": 4, "comment": "from the wheel"},
            )
            assert created.status_code == 201, created.text
            for socket in (module_port, main_port):
                update = json.loads(socket.recv(10))
                assert update["type"] == "rating_update" and update["data"]["score"] == 4
        assert tail.stdout is not None
        ready, _, _ = select.select([tail.stdout], [], [], 30)
        assert ready, "ratewire tail printed nothing in 30 s"
        line = json.loads(tail.stdout.readline())
        assert (line["offset"], line["event"], line["data"]["comment"]) == (
            1,
            "created",
            "from the wheel",
        )
    finally:
        if tail is not None:
            tail.terminate()
            tail.wait(10)
        server.terminate()
        server.wait(20)
        log.close()


@pytest.mark.parametrize(
    ("settings", "extra"),
    [
        ({"RATEWIRE_STORAGE__BACKEND": "postgresql"}, "postgresql"),
        ({"RATEWIRE_STORAGE__BACKEND": "mysql"}, "mysql"),
        ({"RATEWIRE_STORAGE__BACKEND": "redis"}, "redis"),
        ({"RATEWIRE_BROKER__BACKEND": "redis"}, "redis"),
        ({"RATEWIRE_BROKER__BACKEND": "nats"}, "nats"),
    ],
)
def test_a_missing_driver_stops_the_start_naming_its_extra(
    installed: Installed, settings: dict[str, str], extra: str
) -> None:
    urls = {
        "postgresql": "postgresql://127.0.0.1:5432/test",
        "mysql": "mysql://root@127.0.0.1:3306/test",
        "redis": "redis://127.0.0.1:6379/0",
        "nats": "nats://127.0.0.1:4222",
    }
    env = {**settings, "RATEWIRE_SERVER__PORT": str(free_port())}
    if "RATEWIRE_STORAGE__BACKEND" in settings:
        env["RATEWIRE_STORAGE__URL"] = urls[extra]
    else:
        env["RATEWIRE_BROKER__URL"] = urls[extra]
    started = installed.ratewire("serve", "--dev", env=env)
    assert started.returncode == 1
    lines = started.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install 'ratewire[{extra}]'" in lines[0], started.stderr


def test_the_mcp_command_names_its_extra(installed: Installed) -> None:
    started = installed.ratewire("mcp", "--token", "x")
    assert started.returncode == 1
    assert "pip install 'ratewire[mcp]'" in started.stderr and "Traceback" not in started.stderr


def _wait_until_ready(base: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"ratewire serve exited with {server.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"ratewire serve did not get ready in 30 s:\n{log.read_text()}")
