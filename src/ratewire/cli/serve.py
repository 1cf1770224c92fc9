"""``ratewire serve``: run the server, alone or as --workers processes."""

from __future__ import annotations

import atexit
import os
import signal
import sys
from functools import partial
from pathlib import Path

import click

from ratewire.cli.common import (
    auth_option,
    config_option,
    exit_config_error,
    settings_from,
    with_dev_secret,
)
from ratewire.config import ConfigError, Settings, load_settings
from ratewire.logs import redact

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@click.command()
@config_option
@auth_option
@click.option(
    "--host",
    default=None,
    help="address both ports listen on (default: server.host, else 0.0.0.0; --dev: 127.0.0.1)",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="REST, /docs, /dashboard and /ws (default: server.port, else 8080)",
)
@click.option(
    "--ws-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="the WebSocket module port (default: modules.websocket.port, else 8081)",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
)
@click.option(
    "--role",
    type=click.Choice(["all", "api", "stream"]),
    default=None,
    help="all: REST + relay + WebSockets; api: REST + relay; stream: WebSockets only "
    "(default: server.role, else all)",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=256),
    default=None,
    help="processes on this host sharing both ports (default: server.workers, else 1)",
)
@click.option(
    "--dev",
    is_flag=True,
    help="local trial: without a configured key, sign with a random secret kept in "
    "./.ratewire-dev-secret; accept secrets shorter than 32 bytes (with a warning)",
)
@click.option(
    "--no-migrate",
    is_flag=True,
    help="refuse to start on an older schema instead of upgrading it (storage.migrate: false)",
)
@click.option(
    "--pid-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write this process's id here (what `ratewire reload --pid-file` signals)",
)
@click.option("--reuse-port", is_flag=True, hidden=True)
def serve(
    config_path: Path | None,
    auth_path: Path | None,
    host: str | None,
    port: int | None,
    ws_port: int | None,
    log_level: str,
    role: str | None,
    workers: int | None,
    dev: bool,
    no_migrate: bool,
    pid_file: Path | None,
    reuse_port: bool,
) -> None:
    """Run the server (REST on server.port, WebSockets on modules.websocket.port and /ws).

    --host, --port and --ws-port override server.host, server.port and
    modules.websocket.port (as RATEWIRE_SERVER__PORT etc. do). SIGHUP (`ratewire reload`)
    re-reads the TLS certificate and key and the JWT key set, dropping no connection."""
    import logging

    # Until the runtime handles it: a SIGHUP while starting must not end the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    import uvloop

    from ratewire.broker.base import BrokerUnavailable
    from ratewire.logs import configure_logging
    from ratewire.runtime import Runtime
    from ratewire.security.keys import load_key_set
    from ratewire.storage import StorageError
    from ratewire.storage.factory import UnsupportedBackend

    settings = settings_from(config_path, auth_path)
    dev_note = None
    if dev:
        settings, dev_note = with_dev_secret(settings, create=True)
    settings = settings.overridden(
        role=role,
        workers=workers,
        host=host,
        port=port,
        ws_port=ws_port,
        migrate=False if no_migrate else None,
    )
    configure_logging(log_level.upper(), settings.log.format)
    notes: list[str] = []  # said once listening (a start that fails says one line only)
    if dev and "host" not in settings.server.model_fields_set:
        # A trial server stays on this machine unless told otherwise.
        settings = settings.on_loopback_unless_host_set()
        if not reuse_port:
            notes.append(
                "dev mode: listening on 127.0.0.1 only; set server.host "
                "(RATEWIRE_SERVER__HOST=0.0.0.0) to open it to other machines"
            )

    def cannot_start(reason: object) -> None:
        click.echo(f"ratewire: cannot start: {reason}", err=True)
        sys.exit(1)

    if (problem := settings.deployment_problem()) is not None:
        cannot_start(problem)
    try:
        load_key_set(settings.jwt, dev=dev)  # a weak or missing key stops here, in one line
    except ConfigError as exc:
        exit_config_error(exc)
    if dev_note is not None and not reuse_port:
        logging.getLogger("ratewire").warning(dev_note)
    _hold_pid_file(pid_file)
    if settings.server.workers > 1 and not reuse_port:
        from ratewire.runtime.workers import prepare_storage, supervise

        forwarded = _worker_args(
            config_path, auth_path, log_level, settings.server.role, host, port, ws_port
        )
        forwarded += [*(("--dev",) if dev else ()), *(("--no-migrate",) if no_migrate else ())]
        try:
            uvloop.run(prepare_storage(settings))
        except (StorageError, OSError) as exc:
            cannot_start(exc)
        sys.exit(uvloop.run(supervise(settings.server.workers, forwarded)))

    async def run() -> None:
        reread = partial(_reread, config_path, auth_path, dev=dev)
        runtime = Runtime(settings, reuse_port=reuse_port, dev=dev, notes=notes, reread=reread)
        if sys.stderr.isatty() and not reuse_port:
            # A person is watching: say where to go next (log lines go to the same stream).
            runtime.banner = lambda text: click.echo(f"\n{text}\n", err=True)
        await runtime.serve()

    try:
        uvloop.run(run())
    except (StorageError, UnsupportedBackend, OSError) as exc:
        cannot_start(exc)
    except BrokerUnavailable as exc:
        # The library's own words (the cause): the URL already says which broker it is.
        reason = exc.__cause__ or exc
        cannot_start(f"broker unreachable at {redact(settings.broker.resolved_url())}: {reason}")


