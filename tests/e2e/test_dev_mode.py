"""``make run`` (``ratewire serve --dev``) is a trial: it listens on 127.0.0.1 unless
``server.host`` says otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.server import free_port

pytestmark = pytest.mark.e2e


def _listening_line(tmp_path: Path, **env: str) -> tuple[str, list[str]]:
    """The 'listening' log line of a --dev server started in ``tmp_path``, and every line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ratewire", "serve", "--dev"],
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("RATEWIRE_")},
            "RATEWIRE_SERVER__PORT": str(free_port()),
            "RATEWIRE_MODULES__WEBSOCKET__PORT": str(free_port()),
            **env,
        },
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    listening = None
    try:
        deadline = time.monotonic() + 30
        assert process.stderr is not None
        while listening is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            if json.loads(line)["msg"].startswith("listening:"):
                listening = json.loads(line)["msg"]
    finally:
        process.terminate()
        process.wait(15)
    # What it said after, up to its last line: read through the same buffered reader
    # (communicate() with a timeout reads the descriptor and skips what it buffered).
    assert process.stderr is not None
    lines += process.stderr.read().splitlines()
    assert listening is not None, f"no listening line: {lines}"
    return listening, lines


def test_a_dev_server_listens_on_loopback_and_says_how_to_open_it(tmp_path: Path) -> None:
    listening, lines = _listening_line(tmp_path)
    assert "http://127.0.0.1:" in listening and "ws://127.0.0.1:" in listening
    assert any("RATEWIRE_SERVER__HOST=0.0.0.0" in line for line in lines), lines


def test_server_host_opens_a_dev_server_up(tmp_path: Path) -> None:
    listening, _ = _listening_line(tmp_path, RATEWIRE_SERVER__HOST="0.0.0.0")
    assert "http://0.0.0.0:" in listening
