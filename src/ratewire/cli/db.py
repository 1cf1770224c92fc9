"""``ratewire db upgrade | current``: the SQL schema's migrations (docs/operations.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click

from ratewire.cli.common import auth_option, config_option, run_on_store, settings_from
from ratewire.config import Settings


@click.group()
def db() -> None:
    """The database schema: which revision it is at, and upgrading it."""


def _on_sql_store(settings: Settings, work: Callable[[Any], Awaitable[str]]) -> str:
    """``await work(store)`` on the configured SQL store (not started): what it says."""
    backend = settings.storage.backend
    if backend not in ("sqlite", "postgresql", "mysql"):
        return f"storage.backend is {backend}: it has no schema to migrate"
    return str(run_on_store(settings, work, "db", start=False))


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
