"""``ratewire mcp``: the Model Context Protocol server for agents (stdio or streamable HTTP)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ratewire.cli.common import (
    auth_option,
    config_option,
    settings_from,
    token_service,
)


@click.command()
@click.option("--url", default=None, help="WebSocket URL (default: the configured module port)")
@click.option("--rest-url", default=None, help="REST base URL (default: the configured port)")
@click.option(
    "--token",
    "token_value",
    envvar="RATEWIRE_MCP_TOKEN",
    default=None,
    help="JWT the server acts with (env RATEWIRE_MCP_TOKEN; default: minted here, renewed)",
)
@click.option("--as", "subject", default="mcp-agent", help="user of the minted token")
@click.option(
    "--http",
    "http_port",
    type=click.IntRange(1, 65535),
    default=None,
    help="serve streamable HTTP on this port (path /mcp) instead of stdio; every request "
    "then needs its agent's own ratewire token (Authorization: Bearer)",
)
@click.option("--host", default="127.0.0.1", help="address for --http")
@config_option
@auth_option
def mcp(
    url: str | None,
    rest_url: str | None,
    token_value: str | None,
    subject: str,
    http_port: int | None,
    host: str,
    config_path: Path | None,
    auth_path: Path | None,
) -> None:
    """Serve the Model Context Protocol for AI agents: tools over the REST API and live
    game-summary resources (stdio by default)."""
    from ratewire.extras import MissingExtra, require

    try:
        require("mcp", "ratewire mcp")
    except MissingExtra as exc:
        click.echo(f"ratewire: cannot start: {exc}", err=True)
        sys.exit(1)
    from ratewire.mcp.server import run

    settings = settings_from(config_path, auth_path)
    tls = bool(settings.tls.cert)
    if url is None:
        url = f"{'wss' if tls else 'ws'}://127.0.0.1:{settings.modules.websocket.port}/"
    if rest_url is None:
        rest_url = f"{'https' if tls else 'http'}://127.0.0.1:{settings.server.port}"
    provider = None
    if token_value is None:
        issuer = token_service(settings)

        def provider() -> str:
            return str(issuer.issue(subject))

    if http_port is not None:
        from ratewire.mcp.auth import binding_problem

        problem = binding_problem(host, settings.mcp, settings.tls)
        if problem is not None:
            click.echo(f"ratewire: cannot start: {problem}", err=True)
            sys.exit(1)
    run(
        url,
        token_value,
        provider,
        rest_url=rest_url,
        http_port=http_port,
        host=host,
        mcp_settings=settings.mcp,
        tls=settings.tls,
    )
