"""Tools from Debian's packages that some tests drive (haproxy, say), installed on first use
so that a fresh machine passes too."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

#: One install at a time across the suite's workers: two apt-gets at once fail on dpkg's lock
#: (seen on a fresh machine: chaos and HAProxy tests in two workers both installing haproxy).
_LOCK = Path("/tmp/ratewire-tests-apt.lock")


def ensure_tool(binary: str, package: str) -> str:
    """The path of ``binary``, installing ``package`` with apt-get when it is missing.

    Raises RuntimeError naming the package when it cannot be installed (not root, no
    registry)."""
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError(f"{binary} is missing: apt-get install {package} (as root)")
    with _LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
        if found:  # another worker installed it while this one waited
            return found
        _install(package)
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if not found:
        raise RuntimeError(f"{package} installed but {binary} is not on the PATH")
    return found


def _install(package: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Wait for dpkg's lock rather than fail on it (an unattended upgrade may hold it).
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
    install = [*apt, "install", "-y", "-q", "--no-install-recommends", package]
    if subprocess.run(install, capture_output=True, env=env, timeout=600).returncode != 0:
        subprocess.run([*apt, "update", "-q"], capture_output=True, env=env, timeout=600)
        result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"apt-get install {package} failed: {result.stderr[-500:]}")
