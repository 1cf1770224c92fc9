"""``ratewire copy``, ``export`` and ``import``: moving a database between backends, directly
or through a portable file (docs/operations.md, Moving to PostgreSQL)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ratewire.cli.common import auth_option, config_option, settings_from


@contextmanager
def _progress(total: int, what: str) -> Iterator[Callable[[str, int], None]]:
    """A bar over every row, with the table being read and rows/s; yields ``advance``."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    started = time.monotonic()
    columns = (
        TextColumn(f"{what} {{task.fields[table]:<18}}"),
        BarColumn(),
        TextColumn("{task.completed:>10,}/{task.total:,} rows"),
        TextColumn("{task.fields[rate]:>9} rows/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=total or 1, table="", rate="")

        def advance(table: str, rows: int) -> None:
            done = bar.tasks[0].completed + rows
            rate = done / max(time.monotonic() - started, 1e-6)
            bar.update(task, completed=done, table=table, rate=f"{rate:,.0f}")

        yield advance


def _run(work: Callable[[], Coroutine[Any, Any, str]], command: str) -> None:
    from ratewire.transfer.tables import TransferError

    try:
        said: str = asyncio.run(work())
    except TransferError as exc:
        click.echo(f"ratewire {command}: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo(f"ratewire {command}: interrupted; nothing was kept", err=True)
        sys.exit(130)
    click.echo(said, err=True)


def _configured_url(config_path: Path | None, auth_path: Path | None) -> str:
    return settings_from(config_path, auth_path).storage.resolved_url()


def _rate(rows: int, counts: Any, seconds: float) -> str:
    ratings = counts.rows.get("ratings", 0)
    return (
        f"in {seconds:.1f} s ({ratings / max(seconds, 1e-6):,.0f} ratings/s, "
        f"{rows / max(seconds, 1e-6):,.0f} rows/s)"
    )


async def _load(source: Any, target: Any, target_url: str, what: str) -> tuple[Any, float]:
    """Every row of ``source`` into the empty ``target``, with a bar; then the target's counts
    read back. (the source's counts, seconds)."""
    from ratewire.transfer.run import counts_match, transfer

    started = time.monotonic()
    try:
        counts = await source.open()  # an export file is checked whole here
        await target.open()  # refuses a target that holds data, before writing anything
        with _progress(counts.total, what) as advance:
            await transfer(source, target, advance)
    finally:
        await source.close()
        await target.close()
    seconds = time.monotonic() - started
    await counts_match(counts, target_url)
    return counts, seconds


@click.command()
@click.option("--from", "source_url", default=None, help="storage URL (default: the configured)")
@click.option("--to", "target_url", required=True, help="storage URL of an empty database")
@config_option
@auth_option
def copy(
    source_url: str | None, target_url: str, config_path: Path | None, auth_path: Path | None
) -> None:
    """Copy every rating, event (with its offsets and the epoch), audit entry, revocation and
    webhook (with its cursor) into an empty database of any backend."""
    from ratewire.transfer.run import open_source, open_target

    source_url = source_url or _configured_url(config_path, auth_path)

    async def work() -> str:
        from ratewire.transfer.tables import TransferError

        if source_url.rstrip("/") == target_url.rstrip("/"):
            raise TransferError("--from and --to name the same database")
        source, target = open_source(source_url), open_target(target_url)
        counts, seconds = await _load(source, target, target_url, "copy")
        return (
            f"copied {counts.describe()} from {source.description} to {target.description} "
            f"{_rate(counts.total, counts, seconds)}; source read as {source.consistency}"
        )

    _run(work, "copy")


@click.command("export")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="a new file")
@click.option("--from", "source_url", default=None, help="storage URL (default: the configured)")
@config_option
@auth_option
def export(
    out: Path, source_url: str | None, config_path: Path | None, auth_path: Path | None
) -> None:
    """Write the whole database to a portable JSON Lines file (header, rows, checksum)."""
    from ratewire.transfer.jsonl import write_export
    from ratewire.transfer.run import open_source

    source_url = source_url or _configured_url(config_path, auth_path)

    async def work() -> str:
        source = open_source(source_url)
        started = time.monotonic()
        try:
            counts = await source.open()
            with _progress(counts.total, "export") as advance:
                size = await write_export(source, out, counts, advance)
        finally:
            await source.close()
        return (
            f"exported {counts.describe()} from {source.description} to {out} "
            f"({size / 2**20:.1f} MiB) {_rate(counts.total, counts, time.monotonic() - started)}"
        )

    _run(work, "export")


@click.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--to", "target_url", default=None, help="storage URL (default: the configured)")
@config_option
@auth_option
def import_(
    file: Path, target_url: str | None, config_path: Path | None, auth_path: Path | None
) -> None:
    """Load an export into an empty database: all of it, or (on any fault in the file)
    nothing."""
    from ratewire.transfer.jsonl import ExportFile
    from ratewire.transfer.run import open_target

    target_url = target_url or _configured_url(config_path, auth_path)

    async def work() -> str:
        target = open_target(target_url)
        counts, seconds = await _load(ExportFile(file), target, target_url, "import")
        return (
            f"imported {counts.describe()} from {file} into {target.description} "
            f"{_rate(counts.total, counts, seconds)}"
        )

    _run(work, "import")
