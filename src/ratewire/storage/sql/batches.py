"""The SQL stores' write transactions: group commit, savepoints, and the retries.

One batch at a time takes every write queued while the previous one ran and commits them in
one transaction: one BEGIN, one fsync and one hold of the global head row for the whole
batch. Each caller is answered only after that commit; bodies run in queue order, so offsets
stay in commit order. Batches never overlap, so they cannot deadlock each other (batches of
two instances sharing a database can: the victim's writes run again).

A write body is a synchronous function of the transaction's connection, written once for
every database. On SQLite the whole batch runs in the writer thread on the stdlib driver (the
rating writes and audit appends on a connection of their own with no SQLAlchemy in between:
``execution.SqliteWriteConnection``); on PostgreSQL on asyncpg, the body in a greenlet
(``execution.PgWriteConnection``); on MySQL/MariaDB through SQLAlchemy's async engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from ratewire.domain import Rating
from ratewire.storage.base import NotFound, VersionMismatch
from ratewire.storage.sql.audit import AuditCursor
from ratewire.storage.sql.checkpoints import IdleCheckpoints
from ratewire.storage.sql.dialects import WRITE_AT_FAULT, is_deadlock, rejected_class
from ratewire.storage.sql.execution import (
    ASYNCPG_ERRORS,
    PgWriteConnection,
    PostgresRowReader,
    SqliteWriteConnection,
    StatementRunner,
    WriteConnection,
    asyncpg_error,
    wrapped_sqlite_error,
)
from ratewire.storage.sql.schema import audit_tables

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("ratewire.storage")
GROUP_COMMIT_MAX = 64  # writes per transaction at most
_T = TypeVar("_T")
#: observe(part, seconds) for each write: its wait in the queue, its batch's transaction, and
#: the loop's wake-up after it (ratewire.observability.latency.COMMIT_PARTS).
ObserveCommit = Callable[[str, float], None]


class PairTaken(Exception):
    """A create found the game/user pair rated already (PostgreSQL's statement wrote
    nothing)."""


class NoChange(Exception):
    """Raised inside a write transaction to roll it back when the write changes nothing."""

    def __init__(self, rating: Rating) -> None:
        self.rating = rating


#: Failures that leave a PostgreSQL write connection usable (the transaction rolls back).
_DEFINITE = (IntegrityError, NoChange, PairTaken, NotFound, VersionMismatch)
#: What a write body raises from a check it makes before writing anything: the batch's
#: transaction goes on without it, savepoint or not.
_BEFORE_WRITING = (NoChange, PairTaken, NotFound, VersionMismatch)


class GroupCommit:
    """Runs one store's write bodies in group-commit transactions (see the module's
    docstring). The bodies queued with ``driver=True`` run on the driver: on SQLite on the
    connection ``sqlite_connect`` opens (in the writer thread), on PostgreSQL on ``pg_pool``
    once it is set."""

    def __init__(
        self,
        run: StatementRunner,
        *,
        sqlite_writer: Engine | None = None,
        sqlite_thread: ThreadPoolExecutor | None = None,
        sqlite_connect: Callable[[], sqlite3.Connection] | None = None,
        engine: AsyncEngine | None = None,
    ) -> None:
        self._run = run
        self._sqlite_writer = sqlite_writer
        self._sqlite_thread = sqlite_thread
        self._sqlite_connect = sqlite_connect
        #: The driver path's SQLite connection, opened by the first batch that needs it.
        self._sqlite_db: sqlite3.Connection | None = None
        #: When the writer thread copies SQLite's log into the database (None: not SQLite).
        self.checkpoints = IdleCheckpoints() if sqlite_connect is not None else None
        self._engine = engine
        self.pg_pool: asyncpg.Pool | None = None
        #: The chain's head within the running transaction (bodies seal their entries on it).
        self.audit_cursor = AuditCursor(run)
        self._audit_head_written: tuple[int, str] | None = None
        # (body, its caller's future, whether the body runs on the driver path, when it was
        # queued: 0.0 if it is not timed)
        self._queued: list[tuple[Callable[[Any], Any], asyncio.Future[Any], bool, float]] = []
        #: Where each write's commit parts are reported (None: not timed).
        self.observe: ObserveCommit | None = None
        #: perf_counter() when the writer thread's last transaction began and ended.
        self._transaction_times = (0.0, 0.0)
        self._deadlock_retries: dict[asyncio.Future[Any], int] = {}
        self._batcher: asyncio.Task[None] | None = None

    async def run(self, body: Callable[[Any], _T], driver: bool = False, timed: bool = False) -> _T:
        """Queue ``body`` for the next write transaction and wait for its commit; its result,
        or what it raised. ``driver``: on PostgreSQL, run it on asyncpg. ``timed``: report its
        commit's parts to :attr:`observe`."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        on_driver = driver and (self.pg_pool is not None or self._sqlite_connect is not None)
        self._queued.append((body, done, on_driver, time.perf_counter() if timed else 0.0))
        if self._batcher is None or self._batcher.done():
            self._batcher = loop.create_task(self._commit_batches())
        result: _T = await done
        return result

    async def drain(self) -> None:
        """Wait until the writes already queued are committed and answered."""
        if self._batcher is not None:
            await self._batcher

    async def _commit_batches(self) -> None:
        while True:
            await self._commit_queued()
            if self.checkpoints is None or not self.checkpoints.due(idle=True):
                return
            # Nobody is waiting: a write queued meanwhile runs right after the copy.
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._sqlite_thread, self._checkpoint_on_writer)
        except sqlite3.Error as exc:
            # The commits' safety net still bounds the log; say why it grows.
            log.warning("WAL checkpoint failed: %s", exc)

    def _checkpoint_on_writer(self) -> None:
        assert self.checkpoints is not None
        self.checkpoints.run(self._sqlite_connection())

    def _sqlite_connection(self) -> sqlite3.Connection:
        db = self._sqlite_db
        if db is None:
            assert self._sqlite_connect is not None
            db = self._sqlite_db = self._sqlite_connect()
        return db

    async def _commit_queued(self) -> None:
        while self._queued:
            if self.checkpoints is not None and self.checkpoints.due(idle=False):
                await self._checkpoint()
            # One kind per transaction: the driver's path or the engine's.
            driver = self._queued[0][2]
            size = 1
            while (
                size < min(GROUP_COMMIT_MAX, len(self._queued)) and self._queued[size][2] == driver
            ):
                size += 1
            batch = self._queued[:size]
            del self._queued[:size]
            started = time.perf_counter()
            self._transaction_times = (started, started)
            try:
                outcomes = await self._run_batch([body for body, _, _, _ in batch], driver)
            except Exception as exc:  # nothing of the batch is stored (for one write: its error)
                outcomes = [(False, exc)] * len(batch)
            if self.observe is not None:
                self._observe_parts(batch, started)
            retry = []
            for (body, done, _, _), (succeeded, value) in zip(batch, outcomes, strict=True):
                if done.done():
                    continue  # the caller went away; its write still committed (or not)
                if succeeded:
                    done.set_result(value)
                elif _deadlocked(value) and self._deadlock_retries.get(done, 0) < 5:
                    # Batches of two instances can lock game rows in opposite orders; the
                    # victim's write rolled back to its savepoint: run it again, first.
                    self._deadlock_retries[done] = self._deadlock_retries.get(done, 0) + 1
                    retry.append((body, done, driver, 0.0))  # timed once, the first time
                else:
                    self._deadlock_retries.pop(done, None)
                    done.set_exception(value)
            self._queued[:0] = retry
            for _, done, _, _ in batch:
                if done.done():
                    self._deadlock_retries.pop(done, None)

    def _observe_parts(self, batch: list[tuple[Any, Any, bool, float]], started: float) -> None:
        """Report each write's queue wait, its batch's transaction and the wake-up after it.
        On a writer thread the transaction is the thread's own span and the wake-up the time
        until this task ran again; on the loop (PostgreSQL, MariaDB) the wake-up is in the
        transaction's span."""
        assert self.observe is not None
        resumed = time.perf_counter()
        began, ended = self._transaction_times
        if ended <= began:  # not on a writer thread
            began, ended = started, resumed
        observe = self.observe
        for _, _, _, queued_at in batch:
            if queued_at:
                observe("commit_queue", started - queued_at)
                observe("commit_transaction", ended - began)
                observe("commit_wake", resumed - ended)

    async def _run_batch(
        self, bodies: list[Callable[[Any], Any]], driver: bool = False
    ) -> list[tuple[bool, Any]]:
        if driver and self.pg_pool is not None:
            return await self._run_pg_batch(self.pg_pool, bodies)
        loop = asyncio.get_running_loop()
        if driver and self._sqlite_connect is not None:
            return await loop.run_in_executor(
                self._sqlite_thread, self._sqlite_driver_transaction, bodies
            )
        if self._sqlite_writer is not None:
            engine = self._sqlite_writer

            def transaction() -> list[tuple[bool, Any]]:
                began = time.perf_counter()
                with engine.begin() as conn:
                    outcomes = self._apply(conn, bodies)
                if self.checkpoints is not None:
                    self.checkpoints.committed()
                self._transaction_times = (began, time.perf_counter())
                return outcomes

            return await loop.run_in_executor(self._sqlite_thread, transaction)
        assert self._engine is not None
        for attempt in range(5):
            try:
                async with self._engine.begin() as conn:
                    return await conn.run_sync(self._apply, bodies)
            except DBAPIError as exc:
                # A deadlock victim (other writers of the same database) retries the whole
                # transaction, the remedy both databases document.
                if not is_deadlock(exc) or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _sqlite_driver_transaction(
        self, bodies: list[Callable[[Any], Any]]
    ) -> list[tuple[bool, Any]]:
        """One write transaction on the writer thread's own stdlib connection. Through
        SQLAlchemy's engine (pool checkout and return, the ``begin`` event issuing ``BEGIN
        IMMEDIATE``, the commit's bookkeeping) the same transaction cost about 0.2 ms more of
        the writer thread, every one of them on the write's path (see docs/benchmarks.md)."""
        db = self._sqlite_connection()
        began = time.perf_counter()
        statement = "BEGIN IMMEDIATE"
        try:
            db.execute(statement)
            try:
                outcomes = self._apply(SqliteWriteConnection(db), bodies)
                statement = "COMMIT"
                db.execute(statement)
                assert self.checkpoints is not None
                self.checkpoints.committed()
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise wrapped_sqlite_error(statement, (), exc) from exc
        self._transaction_times = (began, time.perf_counter())
        return outcomes

    def close(self) -> None:
        """Close the driver path's SQLite connection (after :meth:`drain`)."""
        if self._sqlite_db is not None:
            self._sqlite_db.close()
            self._sqlite_db = None

    async def _run_pg_batch(
        self, pool: asyncpg.Pool, bodies: list[Callable[[Any], Any]]
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
                        if not isinstance(exc, _DEFINITE) and rejected_class(exc) is None:
                            # Whatever state a failure left it in (a lost server process can
                            # leave it mid-operation), this connection is not handed out
                            # again: the pool opens a new one.
                            connection.terminate()
                        raise
            except ASYNCPG_ERRORS as exc:  # acquiring, BEGIN, COMMIT or the rollback
                error = asyncpg_error("COMMIT", None, exc)
                if not is_deadlock(error) or attempt == 4:
                    raise error from exc
            except DBAPIError as exc:
                # A statement failed, so the transaction rolled back and nothing of the batch
                # is stored: running it again is safe (unlike after a failed COMMIT).
                if rejected_class(exc) in WRITE_AT_FAULT and not savepoints and len(bodies) > 1:
                    savepoints = True
                    continue
                # A deadlock victim (other writers of the same database) retries the whole
                # transaction, the remedy the database documents.
                if not is_deadlock(exc) or attempt == 4:
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
        # Batches never overlap, so one cursor at a time (see audit.AuditCursor).
        cursor = self.audit_cursor = AuditCursor(self._run, self._audit_head_written)
        if len(bodies) == 1:  # alone, the transaction is the unit: its error rolls it back
            outcome = bodies[0](conn)
            self._flush_audit(conn, cursor)
            return [(True, outcome)]
        outcomes: list[tuple[bool, Any]] = []
        for body in bodies:
            before = cursor.snapshot()
            try:
                with self._run.savepoint(conn) if savepoints else contextlib.nullcontext():
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


def _deadlocked(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and is_deadlock(exc)
