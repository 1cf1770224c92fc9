"""The ``ratewire`` command line (PROTOCOL.md section 6)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ratewire.config import ConfigError, Settings, load_settings

_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="config.yml (default: ./config.yml if present)",
)
_auth_option = click.option(
    "--auth",
    "auth_path",
    type=click.Path(path_type=Path),
    default=None,
    help="auth.yml (default: ./auth.yml if present)",
)


def _settings(config_path: Path | None, auth_path: Path | None) -> Settings:
    try:
        return load_settings(config_path, auth_path)
    except ConfigError as exc:
        click.echo(f"ratewire: config error: {exc}", err=True)
        sys.exit(2)


@click.group()
@click.version_option(package_name="ratewire")
def main() -> None:
    """ratewire: ratings over REST, every change streamed over WebSockets."""


@main.command()
@_config_option
@_auth_option
@click.option("--log-level", default="INFO", show_default=True)
def serve(config_path: Path | None, auth_path: Path | None, log_level: str) -> None:
    """Run the server (REST on server.port, WebSockets on modules.websocket.port and /ws)."""
    import uvloop

    from ratewire.logs import configure_logging
    from ratewire.runtime import Runtime
    from ratewire.storage import StorageError
    from ratewire.storage.factory import UnsupportedBackend

    settings = _settings(config_path, auth_path)
    configure_logging(log_level.upper())

    async def run() -> None:
        await Runtime(settings).serve()

    try:
        uvloop.run(run())
    except (StorageError, UnsupportedBackend) as exc:
        click.echo(f"ratewire: cannot start: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"ratewire: cannot start: {exc}", err=True)
        sys.exit(1)


@main.command()
@click.argument("sub")
@click.option("--scope", default=None, help='space-separated scopes, e.g. "ratings:admin"')
@click.option(
    "--ttl", type=click.IntRange(min=1), default=None, help="seconds (default: jwt.expiry_seconds)"
)
@_config_option
@_auth_option
def token(
    sub: str, scope: str | None, ttl: int | None, config_path: Path | None, auth_path: Path | None
) -> None:
    """Print a JWT for SUB signed with the configured key."""
    from ratewire.security.tokens import TokenService

    click.echo(
        TokenService(_settings(config_path, auth_path).jwt).issue(sub, scope=scope, ttl_seconds=ttl)
    )
