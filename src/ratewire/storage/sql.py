"""Relational store on SQLAlchemy 2 Core (async): SQLite (default), PostgreSQL and MySQL/MariaDB.

Each write is one transaction that takes its locks in one fixed order: the rating row, the
game's summary row (which also holds the game topic's last offset), the user's head row, and
last the single global head row. Because every write ends on the global row, the global
offset (``seq``) is the commit order, and the relay can follow it without gaps; because the
global row is taken last, it is held only for the event insert and the commit.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import asyncpg
import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    cast,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import mysql as mysql_dialect
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import greenlet_spawn

from ratewire.audit import AuditChain, AuditContext, AuditEntry, AuditQuery, AuditRecord
from ratewire.audit.entry import AuditHead
from ratewire.audit.records import rating_audit_record, revocation_audit_record
from ratewire.domain import (
    GameSummary,
    Rating,
    RatingChanges,
    RatingDraft,
    RatingEvent,
    SummaryDelta,
    Topic,
    TopicKind,
)
from ratewire.domain.rating import EventKind
from ratewire.security.revocation import Revocation
from ratewire.storage import pg_writes
from ratewire.storage.base import (
    AlreadyExists,
    NotFound,
    StorageUnavailable,
    VersionMismatch,
    WriteResult,
)
from ratewire.storage.sql_audit import AuditCursor, AuditTables
from ratewire.storage.sql_exec import (
    ASYNCPG_ERRORS,
    PgWriteConnection,
    PostgresRowReader,
    SqliteRowReader,
    StatementRunner,
    WriteConnection,
    asyncpg_error,
)

log = logging.getLogger("ratewire.storage")
SCHEMA_VERSION = 1
GROUP_COMMIT_MAX = 64  # writes per SQLite transaction at most
#: PostgreSQL connections of the rating writes' own pool: batches never overlap, so one is
#: busy at a time; the second stands in while a lost one is replaced.
PG_WRITE_POOL_SIZE = 2
GLOBAL = Topic(TopicKind.GLOBAL)
_T = TypeVar("_T")

metadata = MetaData()

store_meta = Table(
    "ratewire_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
)

ratings = Table(
    "ratings",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("game_id", String(64), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("score", SmallInteger, nullable=False),
    Column("comment", Text, nullable=True),
    Column("created_at", BigInteger, nullable=False),  # epoch milliseconds: portable, tz-free
    Column("updated_at", BigInteger, nullable=False),
    Column("version", Integer, nullable=False),
    UniqueConstraint("game_id", "user_id", name="uq_ratings_game_user"),
    Index("ix_ratings_game_id_id", "game_id", "id"),
    Index("ix_ratings_user_id_id", "user_id", "id"),
)

game_summaries = Table(
    "game_summaries",
    metadata,
    Column("game_id", String(64), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("total", BigInteger, nullable=False),
    *(Column(f"h{score}", Integer, nullable=False) for score in range(1, 6)),
    Column("last_offset", BigInteger, nullable=False),
)

user_heads = Table(
    "user_heads",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("last_offset", BigInteger, nullable=False),
)

global_head = Table(
    "global_head",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
    Column("last_offset", BigInteger, nullable=False),
)

events = Table(
    "rating_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(8), nullable=False),
    Column("game_id", String(64), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("game_offset", BigInteger, nullable=False),
    Column("user_offset", BigInteger, nullable=False),
    Column("payload", Text, nullable=False),
    Column("occurred_at", BigInteger, nullable=False),
    Index("ix_rating_events_game", "game_id", "game_offset"),
    Index("ix_rating_events_user", "user_id", "user_offset"),
    Index("ix_rating_events_occurred_at", "occurred_at"),
)

#: The token deny list (ratewire.security.revocation); times in epoch milliseconds.
revocations = Table(
    "token_revocations",
    metadata,
    Column("kind", String(8), primary_key=True),
    Column("value", String(255), primary_key=True),
    Column("revoked_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("revoked_by", String(255), nullable=True),
    Column("reason", Text, nullable=True),
    Index("ix_token_revocations_expires_at", "expires_at"),
)

audit_tables = AuditTables(metadata)

_HISTOGRAM = [game_summaries.c[f"h{score}"] for score in range(1, 6)]
_HISTOGRAM_NAMES = tuple(column.name for column in _HISTOGRAM)
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "mysql": "mysql+asyncmy",
    "mariadb": "mysql+asyncmy",
}


def async_url(url: str) -> str:
    """``url`` with the async driver ratewire uses for its scheme (kept if one is given)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"storage url {url!r} has no scheme (like sqlite:///./ratewire.db)")
    if "+" in scheme:
        return url
    if scheme not in _ASYNC_DRIVERS:
        raise ValueError(f"storage url {url!r}: unsupported scheme {scheme!r}")
    return f"{_ASYNC_DRIVERS[scheme]}://{rest}"


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _rating_from_row(row: Any) -> Rating:
    """A ``select(ratings)`` row (a SQLAlchemy row or the driver's tuple: by position)."""
    rating_id, game_id, user_id, score, comment, created_at, updated_at, version = row
    return Rating(
        id=rating_id,
        game_id=game_id,
        user_id=user_id,
        score=int(score),
        comment=comment,
        created_at=_from_ms(created_at),
        updated_at=_from_ms(updated_at),
        version=int(version),
    )


def _event_from_row(row: Any) -> RatingEvent:
    return RatingEvent(
        seq=int(row.seq),
        kind=row.kind,
        game_id=row.game_id,
        user_id=row.user_id,
        game_offset=int(row.game_offset),
        user_offset=int(row.user_offset),
        data=orjson.loads(row.payload),
        occurred_at=_from_ms(row.occurred_at),
    )


