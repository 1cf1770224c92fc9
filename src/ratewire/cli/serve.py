"""``ratewire serve``: run the server, alone or as --workers processes."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ratewire.cli.common import (
    auth_option,
    config_option,
    settings_from,
    with_dev_secret,
)
from ratewire.config import ConfigError
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
    reuse_port: bool,
) -> None:
    """Run the server (REST on server.port, WebSockets on modules.websocket.port and /ws).

    --host, --port and --ws-port override server.host, server.port and
    modules.websocket.port (as RATEWIRE_SERVER__PORT etc. do)."""
    import logging

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
        click.echo(f"ratewire: config error: {exc}", err=True)
        sys.exit(2)
    if dev_note is not None and not reuse_port:
        logging.getLogger("ratewire").warning(dev_note)
    if settings.server.workers > 1 and not reuse_port:
        from ratewire.runtime.workers import prepare_storage, supervise

        forwarded = [
            *(("--config", str(config_path)) if config_path else ()),
            *(("--auth", str(auth_path)) if auth_path else ()),
            *("--log-level", log_level, "--role", settings.server.role),
            *(("--host", host) if host is not None else ()),
            *(("--port", str(port)) if port is not None else ()),
            *(("--ws-port", str(ws_port)) if ws_port is not None else ()),
            *(("--dev",) if dev else ()),
            *(("--no-migrate",) if no_migrate else ()),
        ]
        try:
            uvloop.run(prepare_storage(settings))
        except (StorageError, OSError) as exc:
            cannot_start(exc)
        sys.exit(uvloop.run(supervise(settings.server.workers, forwarded)))

    async def run() -> None:
        runtime = Runtime(settings, reuse_port=reuse_port, dev=dev, notes=notes)
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
