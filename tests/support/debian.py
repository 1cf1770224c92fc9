"""Tools from Debian's packages that some tests drive (haproxy, say), installed on first use
so that a fresh machine passes too."""

from __future__ import annotations

import os
import shutil
import subprocess


def ensure_tool(binary: str, package: str) -> str:
    """The path of ``binary``, installing ``package`` with apt-get when it is missing.

    Raises RuntimeError naming the package when it cannot be installed (not root, no
    registry)."""
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError(f"{binary} is missing: apt-get install {package} (as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    if subprocess.run(install, capture_output=True, env=env, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600)
        result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"apt-get install {package} failed: {result.stderr[-500:]}")
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if not found:
        raise RuntimeError(f"{package} installed but {binary} is not on the PATH")
    return found
