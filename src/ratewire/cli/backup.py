"""``ratewire backup FILE``: an online, consistent copy of the embedded SQLite database."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from ratewire.cli.common import auth_option, config_option, settings_from


@click.command()
@click.argument("target", type=click.Path(path_type=Path))
@config_option
@auth_option
def backup(target: Path, config_path: Path | None, auth_path: Path | None) -> None:
    """Copy the SQLite database to TARGET while the server runs (a new file; one committed
    state, checked). PostgreSQL and MariaDB: use pg_dump / mariadb-dump (docs/operations.md)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ratewire.storage.sql.backup import BackupError, backup_sqlite, sqlite_path

    settings = settings_from(config_path, auth_path)
    backend = settings.storage.backend
    if backend != "sqlite":
        tool = {"postgresql": "pg_dump", "mysql": "mariadb-dump --single-transaction"}.get(
            backend, "the backend's own tools"
        )
        click.echo(
            f"ratewire backup: copies the embedded SQLite database; storage.backend is "
            f"{backend}: use {tool} (docs/operations.md, Backups)",
            err=True,
        )
        sys.exit(2)
    started = time.monotonic()
    columns = (TextColumn("backup"), BarColumn(), TextColumn("{task.completed}/{task.total} pages"))
    try:
        source = sqlite_path(settings.storage.resolved_url())
        with Progress(*columns, TimeElapsedColumn(), transient=True) as bar:
            task = bar.add_task("backup", total=None)
            pages = backup_sqlite(
                source, target, lambda done, total: bar.update(task, completed=done, total=total)
            )
    except BackupError as exc:
        click.echo(f"ratewire backup: {exc}", err=True)
        sys.exit(1)
    size = target.stat().st_size
    click.echo(
        f"backed up {source} to {target}: {pages} pages, {size / 2**20:.1f} MiB, "
        f"in {time.monotonic() - started:.1f} s",
        err=True,
    )
