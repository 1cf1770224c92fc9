"""``ratewire token`` and ``ratewire revoke``: mint a JWT with the configured key; revoke
tokens through the admin API."""

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
@click.argument("sub")
@click.option("--scope", default=None, help='space-separated scopes, e.g. "ratings:admin"')
@click.option(
    "--ttl", type=click.IntRange(min=1), default=None, help="seconds (default: jwt.expiry_seconds)"
)
@config_option
@auth_option
def token(
    sub: str, scope: str | None, ttl: int | None, config_path: Path | None, auth_path: Path | None
) -> None:
    """Print a JWT for SUB signed with the configured key (or the --dev secret)."""
    from ratewire.domain import validate_identifier

    service = token_service(settings_from(config_path, auth_path))
    try:
        # The sub is the user id the token writes and follows as: it obeys the same rule.
        validate_identifier(sub, "SUB (the user id)")
        click.echo(service.issue(sub, scope=scope, ttl_seconds=ttl))
    except ValueError as exc:
        click.echo(f"ratewire token: {exc}", err=True)
        sys.exit(2)


@click.command()
@click.argument("token_id", metavar="[JTI]", required=False)
@click.option("--jti", default=None, help="revoke this one token (its jti claim)")
@click.option("--sub", default=None, help="revoke every token of this user issued until now")
@click.option("--reason", default=None, help="kept with the entry")
@click.option("--list", "list_only", is_flag=True, help="print the revocations in force instead")
@click.option("--url", default=None, help="REST base URL (default: the configured server port)")
@click.option("--token", "token_value", default=None, help="admin JWT (default: one minted here)")
@config_option
@auth_option
def revoke(
    token_id: str | None,
    jti: str | None,
    sub: str | None,
    reason: str | None,
    list_only: bool,
    url: str | None,
    token_value: str | None,
    config_path: Path | None,
    auth_path: Path | None,
) -> None:
    """Revoke a token (JTI or --jti) or every current token of a user (--sub), on every
    instance; their open WebSocket connections close with 4001 "Token revoked"."""
    import orjson

    from ratewire.cli.admin_client import AdminRequestFailed, admin_request
    from ratewire.security.tokens import SCOPE_ADMIN

    if token_id is not None:
        if jti is not None and jti != token_id:
            click.echo("ratewire revoke: give the jti once (JTI or --jti)", err=True)
            sys.exit(2)
        jti = token_id
    if not list_only and (jti is None) == (sub is None):
        click.echo("ratewire revoke: give exactly one of --jti or --sub (or --list)", err=True)
        sys.exit(2)
    settings = settings_from(config_path, auth_path)
    if url is None:
        scheme = "https" if settings.tls.cert else "http"
        url = f"{scheme}://127.0.0.1:{settings.server.port}"
    token_value = token_value or token_service(settings).issue("ratewire-cli", scope=SCOPE_ADMIN)
    try:
        if list_only:
            answer = admin_request(url, token_value, "GET", "/admin/revocations")
            for entry in answer["items"]:
                click.echo(orjson.dumps(entry).decode())
            if not answer["items"]:  # on stderr: a script reading stdout sees no line
                click.echo("ratewire revoke --list: none in force", err=True)
            return
        body = {"jti": jti} if jti is not None else {"sub": sub}
        if reason:
            body["reason"] = reason
        answer = admin_request(url, token_value, "POST", "/admin/revocations", body)
    except AdminRequestFailed as exc:
        click.echo(f"ratewire revoke: {exc}", err=True)
        sys.exit(1)
    click.echo(orjson.dumps(answer).decode())
