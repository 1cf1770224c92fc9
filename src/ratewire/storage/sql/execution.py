"""Running prebuilt statements: the write path's, and the hot single-row reads.

Through SQLAlchemy for PostgreSQL and MariaDB. For SQLite's single writer connection, straight
on the ``sqlite3`` connection with each statement compiled to SQL once: measured with
py-spy under wrk, SQLAlchemy's per-execution work (compiled-cache lookup, parameter
processing, result wrapping) was a quarter of all the server's samples during writes, for
five statements per rating. The SQL is the same SQLAlchemy compiles; only the way it is
handed to the driver changes. :class:`SqliteRowReader` and :class:`PostgresRowReader` do the
same for the reads a request waits on (a rating by id, a summary on a cache miss).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar, cast

from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, StatementError
from sqlalchemy.util import await_only

_SQLITE = sqlite_dialect.dialect()
#: SQL text, the bound parameters' names in order, and the statement's own literal values.
_Compiled = tuple[str, tuple[str, ...], dict[str, Any]]
_T = TypeVar("_T")


class TransactionRunner(Protocol):
    """The store's read or write transaction as the stores beside the ratings (webhooks,
    consumers) use it: ``await run(body)`` runs ``body`` on a connection in one transaction
    and answers what it returns (storage errors already translated)."""

    def __call__(self, body: Callable[[Connection], _T], /) -> Awaitable[_T]: ...


class StatementCompiler:
    """Statements compiled once for one dialect, with the values to bind in the driver's
    order."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._compiled: dict[tuple[int, tuple[str, ...]], _Compiled] = {}

    def sql(self, stmt: Any, keys: tuple[str, ...]) -> _Compiled:
        """``stmt`` compiled for parameters named ``keys`` (cached)."""
        cache_key = (id(stmt), keys)
        found = self._compiled.get(cache_key)
        if found is None:
            compiled = stmt.compile(dialect=self._dialect, column_keys=list(keys))
            # Literals in the statement (``id = 1``, ``+ 1``) are bound parameters too.
            found = (compiled.string, tuple(compiled.positiontup or ()), dict(compiled.params))
            self._compiled[cache_key] = found
        return found

    @staticmethod
    def values(
        names: tuple[str, ...], params: Mapping[str, Any], literals: dict[str, Any]
    ) -> list[Any]:
        """The values to bind, in the order of ``names``."""
        return [params[name] if name in params else literals[name] for name in names]

    def compiled(self, stmt: Any, params: Mapping[str, Any]) -> tuple[str, list[Any]]:
        """``stmt`` as SQL text and the values to bind, for the driver."""
        sql, names, literals = self.sql(stmt, tuple(params))
        return sql, self.values(names, params, literals)


class PgWriteConnection:
    """A PostgreSQL write transaction's asyncpg connection, as the write bodies see it: they
    run in a greenlet (sqlalchemy.util.greenlet_spawn) and :class:`StatementRunner` awaits
    asyncpg from there, so the same synchronous bodies serve every database."""

    __slots__ = ("connection",)

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection


