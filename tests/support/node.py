"""Node and npm for the tests that run JavaScript: the guide's client and ratewire-client."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def require_node() -> tuple[str, str]:
    """The paths of ``node`` and ``npm``: with CI=true a machine without them fails the test,
    elsewhere the test skips saying what is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        message = "node and npm are needed for the JavaScript tests"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return node, npm


def npm_ci(directory: Path, installed: str) -> None:
    """``npm ci`` in ``directory`` (dependencies from the npm registry) unless
    ``node_modules/<installed>`` is there already."""
    _, npm = require_node()
    if (directory / "node_modules" / installed).exists():
        return
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(
            f"npm ci in {directory} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