def _summary_from_row(game_id: str, row: Any) -> GameSummary:
    """A ``select(game_summaries)`` row (a SQLAlchemy row or the driver's tuple: by position),
    or None for a game nobody rated."""
    if row is None:
        return GameSummary.empty(game_id)
    _, count, total, h1, h2, h3, h4, h5, last_offset = row
    histogram = (int(h1), int(h2), int(h3), int(h4), int(h5))
    return GameSummary(game_id, int(count), int(total), histogram, int(last_offset))


class _Statements:
    """Every statement a store runs, built once. Building Core constructs and their cache keys
    on each call cost ~1.5 ms of a ~2.4 ms SQLite write; prebuilt statements take bind
    parameters and hit the compiled cache directly."""

    def __init__(self, dialect: str) -> None:
        self.insert_rating = insert(ratings)
        self.insert_event = insert(events)
        self.rating_by_id = select(ratings).where(ratings.c.id == bindparam("rid"))
        self.lock_rating = self.rating_by_id.with_for_update()
        self.update_rating = (
            update(ratings)
            .where(ratings.c.id == bindparam("rid"))
            .values(
                score=bindparam("b_score"),
                comment=bindparam("b_comment"),
                updated_at=bindparam("b_updated_at"),
                version=bindparam("b_version"),
            )
        )
        self.delete_rating = delete(ratings).where(ratings.c.id == bindparam("rid"))
        self.id_of_pair = select(ratings.c.id).where(
            ratings.c.game_id == bindparam("game_id"), ratings.c.user_id == bindparam("user_id")
        )
        self.summary = select(game_summaries).where(game_summaries.c.game_id == bindparam("key"))
        self.global_offset = select(global_head.c.last_offset).where(global_head.c.id == 1)
        self.game_offset = select(game_summaries.c.last_offset).where(
            game_summaries.c.game_id == bindparam("key")
        )
        self.user_offset = select(user_heads.c.last_offset).where(
            user_heads.c.user_id == bindparam("key")
        )
        bump = update(global_head).where(global_head.c.id == 1)
        bump = bump.values(last_offset=global_head.c.last_offset + 1)
        self.returning = dialect != "mysql"  # MariaDB has no UPDATE ... RETURNING
        self.bump_global = bump.returning(global_head.c.last_offset) if self.returning else bump
        self.upsert_game = self._counter_upsert(
            dialect,
            game_summaries,
            ["count", "total", *(c.name for c in _HISTOGRAM), "last_offset"],
        )
        self.upsert_user = self._counter_upsert(dialect, user_heads, ["last_offset"])
        self.positions = {
            kind: select(self.head(kind).scalar_subquery(), self.global_offset.scalar_subquery())
            for kind in (TopicKind.GLOBAL, TopicKind.GAME, TopicKind.USER)
        }

    def head(self, kind: TopicKind) -> Any:
        return {
            TopicKind.GLOBAL: self.global_offset,
            TopicKind.GAME: self.game_offset,
            TopicKind.USER: self.user_offset,
        }[kind]

    @staticmethod
    def _counter_upsert(dialect: str, table: Table, counters: list[str]) -> Any:
        """Insert a row, or add the inserted values to the existing row's counters."""
        if dialect == "mysql":
            on_duplicate = mysql_dialect.insert(table)
            return on_duplicate.on_duplicate_key_update(
                {name: table.c[name] + on_duplicate.inserted[name] for name in counters}
            )
        on_conflict = (pg_dialect.insert if dialect == "postgresql" else sqlite_dialect.insert)(
            table
        )
        key = [column.name for column in table.primary_key]
        return on_conflict.on_conflict_do_update(
            index_elements=key,
            set_={name: table.c[name] + on_conflict.excluded[name] for name in counters},
        ).returning(table.c.last_offset)


def _is_deadlock(exc: DBAPIError) -> bool:
    code = str(getattr(exc.orig, "sqlstate", "") or getattr(exc.orig, "args", [""])[0])
    return code in ("40P01", "1213")  # PostgreSQL deadlock_detected, MySQL ER_LOCK_DEADLOCK


def _rejected_class(exc: BaseException) -> str | None:
    """The SQLSTATE class of a statement PostgreSQL rejected while its connection stays
    usable (data, constraint, transaction rollback); None for anything else."""
    state = str(getattr(getattr(exc, "orig", None), "sqlstate", "") or "")
    return state[:2] if state[:2] in ("22", "23", "40") else None


#: SQLSTATE classes that point at one write's own data (22: data exception, 23: integrity).
_WRITE_AT_FAULT = ("22", "23")


def _reason(exc: BaseException) -> str:
    """The driver's own words, without SQLAlchemy's statement dump and doc link."""
    original = getattr(exc, "orig", None) or exc
    return (
        str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
    )


SqliteSynchronous = Literal["full", "normal"]


def _configure_sqlite(connection: sqlite3.Connection, synchronous: SqliteSynchronous) -> None:
    """What every connection to a SQLite store runs first."""
    connection.isolation_level = None  # we issue BEGIN ourselves
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a 2xx answer means the rating is on disk, even across a power cut. NORMAL (WAL):
    # the commit is in the WAL file, so it survives the process dying, not the machine.
    cursor.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class _PairTaken(Exception):
    """A create found the game/user pair rated already (PostgreSQL's statement wrote
    nothing)."""


