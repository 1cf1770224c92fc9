"""A fresh clone as a newcomer gets it (issue 42): the README's first command, ``make run``,
creates .venv with the runtime only and serves until healthy; the JavaScript example's own
``npm install`` builds the client it depends on.

The clone is of the committed HEAD. ``make run`` installs from pip's usual sources and cache
(on a warm cache it takes about 30 s here)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from tests.support.node import require_node
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def needs(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        message = f"{', '.join(missing)} needed for the fresh-clone test"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def readme_first_commands() -> list[str]:
    """The commands of the README's first code block, comments removed."""
    text = (ROOT / "README.md").read_text()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_make_run_in_a_fresh_clone_serves_with_the_runtime_only(tmp_path: Path) -> None:
    needs("git", "make", "python3")
    assert readme_first_commands()[:2] == ["make run", "make test"]
    clone = tmp_path / "ratewire"
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)],
        check=True,
        timeout=120,
    )
    http_port, ws_port = free_port(), free_port()
    env = {
        **{
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "VIRTUAL_ENV", "MAKEFLAGS", "MAKELEVEL")
            and not key.startswith("RATEWIRE_")
        },
        # The system's python3, not this test's venv: as on a fresh machine.
        "PATH": os.pathsep.join(
            part
            for part in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
            if not part.startswith(str(ROOT / ".venv"))
        ),
        "RATEWIRE_SERVER__PORT": str(http_port),
        "RATEWIRE_MODULES__WEBSOCKET__PORT": str(ws_port),
    }
    log_path = tmp_path / "make-run.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        make = subprocess.Popen(
            ["make", "run"],
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 600  # a cold pip cache downloads every dependency
        healthy = None
        while healthy is None and time.monotonic() < deadline:
            if make.poll() is not None:
                pytest.fail(f"make run exited with {make.returncode}:\n{log_path.read_text()}")
            try:
                answer = httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1)
                if answer.status_code == 200:
                    healthy = answer.json()
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert healthy is not None, f"not healthy in 600 s:\n{log_path.read_text()}"
        print(f"make run in a fresh clone: healthy after {time.monotonic() - started:.1f} s")
        assert healthy["status"] == "ok"
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGTERM)
        try:
            make.wait(30)
        finally:
            if make.poll() is None:
                os.killpg(make.pid, signal.SIGKILL)
    bin_dir = clone / ".venv" / "bin"
    assert (bin_dir / "ratewire").exists()
    for dev_tool in ("ruff", "mypy", "pytest", "playwright", "schemathesis", "py-spy"):
        assert not (bin_dir / dev_tool).exists(), f"make run installed {dev_tool}"


def test_the_js_example_installs_and_builds_its_client_by_itself(tmp_path: Path) -> None:
    """``cd examples/js && npm install`` on a checkout where clients/js was never built."""
    node, npm = require_node()
    for part in ("clients/js", "examples/js"):
        shutil.copytree(
            ROOT / part,
            tmp_path / part,
            ignore=shutil.ignore_patterns("node_modules", "dist"),
        )
    examples = tmp_path / "examples" / "js"
    installed = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund"],
        cwd=examples,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    imported = subprocess.run(
        [node, "-e", "import('ratewire-client').then((m) => console.log(typeof m.RatewireClient))"],
        cwd=examples,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.stdout.strip() == "function", imported.stderr
