"""``ratewire audit verify | anchor | export``: the audit log, read from the database."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ratewire.cli.common import (
    auth_option,
    config_option,
    run_on_store,
    settings_from,
)
from ratewire.config import Settings


@click.group()
def audit() -> None:
    """The audit log: verify its chain, record an anchor, export it (reads the database)."""


def _run_with_store(settings: Settings, work: Any) -> Any:
    return run_on_store(settings, work, "audit")


@audit.command("verify")
@click.option(
    "--anchor",
    default=None,
    metavar="SEQ:MAC",
    help="an anchor from `ratewire audit anchor`: the entry must still be there, unchanged",
)
@config_option
@auth_option
def audit_verify(anchor: str | None, config_path: Path | None, auth_path: Path | None) -> None:
    """Walk the chain; exit 0 if intact, 1 naming the first entry that is not."""
    from ratewire.audit import AuditChain
    from ratewire.audit.verify import verify_chain

    settings = settings_from(config_path, auth_path)
    pinned: tuple[int, str] | None = None
    if anchor is not None:
        seq, _, mac = anchor.partition(":")
        if not seq.isdigit() or len(mac) != 64:
            click.echo(f"ratewire audit verify: --anchor {anchor!r} is not SEQ:MAC", err=True)
            sys.exit(2)
        pinned = (int(seq), mac)

    def progress(count: int) -> None:
        if sys.stderr.isatty():
            click.echo(f"\r{count} entries checked", err=True, nl=False)

    verdict = _run_with_store(
        settings,
        lambda store: verify_chain(
            store, AuditChain(settings.audit.key), anchor=pinned, progress=progress
        ),
    )
    if sys.stderr.isatty():
        click.echo("", err=True)
    if verdict.problem is not None:
        click.echo(f"audit chain broken: {verdict.problem}", err=True)
        sys.exit(1)
    click.echo(
        f"audit chain intact: {verdict.checked} entries (#{verdict.first_seq}..#{verdict.last_seq})"
    )


@audit.command("anchor")
@config_option
@auth_option
def audit_anchor(config_path: Path | None, auth_path: Path | None) -> None:
    """Print the chain's head as SEQ:MAC; keep it outside the database, and pass it to
    `verify --anchor` later to detect a rewound log."""
    settings = settings_from(config_path, auth_path)
    head = _run_with_store(settings, lambda store: store.audit_head())
    click.echo(f"{head.seq}:{head.mac}")


@audit.command("export")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]),
    default=None,
    help="from this time on (UTC unless a zone is given)",
)
@click.option("--format", "output_format", type=click.Choice(["jsonl"]), default="jsonl")
@config_option
@auth_option
def audit_export(
    since: Any, output_format: str, config_path: Path | None, auth_path: Path | None
) -> None:
    """Stream entries oldest first, one JSON object a line (the fields of GET /audit)."""
    from datetime import UTC

    import orjson

    from ratewire.audit import AuditQuery
    from ratewire.domain import epoch_ms

    settings = settings_from(config_path, auth_path)
    since_ms = None
    if since is not None:
        moment = since if since.tzinfo else since.replace(tzinfo=UTC)
        since_ms = epoch_ms(moment)

    async def export(store: Any) -> int:
        written, after = 0, 0
        out = sys.stdout.buffer
        while True:
            page = await store.audit_entries(
                AuditQuery(since_ms=since_ms, after_seq=after, limit=1000, oldest_first=True)
            )
            if not page:
                return written
            for entry in page:
                out.write(orjson.dumps(entry.to_wire()) + b"\n")
            out.flush()
            written += len(page)
            after = page[-1].seq
            click.echo(f"{written} entries exported", err=True)

    count = _run_with_store(settings, export)
    if count == 0:
        click.echo("no entries", err=True)