class _NoChange(Exception):
    """Raised inside a write transaction to roll it back when the write changes nothing."""

    def __init__(self, rating: Rating) -> None:
        self.rating = rating


#: Failures that leave a PostgreSQL write connection usable (the transaction rolls back).
_DEFINITE = (IntegrityError, _NoChange, _PairTaken, NotFound, VersionMismatch)
#: What a write body raises from a check it makes before writing anything: the batch's
#: transaction goes on without it, savepoint or not.
_BEFORE_WRITING = (_NoChange, _PairTaken, NotFound, VersionMismatch)


class SqlStore:
    """A :class:`~ratewire.storage.base.RatingStore` over SQLite, PostgreSQL or MySQL.

    Every operation is one synchronous function over a SQLAlchemy ``Connection``, written once
    for all three databases. On PostgreSQL and MySQL it runs with ``AsyncConnection.run_sync``
    over asyncpg / asyncmy. On SQLite it runs as a whole in a worker thread with the stdlib
    driver: aiosqlite hops threads on every statement, cursor and fetch (~0.15 ms each, about
    3.5 ms per write); one hop per transaction brings a write to well under 1 ms.
    """

    def __init__(
        self, url: str, *, pool_size: int = 10, sqlite_synchronous: SqliteSynchronous = "full"
    ) -> None:
        self.url = async_url(url)
        self._sqlite_synchronous: SqliteSynchronous = sqlite_synchronous
        self.dialect = make_url(self.url).get_backend_name()
        self.epoch = ""
        self._sql = _Statements(self.dialect)
        self._audit_chain: AuditChain | None = None
        # PostgreSQL's rating writes on asyncpg directly (see _run_batch); None elsewhere.
        self._pg_writer: asyncpg.Pool | None = None
        self._pg_connect_options: dict[str, Any] = {}
        self._audit_head_written: tuple[int, str] | None = None
        self._async: AsyncEngine | None = None
        # (body, its caller's future, whether the body runs on the driver path)
        self._queued_writes: list[
            tuple[Callable[[Connection], Any], asyncio.Future[Any], bool]
        ] = []
        self._deadlock_retries: dict[asyncio.Future[Any], int] = {}
        self._batcher: asyncio.Task[None] | None = None
        self._sqlite_writer: Engine | None = None
        self._sqlite_reader: Engine | None = None
        self._sqlite_row_reader: SqliteRowReader | None = None
        self._pg_row_reader: PostgresRowReader | None = None
        sqlite_connect: Callable[[], sqlite3.Connection] | None = None
        postgres: Dialect | None = None  # compiles the driver path's statements
        if self.dialect == "sqlite":
            sync_url = make_url(self.url).set(drivername="sqlite")
            # One writer thread and connection (SQLite has one writer at a time; queueing in
            # the executor beats spinning in SQLite's busy handler); readers never block in WAL.
            self._sqlite_writer = self._sqlite_engine(sync_url, immediate=True, pool_size=1)
            self._sqlite_reader = self._sqlite_engine(sync_url, immediate=False, pool_size=4)
            self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="ratewire-sqlite-w")
            self._read_threads = ThreadPoolExecutor(4, thread_name_prefix="ratewire-sqlite-r")
            # The database file and options exactly as SQLAlchemy opens them from the URL.
            args, options = self._sqlite_reader.dialect.create_connect_args(sync_url)
            connect_args: list[Any] = list(args)
            # check_same_thread off: close() closes them from the event loop thread.
            connect_kwargs: dict[str, Any] = {**options, "check_same_thread": False}

            def connect() -> sqlite3.Connection:
                connection: sqlite3.Connection = sqlite3.connect(*connect_args, **connect_kwargs)
                _configure_sqlite(connection, sqlite_synchronous)
                return connection

            sqlite_connect = connect
        else:
            # READ COMMITTED: each statement sees what committed before it, which the
            # lock-then-read steps of a write rely on (MySQL defaults to REPEATABLE READ).
            self._async = create_async_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                isolation_level="READ COMMITTED",
            )
            if self.dialect == "postgresql":
                _, options = self._async.dialect.create_connect_args(make_url(self.url))
                self._pg_row_reader = PostgresRowReader(self._async.dialect, options)
                self._pg_connect_options = dict(options)
                postgres = self._async.dialect
        self._run = StatementRunner(raw_sqlite=sqlite_connect is not None, postgres=postgres)
        self._audit_cursor = AuditCursor(self._run)
        if sqlite_connect is not None:
            self._sqlite_row_reader = SqliteRowReader(self._run.sqlite, sqlite_connect)

    def _sqlite_engine(self, url: Any, *, immediate: bool, pool_size: int) -> Engine:
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=0,
            connect_args={"check_same_thread": False},  # pooled across the executor's threads
        )

        synchronous = self._sqlite_synchronous

        @event.listens_for(engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            _configure_sqlite(dbapi_connection, synchronous)

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # Readers run in autocommit: in WAL mode each statement reads one snapshot.
            if immediate:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    # -- running operations ----------------------------------------------------------------

    async def _write(self, body: Callable[[Connection], _T], *, driver: bool = False) -> _T:
        """Run ``body`` in one write transaction (retried on a deadlock). ``driver``: the body
        touches the connection only through ``self._run``, so on PostgreSQL it may run on
        asyncpg directly (the rating writes and audit appends)."""
        try:
            return await self._write_once(body, driver and self._pg_writer is not None)
        except IntegrityError:
            raise
        except (OSError, DBAPIError) as exc:
            raise self._unavailable(exc) from exc

    @staticmethod
    def _deadlocked(exc: BaseException) -> bool:
        return isinstance(exc, DBAPIError) and _is_deadlock(exc)

    def _unavailable(self, exc: BaseException) -> StorageUnavailable:
        # Callers get the driver's one-line reason (a 503 over REST); the traceback is kept
        # for debug logging only: an unreachable database is not a bug to trace.
        reason = _reason(exc)
        log.warning("%s storage error: %s", self.dialect, reason)
        log.debug("%s storage error", self.dialect, exc_info=exc)
        return StorageUnavailable(f"{self.dialect}: {reason}")

    async def _write_once(self, body: Callable[[Connection], _T], driver: bool = False) -> _T:
        """Queue ``body`` for the next write transaction and wait for its commit.

        Group commit: one batch at a time takes every write queued while the previous one
        ran and commits them in one transaction, each in its own SAVEPOINT (a failed or
        unchanged write rolls back alone): one BEGIN, one fsync and one hold of the global
        head row for the whole batch. Each caller is answered only after that commit; bodies
        run in queue order, so offsets stay in commit order. Batches never overlap, so they
        cannot deadlock each other.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        self._queued_writes.append((body, done, driver))
        if self._batcher is None or self._batcher.done():
            self._batcher = loop.create_task(self._commit_batches())
        result: _T = await done
        return result

    async def _commit_batches(self) -> None:
        while self._queued_writes:
            # One kind per transaction: the driver's path or the engine's.
            driver = self._queued_writes[0][2]
            size = 1
            while (
                size < min(GROUP_COMMIT_MAX, len(self._queued_writes))
                and self._queued_writes[size][2] == driver
            ):
                size += 1
            batch = self._queued_writes[:size]
            del self._queued_writes[:size]
            try:
                outcomes = await self._run_batch([body for body, _, _ in batch], driver)
            except Exception as exc:  # nothing of the batch is stored (for one write: its error)
                outcomes = [(False, exc)] * len(batch)
            retry = []
            for (body, done, _), (succeeded, value) in zip(batch, outcomes, strict=True):
                if done.done():
                    continue  # the caller went away; its write still committed (or not)
                if succeeded:
                    done.set_result(value)
                elif self._deadlocked(value) and self._deadlock_retries.get(done, 0) < 5:
                    # Batches of two instances can lock game rows in opposite orders; the
                    # victim's write rolled back to its savepoint: run it again, first.
                    self._deadlock_retries[done] = self._deadlock_retries.get(done, 0) + 1
                    retry.append((body, done, driver))
                else:
                    self._deadlock_retries.pop(done, None)
                    done.set_exception(value)
            self._queued_writes[:0] = retry
            for _, done, _ in batch:
                if done.done():
                    self._deadlock_retries.pop(done, None)

    async def _run_batch(
        self, bodies: list[Callable[[Connection], Any]], driver: bool = False
    ) -> list[tuple[bool, Any]]:
        if driver and self._pg_writer is not None:
            return await self._run_pg_batch(self._pg_writer, bodies)
        if self._sqlite_writer is not None:
            engine = self._sqlite_writer

            def transaction() -> list[tuple[bool, Any]]:
                with engine.begin() as conn:
                    return self._apply(conn, bodies)

            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._write_thread, transaction)
        assert self._async is not None
        for attempt in range(5):
            try:
                async with self._async.begin() as conn:
                    return await conn.run_sync(self._apply, bodies)
            except DBAPIError as exc:
                # A deadlock victim (other writers of the same database) retries the whole
                # transaction, the remedy both databases document.
                if not _is_deadlock(exc) or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    async def _run_pg_batch(
        self, pool: asyncpg.Pool, bodies: list[Callable[[Connection], Any]]
    ) -> list[tuple[bool, Any]]:
        """One write transaction on asyncpg: the bodies run in a greenlet whose statements
        the runner awaits on this connection. Through SQLAlchemy's async engine the same
        write cost a pooled checkout with a pre-ping round trip, result wrapping and
        per-execution compilation lookups (see the README's REST figures).

        The batch first runs without a savepoint per write (two round trips each): the
        statements of ``pg_writes`` do not fail for a write that cannot happen, they write
        nothing. If the server still rejects a statement of one write (bad data, a
        constraint), the transaction rolls back and the batch runs again with savepoints, so
        that only the write at fault fails."""
        savepoints = False
        for attempt in range(5):
            try:
                async with pool.acquire(timeout=PostgresRowReader.TIMEOUT_SECONDS) as connection:
                    try:
                        async with connection.transaction(isolation="read_committed"):
                            outcomes: list[tuple[bool, Any]] = await greenlet_spawn(
                                self._apply, PgWriteConnection(connection), bodies, savepoints
                            )
                            return outcomes
                    except BaseException as exc:
                        if not isinstance(exc, _DEFINITE) and _rejected_class(exc) is None:
                            # Whatever state a failure left it in (a lost server process can
                            # leave it mid-operation), this connection is not handed out
                            # again: the pool opens a new one.
                            connection.terminate()
                        raise
            except ASYNCPG_ERRORS as exc:  # acquiring, BEGIN, COMMIT or the rollback
                error = asyncpg_error("COMMIT", None, exc)
                if not _is_deadlock(error) or attempt == 4:
                    raise error from exc
            except DBAPIError as exc:
                # A statement failed, so the transaction rolled back and nothing of the batch
                # is stored: running it again is safe (unlike after a failed COMMIT).
                if _rejected_class(exc) in _WRITE_AT_FAULT and not savepoints and len(bodies) > 1:
                    savepoints = True
                    continue
                # A deadlock victim (other writers of the same database) retries the whole
                # transaction, the remedy the database documents.
                if not _is_deadlock(exc) or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _apply(
        self,
        conn: WriteConnection,
        bodies: list[Callable[[Any], Any]],
        savepoints: bool = True,
    ) -> list[tuple[bool, Any]]:
        """Run ``bodies`` in the transaction on ``conn``; each one's outcome. With
        ``savepoints``, each write is undone alone if it fails; without, only a write that
        fails before writing anything (:data:`_BEFORE_WRITING`) is passed over, and any other
        failure ends the transaction."""
        # Batches never overlap, so one cursor at a time (see sql_audit.AuditCursor).
        cursor = self._audit_cursor = AuditCursor(self._run, self._audit_head_written)
        if len(bodies) == 1:  # alone, the transaction is the unit: its error rolls it back
            outcome = bodies[0](conn)
            self._flush_audit(conn, cursor)
            return [(True, outcome)]
        outcomes: list[tuple[bool, Any]] = []
        for body in bodies:
            before = cursor.snapshot()
            try:
                if savepoints:
                    with self._run.savepoint(conn):
                        outcomes.append((True, body(conn)))
                else:
                    outcomes.append((True, body(conn)))
            except Exception as exc:
                if not savepoints and not isinstance(exc, _BEFORE_WRITING):
                    raise
                cursor.restore(before)
                outcomes.append((False, exc))
        self._flush_audit(conn, cursor)
        return outcomes

    def _flush_audit(self, conn: WriteConnection, cursor: AuditCursor) -> None:
        wrote = bool(cursor.pending)
        audit_tables.flush(conn, cursor)
        if wrote:
            # What the next transaction assumes (checked when it moves the head; a commit
            # that fails after this only costs the next one a locked read).
            self._audit_head_written = cursor.head

    async def _read(self, body: Callable[[Connection], _T]) -> _T:
        try:
            return await self._read_once(body)
        except IntegrityError:
            raise
        except (OSError, DBAPIError) as exc:
            raise self._unavailable(exc) from exc

    async def _read_row(self, stmt: Any, params: dict[str, Any]) -> Any:
        """The first row of a one-row SELECT: on SQLite and PostgreSQL through the driver (see
        :class:`SqliteRowReader`, :class:`PostgresRowReader`), on MySQL like any read."""
        if self._sqlite_row_reader is not None:
            try:
                return await self._sqlite_row_reader.first(stmt, params)
            except (OSError, DBAPIError) as exc:
                raise self._unavailable(exc) from exc
        if self._pg_row_reader is not None:
            try:
                return await self._pg_row_reader.first(stmt, params)
            except PostgresRowReader.ERRORS as exc:
                raise self._unavailable(exc) from exc
        return await self._read(lambda conn: conn.execute(stmt, params).first())

    async def _read_once(self, body: Callable[[Connection], _T]) -> _T:
        if self._sqlite_reader is not None:
            engine = self._sqlite_reader

            def read() -> _T:
                with engine.connect() as conn:
                    return body(conn)

            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._read_threads, read)
        assert self._async is not None
        async with self._async.connect() as conn:
            return await conn.run_sync(body)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._create_schema()
            await self._write(self._seed)
            version, epoch = await self._read(
                lambda conn: (
                    conn.scalar(
                        select(store_meta.c.value).where(store_meta.c.key == "schema_version")
                    ),
                    conn.scalar(select(store_meta.c.value).where(store_meta.c.key == "epoch")),
                )
            )
            if self._pg_row_reader is not None:
                await self._pg_row_reader.start()
                # Connects on first use and again after a connection is lost; no pre-ping:
                # a dead connection fails its statement (one 503) and the pool replaces it.
                self._pg_writer = await asyncpg.create_pool(
                    min_size=0, max_size=PG_WRITE_POOL_SIZE, **self._pg_connect_options
                )
        except StorageUnavailable as exc:
            reason = str(exc).removeprefix(f"{self.dialect}: ")
            raise StorageUnavailable(f"cannot open {self._safe_url()}: {reason}") from exc
        self.epoch = str(epoch)
        if int(version or 0) > SCHEMA_VERSION:
            raise StorageUnavailable(
                f"{self.dialect}: schema version {version} is newer than this ratewire "
                f"({SCHEMA_VERSION}); upgrade ratewire"
            )

    async def _create_schema(self) -> None:
        # Instances of a cluster start together against one new database: when two create a
        # table at once, the loser's CREATE fails. Checking again then finds the winner's.
        for attempt in range(5):
            try:
                await self._write(lambda conn: metadata.create_all(conn, checkfirst=True))
                return
            except (IntegrityError, StorageUnavailable):
                if attempt == 4:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))

    @staticmethod
    def _seed(conn: Connection) -> None:
        # Several instances may start at once against one database: seed rows are inserted
        # only where missing, and a lost race is harmless.
        for table, row in (
            (store_meta, {"key": "schema_version", "value": str(SCHEMA_VERSION)}),
            (store_meta, {"key": "epoch", "value": secrets.token_hex(8)}),
            (global_head, {"id": 1, "last_offset": 0}),
            (audit_tables.head, audit_tables.seed_row()),
        ):
            key = next(iter(row))
            if not conn.scalar(select(func.count()).where(table.c[key] == row[key])):
                try:
                    with conn.begin_nested():
                        conn.execute(insert(table).values(**row))
                except IntegrityError:
                    pass

    def _safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher  # writes already queued are committed and answered first
        if self._async is not None:
            await self._async.dispose()
        if self._pg_row_reader is not None:
            await self._pg_row_reader.close()
        if self._pg_writer is not None:
            await self._pg_writer.close()
        for engine in (self._sqlite_writer, self._sqlite_reader):
            if engine is not None:
                engine.dispose()
        if self._sqlite_writer is not None:
            self._write_thread.shutdown(wait=True)
            self._read_threads.shutdown(wait=True)
        if self._sqlite_row_reader is not None:
            self._sqlite_row_reader.close()

    async def ping(self) -> None:
        await self._read(lambda conn: conn.scalar(select(literal(1))))

    # -- write steps (run inside one transaction) --------------------------------------------

    def _bump_counter(
        self, conn: Connection, stmt: Any, key: tuple[str, str], values: dict[str, int]
    ) -> int:
        """Add ``values`` to the counters of row ``key`` (creating it); its new last_offset."""
        name, value = key
        if self._sql.returning:
            return int(self._run.scalar(conn, stmt, {name: value, **values}))
        conn.execute(stmt, {name: value, **values})
        query = self._sql.game_offset if name == "game_id" else self._sql.user_offset
        return int(conn.scalar(query, {"key": value}) or 0)

    def _next_seq(self, conn: Connection) -> int:
        if self._sql.returning:
            return int(self._run.scalar(conn, self._sql.bump_global))
        conn.execute(self._sql.bump_global)
        return int(conn.scalar(self._sql.global_offset) or 0)

    def _record(
        self,
        conn: Connection,
        kind: EventKind,
        old: Rating | None,
        new: Rating | None,
        now: datetime,
        audit: AuditContext | None,
    ) -> RatingEvent:
        """Move the counters and append the event (and its audit entry); the rating row is
        already written."""
        current = new or old
        assert current is not None
        delta = SummaryDelta.between(
            None if old is None else old.score, None if new is None else new.score
        )
        histogram = dict(zip(_HISTOGRAM_NAMES, delta.histogram, strict=True))
        game_offset = self._bump_counter(
            conn,
            self._sql.upsert_game,
            ("game_id", current.game_id),
            {"count": delta.count, "total": delta.total, **histogram, "last_offset": 1},
        )
        user_offset = self._bump_counter(
            conn, self._sql.upsert_user, ("user_id", current.user_id), {"last_offset": 1}
        )
        seq = self._next_seq(conn)
        data = current.to_wire()
        self._run.execute(
            conn,
            self._sql.insert_event,
            {
                "seq": seq,
                "kind": kind,
                "game_id": current.game_id,
                "user_id": current.user_id,
                "game_offset": game_offset,
                "user_offset": user_offset,
                "payload": orjson.dumps(data).decode(),
                "occurred_at": _ms(now),
            },
        )
        return self._recorded(
            conn, kind, old, new, now, audit, data, (seq, game_offset, user_offset)
        )

    def _record_pg(
        self,
        conn: PgWriteConnection,
        statement: str,
        kind: EventKind,
        old: Rating | None,
        new: Rating | None,
        now: datetime,
        audit: AuditContext | None,
        rating_values: Sequence[Any],
    ) -> RatingEvent | None:
        """PostgreSQL: the rating row, the counters and the event in one statement
        (``pg_writes``); None when the rating row was not written (nothing was)."""
        current = new or old
        assert current is not None
        delta = SummaryDelta.between(
            None if old is None else old.score, None if new is None else new.score
        )
        data = current.to_wire()
        offsets = pg_writes.write_rating(
            conn, statement, delta, kind, orjson.dumps(data).decode(), _ms(now), rating_values
        )
        if offsets is None:
            return None
        return self._recorded(conn, kind, old, new, now, audit, data, offsets)

    def _recorded(
        self,
        conn: WriteConnection,
        kind: EventKind,
        old: Rating | None,
        new: Rating | None,
        now: datetime,
        audit: AuditContext | None,
        data: dict[str, Any],
        offsets: tuple[int, int, int],
    ) -> RatingEvent:
        """The event of a write whose rows are written, its audit entry sealed."""
        current = new or old
        assert current is not None
        seq, game_offset, user_offset = offsets
        if self._audit_chain is not None:
            record = rating_audit_record(kind, old, new, now, seq, audit, data)
            audit_tables.append(conn, self._audit_chain, [record], self._audit_cursor)
        return RatingEvent(
            seq, kind, current.game_id, current.user_id, game_offset, user_offset, data, now
        )

    def _locked(
        self, conn: WriteConnection, rating_id: str, expected_version: int | None
    ) -> Rating:
        row = self._run.first(conn, self._sql.lock_rating, {"rid": rating_id})
        if row is None:
            raise NotFound(rating_id)
        rating = _rating_from_row(row)
        if expected_version is not None and expected_version != rating.version:
            raise VersionMismatch(rating_id, expected_version, rating.version)
        return rating

    async def _pair_id(self, game_id: str, user_id: str) -> str | None:
        """The id of ``user_id``'s rating of ``game_id``, read on the driver where there is
        one (an upsert starts with this read)."""
        row = await self._read_row(self._sql.id_of_pair, {"game_id": game_id, "user_id": user_id})
        return None if row is None else str(row[0])

    # -- writes ---------------------------------------------------------------------------

    async def create(
        self, draft: RatingDraft, now: datetime, audit: AuditContext | None = None
    ) -> WriteResult:
        rating = Rating.new(draft, now)

        def body(conn: WriteConnection) -> WriteResult:
            if isinstance(conn, PgWriteConnection):
                created = self._record_pg(
                    conn,
                    pg_writes.CREATE,
                    "created",
                    None,
                    rating,
                    now,
                    audit,
                    (
                        rating.id,
                        rating.game_id,
                        rating.user_id,
                        rating.score,
                        rating.comment,
                        _ms(rating.created_at),
                        _ms(rating.updated_at),
                        rating.version,
                    ),
                )
                if created is None:
                    raise _PairTaken()
                return WriteResult(rating, created, True)
            self._run.execute(
                conn,
                self._sql.insert_rating,
                {
                    "id": rating.id,
                    "game_id": rating.game_id,
                    "user_id": rating.user_id,
                    "score": rating.score,
                    "comment": rating.comment,
                    "created_at": _ms(rating.created_at),
                    "updated_at": _ms(rating.updated_at),
                    "version": rating.version,
                },
            )
            event = self._record(conn, "created", None, rating, now, audit)
            return WriteResult(rating, event, True)

        try:
            return await self._write(body, driver=True)
        except (IntegrityError, _PairTaken):
            existing = await self._pair_id(draft.game_id, draft.user_id)
            raise AlreadyExists(draft.game_id, draft.user_id, existing) from None

    async def upsert(
        self,
        draft: RatingDraft,
        expected_version: int | None,
        now: datetime,
        audit: AuditContext | None = None,
    ) -> WriteResult:
        changes = RatingChanges(
            score=draft.score, comment=draft.comment, clear_comment=draft.comment is None
        )
        for _ in range(3):
            existing_id = await self._pair_id(draft.game_id, draft.user_id)
            if existing_id is None:
                if expected_version is not None:
                    raise VersionMismatch(
                        f"{draft.game_id}/{draft.user_id}", expected_version, None
                    )
                try:
                    return await self.create(draft, now, audit)
                except AlreadyExists:
                    continue  # a concurrent writer created it first: update that one instead
            try:
                return await self.update(existing_id, changes, expected_version, now, audit)
            except NotFound:
                continue  # deleted between the lookup and the update: create it again
        raise StorageUnavailable(f"upsert of {draft.game_id}/{draft.user_id} kept racing; retry")

    async def update(
        self,
        rating_id: str,
        changes: RatingChanges,
        expected_version: int | None,
        now: datetime,
        audit: AuditContext | None = None,
    ) -> WriteResult:
        def body(conn: WriteConnection) -> WriteResult:
            old = self._locked(conn, rating_id, expected_version)
            new = changes.apply(old, now)
            if new is None:
                raise _NoChange(old)
            if isinstance(conn, PgWriteConnection):
                values = (rating_id, new.score, new.comment, _ms(new.updated_at), new.version)
                event = self._record_pg(
                    conn, pg_writes.UPDATE, "updated", old, new, now, audit, values
                )
                if event is None:  # locked above, so not expected: nothing was written
                    raise NotFound(rating_id)
                return WriteResult(new, event)
            self._run.execute(
                conn,
                self._sql.update_rating,
                {
                    "rid": rating_id,
                    "b_score": new.score,
                    "b_comment": new.comment,
                    "b_updated_at": _ms(new.updated_at),
                    "b_version": new.version,
                },
            )
            return WriteResult(new, self._record(conn, "updated", old, new, now, audit))

        try:
            return await self._write(body, driver=True)
        except _NoChange as unchanged:
            return WriteResult(unchanged.rating, None)

    async def delete(
        self,
        rating_id: str,
        expected_version: int | None,
        now: datetime,
        audit: AuditContext | None = None,
    ) -> WriteResult:
        def body(conn: WriteConnection) -> WriteResult:
            old = self._locked(conn, rating_id, expected_version)
            if isinstance(conn, PgWriteConnection):
                event = self._record_pg(
                    conn, pg_writes.DELETE, "deleted", old, None, now, audit, (rating_id,)
                )
                if event is None:  # locked above, so not expected: nothing was written
                    raise NotFound(rating_id)
                return WriteResult(old, event)
            self._run.execute(conn, self._sql.delete_rating, {"rid": rating_id})
            return WriteResult(old, self._record(conn, "deleted", old, None, now, audit))

        return await self._write(body, driver=True)

    # -- reads ----------------------------------------------------------------------------

    async def get(self, rating_id: str) -> Rating:
        row = await self._read_row(self._sql.rating_by_id, {"rid": rating_id})
        if row is None:
            raise NotFound(rating_id)
        return _rating_from_row(row)

    async def list_ratings(
        self, game_id: str | None, user_id: str | None, limit: int, before_id: str | None
    ) -> list[Rating]:
        query = select(ratings).order_by(ratings.c.id.desc()).limit(limit)
        if game_id is not None:
            query = query.where(ratings.c.game_id == game_id)
        if user_id is not None:
            query = query.where(ratings.c.user_id == user_id)
        if before_id is not None:
            query = query.where(ratings.c.id < before_id)
        return await self._read(lambda conn: [_rating_from_row(row) for row in conn.execute(query)])

    async def summary(self, game_id: str) -> GameSummary:
        row = await self._read_row(self._sql.summary, {"key": game_id})
        return _summary_from_row(game_id, row)

    async def top_games(
        self, limit: int, min_count: int, prior_mean: float, prior_weight: float
    ) -> list[GameSummary]:
        count, total = game_summaries.c["count"], game_summaries.c.total
        bayesian = (literal(prior_weight * prior_mean, Float) + cast(total, Float)) / (
            literal(prior_weight, Float) + cast(count, Float)
        )
        query = (
            select(game_summaries)
            .where(count >= max(min_count, 1))
            .order_by(bayesian.desc(), game_summaries.c.game_id)
            .limit(limit)
        )
        return await self._read(
            lambda conn: [_summary_from_row(row.game_id, row) for row in conn.execute(query)]
        )

    # -- event log ------------------------------------------------------------------------

    async def events_after(self, seq: int, limit: int) -> list[RatingEvent]:
        query = select(events).where(events.c.seq > seq).order_by(events.c.seq).limit(limit)
        return await self._read(lambda conn: [_event_from_row(row) for row in conn.execute(query)])

    async def topic_events(self, topic: Topic, since: int, limit: int) -> list[RatingEvent]:
        if topic.kind is TopicKind.GLOBAL:
            query = select(events).where(events.c.seq > since).order_by(events.c.seq)
        elif topic.kind is TopicKind.GAME:
            query = (
                select(events)
                .where(events.c.game_id == topic.key, events.c.game_offset > since)
                .order_by(events.c.game_offset)
            )
        elif topic.kind is TopicKind.USER:
            query = (
                select(events)
                .where(events.c.user_id == topic.key, events.c.user_offset > since)
                .order_by(events.c.user_offset)
            )
        else:
            return []
        query = query.limit(limit)
        return await self._read(lambda conn: [_event_from_row(row) for row in conn.execute(query)])

    async def topic_head(self, topic: Topic) -> int:
        if not topic.has_history:
            return 0
        query = self._sql.head(topic.kind)
        return int(await self._read(lambda conn: conn.scalar(query, {"key": topic.key})) or 0)

    async def topic_position(self, topic: Topic) -> tuple[int, int]:
        # One statement, one snapshot: the global head it returns is at or after the commit of
        # every event up to the topic head it returns.
        if not topic.has_history:
            return 0, await self.topic_head(GLOBAL)
        query = self._sql.positions[topic.kind]
        row = await self._read(lambda conn: conn.execute(query, {"key": topic.key}).one())
        return int(row[0] or 0), int(row[1] or 0)

    async def prune_history(self, keep_per_topic: int, older_than: datetime) -> int:
        game_head = (
            select(game_summaries.c.last_offset)
            .where(game_summaries.c.game_id == events.c.game_id)
            .scalar_subquery()
        )
        user_head = (
            select(user_heads.c.last_offset)
            .where(user_heads.c.user_id == events.c.user_id)
            .scalar_subquery()
        )

        def body(conn: Connection) -> int:
            seq_head = int(conn.scalar(self._sql.global_offset) or 0)
            expired = conn.execute(delete(events).where(events.c.occurred_at < _ms(older_than)))
            outside = conn.execute(
                delete(events).where(
                    and_(
                        events.c.seq <= seq_head - keep_per_topic,
                        events.c.game_offset <= game_head - keep_per_topic,
                        events.c.user_offset <= user_head - keep_per_topic,
                    )
                )
            )
            return int(expired.rowcount or 0) + int(outside.rowcount or 0)

        return await self._write(body)

    # -- revocations ----------------------------------------------------------------------

    async def add_revocation(
        self, revocation: Revocation, audit: AuditContext | None = None
    ) -> None:
        row = {
            "revoked_at": round(revocation.revoked_at * 1000),
            "expires_at": round(revocation.expires_at * 1000),
            "revoked_by": revocation.revoked_by,
            "reason": revocation.reason,
        }
        key = (revocations.c.kind == revocation.kind) & (revocations.c.value == revocation.value)

        def body(conn: Connection) -> None:
            conn.execute(delete(revocations).where(revocations.c.expires_at <= row["revoked_at"]))
            # Portable upsert: the pair is the primary key, and revocations are rare.
            if conn.execute(update(revocations).where(key).values(**row)).rowcount == 0:
                conn.execute(
                    insert(revocations).values(kind=revocation.kind, value=revocation.value, **row)
                )
            if self._audit_chain is not None:
                record = revocation_audit_record(revocation, audit)
                audit_tables.append(conn, self._audit_chain, [record], self._audit_cursor)

        await self._write(body)

    async def revocations(self, now: float) -> list[Revocation]:
        cutoff = round(now * 1000)

        def body(conn: Connection) -> list[Revocation]:
            rows = conn.execute(select(revocations).where(revocations.c.expires_at > cutoff)).all()
            return [
                Revocation(
                    kind=row.kind,
                    value=row.value,
                    revoked_at=row.revoked_at / 1000,
                    expires_at=row.expires_at / 1000,
                    revoked_by=row.revoked_by,
                    reason=row.reason,
                )
                for row in rows
            ]

        return await self._read(body)

    # -- audit log ------------------------------------------------------------------------

    def use_audit(self, chain: AuditChain | None) -> None:
        self._audit_chain = chain

    async def append_audit(self, records: Sequence[AuditRecord]) -> None:
        chain = self._audit_chain
        if chain is None or not records:
            return
        await self._write(
            lambda conn: audit_tables.append(conn, chain, records, self._audit_cursor),
            driver=True,
        )

    async def audit_entries(self, query: AuditQuery) -> list[AuditEntry]:
        return await self._read(lambda conn: audit_tables.entries(conn, query))

    async def audit_head(self) -> AuditHead:
        return await self._read(audit_tables.read_head)

    async def prune_audit(self, older_than_ms: int, record: AuditRecord) -> int:
        chain = self._audit_chain
        if chain is None:
            return 0
        return await self._write(
            lambda conn: audit_tables.prune(conn, chain, older_than_ms, record, self._audit_cursor)
        )
