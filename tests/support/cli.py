"""Run the ``ratewire`` command line as a user would, in a clean environment."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.support.server import free_port


def run_ratewire(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``ratewire ARGS`` with only ``env`` (plus a PATH, free ports and a long secret) set."""
    environment = {
        "PATH": "/usr/bin:/bin",
        "RATEWIRE_JWT__SECRET": "s" * 40,
        "RATEWIRE_SERVER__PORT": str(free_port()),
        "RATEWIRE_MODULES__WEBSOCKET__PORT": str(free_port()),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "ratewire", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=environment,
    )