def _hold_pid_file(pid_file: Path | None) -> None:
    """Write this process's id to ``pid_file`` (what ``ratewire reload`` reads), removed at exit."""
    if pid_file is not None:
        pid_file.write_text(f"{os.getpid()}\n")
        atexit.register(pid_file.unlink, missing_ok=True)


def _reread(config_path: Path | None, auth_path: Path | None, *, dev: bool) -> Settings:
    """The settings as their files (and the environment) say now: what SIGHUP reloads."""
    fresh = load_settings(config_path, auth_path)
    return with_dev_secret(fresh, create=False)[0] if dev else fresh


def _worker_args(
    config_path: Path | None,
    auth_path: Path | None,
    log_level: str,
    role: str,
    host: str | None,
    port: int | None,
    ws_port: int | None,
) -> list[str]:
    """The ``serve`` arguments each worker of ``--workers`` is started with."""
    return [
        *(("--config", str(config_path)) if config_path else ()),
        *(("--auth", str(auth_path)) if auth_path else ()),
        *("--log-level", log_level, "--role", role),
        *(("--host", host) if host is not None else ()),
        *(("--port", str(port)) if port is not None else ()),
        *(("--ws-port", str(ws_port)) if ws_port is not None else ()),
    ]


@click.command()
@click.option(
    "--pid-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="the file `ratewire serve --pid-file` wrote",
)
@click.option("--pid", type=click.IntRange(min=1), default=None, help="the server's process id")
def reload(pid_file: Path | None, pid: int | None) -> None:
    """Make a running server re-read its TLS certificate and key and its JWT key set (sends it
    SIGHUP; with --workers, the supervisor passes it on). No connection is dropped; a bad new
    file is refused, logged by the server, and the old one stays in use."""
    if (pid is None) == (pid_file is None):
        raise click.UsageError("give exactly one of --pid-file and --pid")
    if pid_file is not None:
        try:
            pid = int(pid_file.read_text().strip())
        except ValueError:
            raise click.UsageError(f"{pid_file} does not hold a process id") from None
    assert pid is not None
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        click.echo(f"ratewire: no process {pid} (is the server running?)", err=True)
        sys.exit(1)
    except PermissionError:
        click.echo(f"ratewire: not allowed to signal process {pid} (run as its user)", err=True)
        sys.exit(1)
    click.echo(f"asked process {pid} to reload; its log says what it re-read")
