"""The export file: JSON Lines, versioned, checksummed, read and written in constant memory.

Line 1 is the header: ``{"format": "ratewire-export", "version": 1, "tables": {name:
{"columns": [...], "rows": N}}, ...}``. Then one line per row, grouped by table in load
order: ``{"t": "ratings", "r": [values in column order]}``. The last line closes the file:
``{"end": true, "rows": TOTAL, "sha256": HEX}``, the SHA-256 of every byte before it.

An import reads the whole file once to check it (every line, the counts, the checksum)
before it writes anything, so a truncated, damaged or foreign file is refused with one line
naming the line number and what is wrong; then it reads it again to load it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import Table
from sqlalchemy.types import Integer, String

from ratewire import __version__
from ratewire.transfer.tables import (
    BATCH_ROWS,
    BY_NAME,
    TABLES,
    Counts,
    Row,
    Source,
    TransferError,
    columns,
)

FORMAT = "ratewire-export"
FORMAT_VERSION = 1
_ORDER = {table.name: index for index, table in enumerate(TABLES)}


async def write_export(
    source: Source, out: Path, counts: Counts, advance: Any = lambda table, n: None
) -> int:
    """Write every row of the opened ``source`` to ``out`` (a new file; written under a
    temporary name and renamed when complete). Returns the bytes written. The file is
    written from a worker thread, a batch at a time."""
    if await asyncio.to_thread(out.exists):
        raise TransferError(f"{out}: exists already; an export never overwrites a file")
    partial = out.with_name(f".{out.name}.partial")
    digest = hashlib.sha256()
    file = await asyncio.to_thread(partial.open, "wb")
    try:

        def write(chunk: bytes) -> None:
            digest.update(chunk)
            file.write(chunk)

        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "ratewire": __version__,
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": source.description,
            "tables": {
                str(table.name): {"columns": columns(table), "rows": counts.rows[table.name]}
                for table in TABLES
            },
        }
        write(orjson.dumps(header) + b"\n")
        for table in TABLES:
            prefix = b'{"t":"' + table.name.encode() + b'","r":'
            async for rows in source.rows(table):
                chunk = b"".join(prefix + orjson.dumps(list(row)) + b"}\n" for row in rows)
                await asyncio.to_thread(write, chunk)
                advance(table.name, len(rows))
        end = {"end": True, "rows": counts.total, "sha256": digest.hexdigest()}
        await asyncio.to_thread(_finish, file, orjson.dumps(end) + b"\n", partial, out)
    except BaseException:
        file.close()
        partial.unlink(missing_ok=True)
        raise
    return (await asyncio.to_thread(out.stat)).st_size


def _finish(file: IO[bytes], end: bytes, partial: Path, out: Path) -> None:
    """The end line, on disk, then the file's real name: a half export never has it."""
    file.write(end)
    file.flush()
    os.fsync(file.fileno())
    file.close()
    partial.rename(out)


def _checker(table: Table) -> list[tuple[type, bool]]:
    """(the Python type of each column's values in the file, whether it may be null)."""
    kinds: list[tuple[type, bool]] = []
    for column in table.columns:
        if isinstance(column.type, Integer):
            kinds.append((int, bool(column.nullable)))
        elif isinstance(column.type, String):  # Text is a String
            kinds.append((str, bool(column.nullable)))
        else:  # pragma: no cover - a column type the format does not know yet
            raise AssertionError(f"{table.name}.{column.name}: {column.type!r}")
    return kinds


_CHECKS = {table.name: _checker(table) for table in TABLES}


