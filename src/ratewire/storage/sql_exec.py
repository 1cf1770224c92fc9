"""Running the write path's prebuilt statements.

Through SQLAlchemy for PostgreSQL and MariaDB. For SQLite's single writer connection, straight
on the ``sqlite3`` connection with each statement compiled to SQL once: measured with
py-spy under wrk, SQLAlchemy's per-execution work (compiled-cache lookup, parameter
processing, result wrapping) was a quarter of all the server's samples during writes, for
five statements per rating. The SQL is the same SQLAlchemy compiles; only the way it is
handed to the driver changes.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, StatementError

_SQLITE = sqlite_dialect.dialect()
#: SQL text, the bound parameters' names in order, and the statement's own literal values.
_Compiled = tuple[str, tuple[str, ...], dict[str, Any]]


class StatementRunner:
    """Executes statements on a connection of one store (see the module's docstring)."""

    def __init__(self, *, raw_sqlite: bool) -> None:
        self._raw = raw_sqlite
        self._compiled: dict[tuple[int, tuple[str, ...]], _Compiled] = {}

    def _sql(self, stmt: Any, keys: tuple[str, ...]) -> _Compiled:
        cache_key = (id(stmt), keys)
        found = self._compiled.get(cache_key)
        if found is None:
            compiled = stmt.compile(dialect=_SQLITE, column_keys=list(keys))
            # Literals in the statement (``id = 1``, ``+ 1``) are bound parameters too.
            found = (compiled.string, tuple(compiled.positiontup or ()), dict(compiled.params))
            self._compiled[cache_key] = found
        return found

    @staticmethod
    def _values(
        names: tuple[str, ...], params: Mapping[str, Any], literals: dict[str, Any]
    ) -> list[Any]:
        return [params[name] if name in params else literals[name] for name in names]

    def _driver_execute(self, conn: Connection, stmt: Any, params: Mapping[str, Any]) -> Any:
        sql, names, literals = self._sql(stmt, tuple(params))
        driver = conn.connection.driver_connection
        assert driver is not None
        values = self._values(names, params, literals)
        try:
            return driver.execute(sql, values)
        except sqlite3.Error as exc:
            raise _wrapped(sql, values, exc) from exc

    def execute(self, conn: Connection, stmt: Any, params: Mapping[str, Any] | None = None) -> None:
        if self._raw:
            self._driver_execute(conn, stmt, params or {})
        else:
            conn.execute(stmt, dict(params) if params is not None else None)

    def rowcount(self, conn: Connection, stmt: Any, params: Mapping[str, Any]) -> int:
        """How many rows a DML statement changed."""
        if self._raw:
            return int(self._driver_execute(conn, stmt, params).rowcount)
        return int(conn.execute(stmt, dict(params)).rowcount)

    def scalar(self, conn: Connection, stmt: Any, params: Mapping[str, Any] | None = None) -> Any:
        """The first column of the only row (a RETURNING or a one-row select)."""
        if self._raw:
            row = self._driver_execute(conn, stmt, params or {}).fetchone()
            return None if row is None else row[0]
        return conn.execute(stmt, dict(params) if params is not None else None).scalar_one()

    def one(self, conn: Connection, stmt: Any, params: Mapping[str, Any] | None = None) -> Any:
        """The only row, as a tuple."""
        if self._raw:
            row = self._driver_execute(conn, stmt, params or {}).fetchone()
            assert row is not None
            return tuple(row)
        return tuple(conn.execute(stmt, dict(params) if params is not None else None).one())

    @contextlib.contextmanager
    def savepoint(self, conn: Connection) -> Iterator[None]:
        """One write of a group-commit batch: undone alone if it raises."""
        if not self._raw:
            with conn.begin_nested():
                yield
            return
        driver = conn.connection.driver_connection
        assert driver is not None
        # SQLAlchemy's savepoint objects cost as much as the write's own statements here.
        driver.execute("SAVEPOINT ratewire_write")
        try:
            yield
        except BaseException:
            driver.execute("ROLLBACK TO ratewire_write")
            driver.execute("RELEASE ratewire_write")
            raise
        driver.execute("RELEASE ratewire_write")

    def executemany(self, conn: Connection, stmt: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        if self._raw:
            sql, names, literals = self._sql(stmt, tuple(rows[0]))
            driver = conn.connection.driver_connection
            assert driver is not None
            many = [self._values(names, row, literals) for row in rows]
            try:
                driver.executemany(sql, many)
            except sqlite3.Error as exc:
                raise _wrapped(sql, many, exc) from exc
        else:
            conn.execute(stmt, [dict(row) for row in rows])


def _wrapped(sql: str, params: Any, error: sqlite3.Error) -> StatementError:
    """The driver's error as SQLAlchemy would raise it (IntegrityError, OperationalError...),
    so the store's handling is the same on every path."""
    return DBAPIError.instance(sql, params, error, sqlite3.Error)
