"""``ratewire webhook add | list | rm | replay``: manage outbound webhooks through the admin
API of a running server (docs/protocol.md, Webhooks)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ratewire.cli.common import auth_option, config_option, settings_from, token_service

_url_option = click.option(
    "--url", default=None, help="REST base URL (default: the configured server port)"
)
_token_option = click.option(
    "--token", "token_value", default=None, help="admin JWT (default: one minted here)"
)


def _call(
    command: str,
    config_path: Path | None,
    auth_path: Path | None,
    url: str | None,
    token_value: str | None,
) -> Callable[..., Any]:
    """An admin request function for ``command``; exits with one line when it fails."""
    from ratewire.cli.admin_client import AdminRequestFailed, admin_request
    from ratewire.security.tokens import SCOPE_ADMIN

    settings = settings_from(config_path, auth_path)
    if url is None:
        scheme = "https" if settings.tls.cert else "http"
        url = f"{scheme}://127.0.0.1:{settings.server.port}"
    token = token_value or token_service(settings).issue("ratewire-cli", scope=SCOPE_ADMIN)
    base = url

    def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            return admin_request(base, token, method, path, body)
        except AdminRequestFailed as exc:
            click.echo(f"ratewire webhook {command}: {exc}", err=True)
            sys.exit(1)

    return call


def _line(webhook: dict[str, Any]) -> str:
    topics = ",".join(webhook["topics"])
    state = f"{webhook['status']:<8} cursor={webhook['cursor']}"
    return f"{webhook['id']}  {state}  {topics}  {webhook['url']}"


@click.group()
def webhook() -> None:
    """Outbound webhooks: every event of their topics POSTed, signed, in order."""


@webhook.command()
@click.argument("target_url", metavar="URL")
@click.option("--topic", "topics", multiple=True, required=True, help="a topic (repeatable)")
@click.option("--description", default="", help="kept with the webhook")
@click.option(
    "--filter",
    "expression",
    default=None,
    metavar="EXPR",
    help='only the events this CEL expression passes, e.g. "data.score <= 2"',
)
@_url_option
@_token_option
@config_option
@auth_option
def add(
    target_url: str,
    topics: tuple[str, ...],
    description: str,
    expression: str | None,
    url: str | None,
    token_value: str | None,
    config_path: Path | None,
    auth_path: Path | None,
) -> None:
    """Register URL for the events of --topic; prints its id and signing secret (once)."""
    call = _call("add", config_path, auth_path, url, token_value)
    body: dict[str, object] = {
        "url": target_url,
        "topics": list(topics),
        "description": description,
    }
    if expression is not None:
        body["filter"] = expression
    created = call("POST", "/admin/webhooks", body)
    click.echo(f"{created['id']}  secret: {created['secret']}  (shown once: keep it)")


@webhook.command(name="list")
@_url_option
@_token_option
@config_option
@auth_option
def list_webhooks(
    url: str | None, token_value: str | None, config_path: Path | None, auth_path: Path | None
) -> None:
    """Every webhook: id, status, cursor, topics and URL."""
    call = _call("list", config_path, auth_path, url, token_value)
    items = call("GET", "/admin/webhooks")["items"]
    for item in items:
        click.echo(_line(item))
    if not items:  # on stderr: a script reading stdout sees no line
        click.echo("ratewire webhook list: none registered", err=True)


@webhook.command()
@click.argument("webhook_id")
@_url_option
@_token_option
@config_option
@auth_option
def rm(
    webhook_id: str,
    url: str | None,
    token_value: str | None,
    config_path: Path | None,
    auth_path: Path | None,
) -> None:
    """Delete a webhook."""
    call = _call("rm", config_path, auth_path, url, token_value)
    call("DELETE", f"/admin/webhooks/{webhook_id}")
    click.echo(f"deleted {webhook_id}")


@webhook.command()
@click.argument("webhook_id")
@click.option("--since", type=click.IntRange(min=0), required=True, help="rating.global offset")
@_url_option
@_token_option
@config_option
@auth_option
def replay(
    webhook_id: str,
    since: int,
    url: str | None,
    token_value: str | None,
    config_path: Path | None,
    auth_path: Path | None,
) -> None:
    """Deliver again every event after --since (and resume a failing webhook)."""
    call = _call("replay", config_path, auth_path, url, token_value)
    click.echo(_line(call("POST", f"/admin/webhooks/{webhook_id}/replay", {"since": since})))
