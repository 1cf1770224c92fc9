"""``ratewire db upgrade | current``: the SQL schema's migrations (docs/operations.md)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click

from ratewire.cli.common import auth_option, config_option, settings_from
from ratewire.config import Settings


@click.group()
def db() -> None:
    """The database schema: which revision it is at, and upgrading it."""


def _on_sql_store(settings: Settings, work: Callable[[Any], Awaitable[str]]) -> str:
    """``await work(store)`` on the configured SQL store (not started); what it says, or exit
    1 with one line."""
    from ratewire.storage import StorageError
    from ratewire.storage.factory import UnsupportedBackend, open_store

    backend = settings.storage.backend
    if backend not in ("sqlite", "postgresql", "mysql"):
        return f"storage.backend is {backend}: it has no schema to migrate"

    async def run() -> str:
        store = open_store(settings.storage)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (StorageError, UnsupportedBackend, OSError) as exc:
        click.echo(f"ratewire db: {exc}", err=True)
        sys.exit(1)


@db.command("upgrade")
@config_option
@auth_option
def db_upgrade(config_path: Path | None, auth_path: Path | None) -> None:
    """Create the schema, or apply every pending migration (once, under a lock shared with
    any instance starting meanwhile)."""

    async def work(store: Any) -> str:
        await store.start()  # with storage.migrate on: upgrades under the lock, then seeds
        change = store.schema_change
        return str(change.describe())

    settings = settings_from(config_path, auth_path)
    storage = settings.storage.model_copy(update={"migrate": True})
    click.echo(_on_sql_store(settings.model_copy(update={"storage": storage}), work))


@db.command("current")
@config_option
@auth_option
def db_current(config_path: Path | None, auth_path: Path | None) -> None:
    """Print the schema's revision and what is pending (changes nothing)."""

    async def work(store: Any) -> str:
        return str((await store.schema_state()).describe())

    click.echo(_on_sql_store(settings_from(config_path, auth_path), work))
