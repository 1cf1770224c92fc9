"""The ``ratewire`` command line (docs/protocol.md): one module per command group."""

from __future__ import annotations

import click

from ratewire import __version__
from ratewire.cli import (
    audit,
    backup,
    bench,
    db,
    mcp,
    serve,
    tail,
    tokens,
    transfer,
    webhooks,
)


@click.group()
@click.version_option(version=__version__, prog_name="ratewire")
def main() -> None:
    """ratewire: ratings over REST, every change streamed over WebSockets."""


for command in (
    serve.serve,
    serve.reload,
    tokens.token,
    tail.tail,
    tokens.revoke,
    mcp.mcp,
    audit.audit,
    backup.backup,
    db.db,
    transfer.copy,
    transfer.export,
    transfer.import_,
    bench.bench,
    webhooks.webhook,
):
    main.add_command(command)

__all__ = ["main"]