class SqliteWriteConnection:
    """The SQLite writer's own stdlib connection, as the write bodies queued with
    ``driver=True`` see it: their transaction is ``BEGIN IMMEDIATE`` ... ``COMMIT`` on it, with
    no SQLAlchemy engine, pool or event in between (see ``batches.GroupCommit``)."""

    __slots__ = ("db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db


#: What a write body's ``conn`` is: SQLAlchemy's, or the driver's own on the driver path
#: (asyncpg's on PostgreSQL, the stdlib's on SQLite).
WriteConnection = Connection | PgWriteConnection | SqliteWriteConnection
#: asyncpg's failures: the server's errors, a lost or unusable connection, a timeout.
#: (InternalClientError: a connection left mid-operation by a lost server process.)
ASYNCPG_ERRORS: tuple[type[BaseException], ...]
try:
    import asyncpg

    ASYNCPG_ERRORS = (
        OSError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        TimeoutError,
    )
except ImportError:  # no ratewire[postgresql]: the PostgreSQL paths are never taken
    ASYNCPG_ERRORS = (OSError, TimeoutError)


def asyncpg_error(sql: str, params: Any, error: BaseException) -> DBAPIError:
    """An asyncpg failure as SQLAlchemy would raise it (IntegrityError for a constraint,
    OperationalError otherwise), so the store's handling is the same on every path."""
    if isinstance(error, asyncpg.IntegrityConstraintViolationError):
        return IntegrityError(sql, params, error)
    return OperationalError(sql, params, error)


def _pg_await(conn: PgWriteConnection, method: str, sql: str, values: Sequence[Any]) -> Any:
    """``conn.connection.<method>(sql, *values)`` awaited from a write body's greenlet, with
    asyncpg's failures raised as SQLAlchemy's."""
    try:
        return await_only(getattr(conn.connection, method)(sql, *values))
    except ASYNCPG_ERRORS as exc:
        raise asyncpg_error(sql, values, exc) from exc


def _engine_execute(conn: WriteConnection, stmt: Any, params: Mapping[str, Any] | None) -> Any:
    """``stmt`` through SQLAlchemy (the engine's path: MySQL/MariaDB, and what is not a rating
    write)."""
    return cast(Connection, conn).execute(stmt, dict(params) if params is not None else None)


def _sqlite_driver(conn: WriteConnection) -> sqlite3.Connection:
    """The stdlib connection under a SQLite write transaction's ``conn``."""
    if type(conn) is SqliteWriteConnection:
        return conn.db
    assert isinstance(conn, Connection)
    driver = conn.connection.driver_connection
    assert driver is not None
    return driver  # type: ignore[no-any-return]


def rows_of(status: str) -> int:
    """The row count of a PostgreSQL command status (``"UPDATE 1"``, ``"INSERT 0 3"``)."""
    return int(str(status).rsplit(" ", 1)[-1])


class StatementRunner:
    """Executes statements on a connection of one store (see the module's docstring).

    On PostgreSQL a write body gets either a SQLAlchemy ``Connection`` (the engine's path) or
    a :class:`PgWriteConnection` (the driver's: each statement compiled once, prepared and
    cached by asyncpg per connection, awaited from the body's greenlet)."""

    def __init__(self, *, raw_sqlite: bool, postgres: Dialect | None = None) -> None:
        self._raw = raw_sqlite
        #: SQLite's statements as the driver takes them (also used by SqliteRowReader).
        self.sqlite = StatementCompiler(_SQLITE)
        self._pg = StatementCompiler(postgres) if postgres is not None else None

    def _pg_call(self, conn: PgWriteConnection, method: str, stmt: Any, params: Any) -> Any:
        assert self._pg is not None
        sql, values = self._pg.compiled(stmt, params or {})
        return _pg_await(conn, method, sql, values)

    @staticmethod
    def pg_fetchrow(conn: PgWriteConnection, sql: str, values: Sequence[Any]) -> Any:
        """PostgreSQL's own SQL (``$n`` parameters, prepared and cached by asyncpg): the first
        row, or None."""
        return _pg_await(conn, "fetchrow", sql, values)

    @staticmethod
    def pg_execute(conn: PgWriteConnection, sql: str, values: Sequence[Any]) -> str:
        """PostgreSQL's own SQL; the command's status (``"INSERT 0 3"``)."""
        status: str = _pg_await(conn, "execute", sql, values)
        return status

    def _driver_execute(self, conn: WriteConnection, stmt: Any, params: Mapping[str, Any]) -> Any:
        sql, values = self.sqlite.compiled(stmt, params)
        driver = _sqlite_driver(conn)
        try:
            return driver.execute(sql, values)
        except sqlite3.Error as exc:
            raise wrapped_sqlite_error(sql, values, exc) from exc

    def execute(
        self, conn: WriteConnection, stmt: Any, params: Mapping[str, Any] | None = None
    ) -> None:
        if isinstance(conn, PgWriteConnection):
            self._pg_call(conn, "execute", stmt, params)
        elif self._raw:
            self._driver_execute(conn, stmt, params or {})
        else:
            _engine_execute(conn, stmt, params)

    def rowcount(self, conn: WriteConnection, stmt: Any, params: Mapping[str, Any]) -> int:
        """How many rows a DML statement changed."""
        if isinstance(conn, PgWriteConnection):
            return rows_of(self._pg_call(conn, "execute", stmt, params))
        if self._raw:
            return int(self._driver_execute(conn, stmt, params).rowcount)
        return int(_engine_execute(conn, stmt, params).rowcount)

    def scalar(
        self, conn: WriteConnection, stmt: Any, params: Mapping[str, Any] | None = None
    ) -> Any:
        """The first column of the only row (a RETURNING or a one-row select)."""
        if isinstance(conn, PgWriteConnection):
            row = self._pg_call(conn, "fetchrow", stmt, params)
            assert row is not None
            return row[0]
        if self._raw:
            row = self._driver_execute(conn, stmt, params or {}).fetchone()
            return None if row is None else row[0]
        return _engine_execute(conn, stmt, params).scalar_one()

    def one(self, conn: WriteConnection, stmt: Any, params: Mapping[str, Any] | None = None) -> Any:
        """The only row, as a tuple."""
        if isinstance(conn, PgWriteConnection):
            row = self._pg_call(conn, "fetchrow", stmt, params)
            assert row is not None
            return tuple(row)
        if self._raw:
            row = self._driver_execute(conn, stmt, params or {}).fetchone()
            assert row is not None
            return tuple(row)
        return tuple(_engine_execute(conn, stmt, params).one())

    def first(
        self, conn: WriteConnection, stmt: Any, params: Mapping[str, Any] | None = None
    ) -> tuple[Any, ...] | None:
        """The first row, as a tuple (positions as the statement's columns); None if none."""
        if isinstance(conn, PgWriteConnection):
            row = self._pg_call(conn, "fetchrow", stmt, params)
        elif self._raw:
            row = self._driver_execute(conn, stmt, params or {}).fetchone()
        else:
            row = _engine_execute(conn, stmt, params).first()
        return None if row is None else tuple(row)

    @contextlib.contextmanager
    def savepoint(self, conn: WriteConnection) -> Iterator[None]:
        """One write of a group-commit batch: undone alone if it raises."""
        if isinstance(conn, PgWriteConnection):
            _pg_await(conn, "execute", "SAVEPOINT ratewire_write", ())
            try:
                yield
            except BaseException:
                _pg_await(conn, "execute", "ROLLBACK TO SAVEPOINT ratewire_write", ())
                _pg_await(conn, "execute", "RELEASE SAVEPOINT ratewire_write", ())
                raise
            _pg_await(conn, "execute", "RELEASE SAVEPOINT ratewire_write", ())
            return
        if not self._raw:
            assert isinstance(conn, Connection)
            with conn.begin_nested():
                yield
            return
        driver = _sqlite_driver(conn)
        # SQLAlchemy's savepoint objects cost as much as the write's own statements here.
        driver.execute("SAVEPOINT ratewire_write")
        try:
            yield
        except BaseException:
            driver.execute("ROLLBACK TO ratewire_write")
            driver.execute("RELEASE ratewire_write")
            raise
        driver.execute("RELEASE ratewire_write")

    def executemany(
        self, conn: WriteConnection, stmt: Any, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        if not rows:
            return
        if isinstance(conn, PgWriteConnection):
            assert self._pg is not None
            sql, names, literals = self._pg.sql(stmt, tuple(rows[0]))
            many = [self._pg.values(names, row, literals) for row in rows]
            _pg_await(conn, "executemany", sql, (many,))
        elif self._raw:
            sql, names, literals = self.sqlite.sql(stmt, tuple(rows[0]))
            driver = _sqlite_driver(conn)
            many = [self.sqlite.values(names, row, literals) for row in rows]
            try:
                driver.executemany(sql, many)
            except sqlite3.Error as exc:
                raise wrapped_sqlite_error(sql, many, exc) from exc
        else:
            cast(Connection, conn).execute(stmt, [dict(row) for row in rows])


class SqliteRowReader:
    """Single-row SELECTs on SQLite straight on the driver, each of its threads holding a
    connection of its own (readers never block one another in WAL mode).

    Measured with ``store.get`` under 32 concurrent callers on this project's two-core
    machine: through SQLAlchemy's pooled engine 2,500 reads/s at about 450 us of CPU each,
    whatever the thread count; on the driver with a connection per thread 11,700 reads/s at
    110 us with two threads, 5,500/s with four (the GIL handed to and fro between them).
    """

    THREADS = 2

    def __init__(
        self, statements: StatementCompiler, connect: Callable[[], sqlite3.Connection]
    ) -> None:
        self._statements = statements
        self._connect = connect
        self._threads = ThreadPoolExecutor(self.THREADS, thread_name_prefix="ratewire-sqlite-row")
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._opened_lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._connect()
            with self._opened_lock:
                self._opened.append(connection)
        return connection

    async def first(self, stmt: Any, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row ``stmt`` selects, as a tuple in its columns' order; None if none.
        A driver error is raised as SQLAlchemy would raise it."""
        sql, values = self._statements.compiled(stmt, params)

        def read() -> tuple[Any, ...] | None:
            try:
                row = self._connection().execute(sql, values).fetchone()
            except sqlite3.Error as exc:
                raise wrapped_sqlite_error(sql, values, exc) from exc
            return None if row is None else tuple(row)

        return await asyncio.get_running_loop().run_in_executor(self._threads, read)

    def close(self) -> None:
        """Wait for reads in flight, then close every thread's connection."""
        self._threads.shutdown(wait=True)
        with self._opened_lock:
            for connection in self._opened:
                connection.close()
            self._opened.clear()


class PostgresRowReader:
    """Single-row SELECTs on PostgreSQL straight on asyncpg, from a small pool of its own.

    Measured with ``store.get`` under 32 concurrent callers: through SQLAlchemy's async engine
    990 reads/s at about 930 us of CPU each (pool checkout with its pre-ping round trip, the
    greenlet hop, result wrapping); on an asyncpg pool 5,800 reads/s at 134 us.
    """

    #: Enough for reads that each take one round trip; writes keep SQLAlchemy's pool.
    SIZE = 4
    #: A read waits this long for a connection and for its answer, then fails (503).
    TIMEOUT_SECONDS = 10.0
    ERRORS = ASYNCPG_ERRORS

    def __init__(self, dialect: Dialect, connect_options: Mapping[str, Any]) -> None:
        """``dialect``: the store's (asyncpg's, so statements compile with ``$1``
        parameters); ``connect_options``: ``asyncpg.connect``'s keyword arguments, as
        SQLAlchemy derives them from the store's URL."""
        self._statements = StatementCompiler(dialect)
        self._options = dict(connect_options)
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        """Create the pool; it connects on first use (and again after a connection is lost)."""
        self._pool = await asyncpg.create_pool(min_size=0, max_size=self.SIZE, **self._options)

    async def first(self, stmt: Any, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row ``stmt`` selects, as a tuple in its columns' order; None if none.
        Raises one of :attr:`ERRORS` when PostgreSQL cannot answer."""
        assert self._pool is not None, "start() first"
        sql, values = self._statements.compiled(stmt, params)
        async with self._pool.acquire(timeout=self.TIMEOUT_SECONDS) as connection:
            row = await connection.fetchrow(sql, *values, timeout=self.TIMEOUT_SECONDS)
        return None if row is None else tuple(row)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


def wrapped_sqlite_error(sql: str, params: Any, error: sqlite3.Error) -> StatementError:
    """The driver's error as SQLAlchemy would raise it (IntegrityError, OperationalError...),
    so the store's handling is the same on every path."""
    return DBAPIError.instance(sql, params, error, sqlite3.Error)
