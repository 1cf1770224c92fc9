"""``python -m ratewire.healthcheck``: exit 0 when the ratewire on this host is ready (its
``/readyz`` answers 200), 1 otherwise, with one line saying why.

The container image's ``HEALTHCHECK``. It reads the settings ``ratewire serve`` reads (the
``--config``/``--auth`` files given to the running ``serve``, else ``./config.yml`` and
``./auth.yml``, then ``RATEWIRE_*`` variables), so it follows ``server.port``, ``server.host``
and TLS (``tls.cert``: https, without verifying the certificate, whose name is not the
loopback address probed here)."""

from __future__ import annotations

import contextlib
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

from ratewire.config import ConfigError, load_settings

#: /readyz holds each of its probes at most 2 s (api/ops.py).
TIMEOUT_SECONDS = 4.0

_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def _serve_files(proc: Path = Path("/proc")) -> tuple[Path | None, Path | None]:
    """The ``--config`` and ``--auth`` of the running ``ratewire serve`` (PID 1 in a container,
    else the first such process found), relative paths taken from its working directory."""
    candidates = [proc / "1"]
    with contextlib.suppress(OSError):
        candidates += sorted(
            (p for p in proc.iterdir() if p.name.isdigit() and p.name != "1"),
            key=lambda p: int(p.name),
        )
    for pid in candidates:
        try:
            argv = (pid / "cmdline").read_bytes().decode(errors="replace").split("\0")
            cwd = (pid / "cwd").resolve()
        except OSError:
            continue
        if "serve" not in argv or not any(arg.endswith("ratewire") for arg in argv):
            continue
        found: dict[str, Path] = {}
        for index, arg in enumerate(argv):
            for option in ("--config", "--auth"):
                if arg == option and index + 1 < len(argv):
                    found[option] = cwd / argv[index + 1]
                elif arg.startswith(option + "="):
                    found[option] = cwd / arg.split("=", 1)[1]
        return found.get("--config"), found.get("--auth")
    return None, None


def readiness_url() -> str:
    """Where this host's ratewire answers ``/readyz``, by its settings."""
    settings = load_settings(*_serve_files())
    host = settings.server.host
    if host in _WILDCARDS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    scheme = "https" if settings.tls.cert else "http"
    return f"{scheme}://{host}:{settings.server.port}/readyz"


def main() -> int:
    try:
        url = readiness_url()
    except ConfigError as exc:
        print(f"unhealthy: config error: {exc}", file=sys.stderr)
        return 1
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS, context=context) as answer:
            status = answer.status
            body = answer.read(2000).decode(errors="replace")
    except urllib.error.HTTPError as exc:  # 503: not ready, with the checks that failed
        status, body = exc.code, exc.read(2000).decode(errors="replace")
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url}: {status} {body}", file=sys.stderr)
        return 1
    print(f"healthy: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