class ExportFile:
    """An export file as a copy's :class:`~ratewire.transfer.tables.Source`."""

    consistency = "an export file, checked whole (lines, counts, checksum) before the load"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = str(path)
        self._file: IO[bytes] | None = None
        self._line = 0
        self._pending: tuple[str, Row] | None = None

    def _fail(self, line: int, what: str) -> TransferError:
        return TransferError(f"{self.path}: line {line}: {what}; nothing was imported")

    async def open(self) -> Counts:
        return await asyncio.to_thread(self._check_file)

    def _check_file(self) -> Counts:
        try:
            with self.path.open("rb") as file:
                return self._check(file)
        except OSError as exc:
            raise TransferError(f"{self.path}: {exc.strerror or exc}") from exc

    def _check(self, file: IO[bytes]) -> Counts:
        digest = hashlib.sha256()
        first = file.readline()
        expected = self._header(first)
        digest.update(first)
        seen = dict.fromkeys(expected, 0)
        number, table_index = 1, 0
        for raw in file:
            number += 1
            if not raw.endswith(b"\n"):
                raise self._fail(number, "cut short (the file is truncated)")
            record = self._parse(number, raw)
            if "end" in record:
                self._end(number, record, digest.hexdigest(), seen, expected, file)
                return Counts(seen)
            digest.update(raw)
            name = self._row(number, record)
            if _ORDER[name] < table_index:
                raise self._fail(number, f"a {name} row after the rows of a later table")
            table_index = _ORDER[name]
            seen[name] += 1
            if seen[name] > expected[name]:
                raise self._fail(number, f"more {name} rows than the header's {expected[name]}")
        raise self._fail(number, "the file ends without its end line (it is truncated)")

    def _parse(self, number: int, raw: bytes) -> dict[str, Any]:
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise self._fail(number, f"not JSON ({exc})") from None
        if not isinstance(record, dict):
            raise self._fail(number, "not a JSON object")
        return record

    def _header(self, raw: bytes) -> dict[str, int]:
        if not raw:
            raise self._fail(1, "the file is empty")
        header = self._parse(1, raw)
        if header.get("format") != FORMAT:
            raise self._fail(1, f'not a ratewire export (no "format": "{FORMAT}")')
        version = header.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise self._fail(
                1, f"format version {version!r}: this ratewire reads up to {FORMAT_VERSION}"
            )
        tables = header.get("tables")
        if not isinstance(tables, dict) or set(tables) != set(BY_NAME):
            raise self._fail(1, f"the header must list the tables {sorted(BY_NAME)}")
        expected = {}
        for table in TABLES:
            entry = tables[table.name]
            if not isinstance(entry, dict) or entry.get("columns") != columns(table):
                raise self._fail(1, f"{table.name}: columns must be {columns(table)}")
            rows = entry.get("rows")
            if not isinstance(rows, int) or rows < 0:
                raise self._fail(1, f"{table.name}: rows must be a count")
            expected[table.name] = rows
        return expected

    def _row(self, number: int, record: dict[str, Any]) -> str:
        """Check a row line; the name of its table."""
        name, row = record.get("t"), record.get("r")
        if name not in _CHECKS:
            raise self._fail(number, f"unknown table {name!r}")
        checks = _CHECKS[name]
        if not isinstance(row, list) or len(row) != len(checks):
            raise self._fail(number, f"a {name} row must be a list of {len(checks)} values")
        for index, (value, (kind, nullable)) in enumerate(zip(row, checks, strict=True)):
            if value is None and nullable:
                continue
            if type(value) is not kind:
                column = BY_NAME[name].columns[index].name
                wanted = "an integer" if kind is int else "a string"
                raise self._fail(number, f"{name}.{column} must be {wanted}, not {value!r:.40}")
        return str(name)

    def _end(
        self,
        number: int,
        record: dict[str, Any],
        checksum: str,
        seen: dict[str, int],
        expected: dict[str, int],
        file: IO[bytes],
    ) -> None:
        if record.get("sha256") != checksum:
            raise self._fail(number, "the checksum does not match: the file was changed")
        for name, count in expected.items():
            if seen[name] != count:
                raise self._fail(number, f"{seen[name]} {name} rows, the header says {count}")
        if file.read(1):
            raise self._fail(number + 1, "data after the end line")

    async def rows(self, table: Table) -> AsyncIterator[Sequence[Row]]:
        while batch := await asyncio.to_thread(self._next_batch, table.name):
            yield batch

    def _next_batch(self, name: str) -> list[Row]:
        """Up to a batch of the next rows of table ``name`` (the file was checked whole)."""
        if self._file is None:
            self._file = self.path.open("rb")
            self._file.readline()
        batch: list[Row] = []
        for found, row in self._records():
            if found != name:
                self._pending = (found, row)
                break
            batch.append(row)
            if len(batch) == BATCH_ROWS:
                break
        return batch

    def _records(self) -> Iterator[tuple[str, Row]]:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            yield pending
        assert self._file is not None
        for raw in self._file:
            record = orjson.loads(raw)
            if "end" in record:
                return
            yield record["t"], tuple(record["r"])

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
