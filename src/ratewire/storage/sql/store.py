"""Relational store on SQLAlchemy 2 Core (async): SQLite (default), PostgreSQL and MySQL/MariaDB.

Each write is one transaction that takes its locks in one fixed order: the rating row, the
game's summary row (which also holds the game topic's last offset), the user's head row, and
last the single global head row. Because every write ends on the global row, the global
offset (``seq``) is the commit order, and the relay can follow it without gaps; because the
global row is taken last, it is held only for the event insert and the commit.

This module holds the store's lifecycle and its writes; the schema, the dialects' differences,
the group commit and the reads have modules of their own (``schema``, ``dialects``, ...).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar, cast

import orjson
from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from ratewire.audit import AuditChain, AuditContext, AuditRecord
from ratewire.audit.records import rating_audit_record, revocation_audit_record
from ratewire.domain import Rating, RatingChanges, RatingDraft, RatingEvent, SummaryDelta
from ratewire.domain.rating import EventKind
from ratewire.domain.time import epoch_ms
from ratewire.security.revocation import Revocation
from ratewire.storage.base import (
    AlreadyExists,
    NotFound,
    StorageUnavailable,
    VersionMismatch,
    WriteResult,
)
from ratewire.storage.sql.batches import GroupCommit, NoChange, PairTaken
from ratewire.storage.sql.consumers import SqlConsumerStore
from ratewire.storage.sql.dialects import (
    SqliteSynchronous,
    Statements,
    async_url,
    configure_sqlite,
    sqlite_engine,
)
from ratewire.storage.sql.execution import (
    PgWriteConnection,
    PostgresRowReader,
    SqliteRowReader,
    StatementRunner,
    WriteConnection,
)
from ratewire.storage.sql.migrate import (
    SchemaChange,
    SchemaState,
    refuse_if_behind,
    schema_state,
    upgrade,
)
from ratewire.storage.sql.pg_writes import CREATE, DELETE, UPDATE, write_rating
from ratewire.storage.sql.reads import SqlReads
from ratewire.storage.sql.schema import (
    HISTOGRAM_NAMES,
    SCHEMA_VERSION,
    audit_tables,
    events,
    game_summaries,
    metadata,
    rating_from_row,
    revocations,
    seed_and_prove_writable,
    store_meta,
    user_heads,
)
from ratewire.storage.sql.webhooks import SqlWebhookStore
from ratewire.storage.upsert import PairUpsert

#: PostgreSQL connections of the rating writes' own pool: batches never overlap, so one is
#: busy at a time; the second stands in while a lost one is replaced.
PG_WRITE_POOL_SIZE = 2
_T = TypeVar("_T")

__all__ = ["SCHEMA_VERSION", "SqlStore", "async_url", "metadata"]


def _change(old: Rating | None, new: Rating | None) -> tuple[Rating, SummaryDelta]:
    """The rating a write is about (the new one; the old one for a delete), and what it does
    to its game's summary."""
    current = new or old
    assert current is not None
    delta = SummaryDelta.between(
        None if old is None else old.score, None if new is None else new.score
    )
    return current, delta


class SqlStore(SqlReads, PairUpsert):
    """A :class:`~ratewire.storage.base.RatingStore` over SQLite, PostgreSQL or MySQL.

    Every operation is one synchronous function over a SQLAlchemy ``Connection``, written once
    for all three databases. On PostgreSQL and MySQL it runs with ``AsyncConnection.run_sync``
    over asyncpg / asyncmy. On SQLite it runs as a whole in a worker thread with the stdlib
    driver: aiosqlite hops threads on every statement, cursor and fetch (~0.15 ms each, about
    3.5 ms per write); one hop per transaction brings a write to well under 1 ms.
    """

    #: Each lost race means another writer committed in between: three in a row are a 503.
    upsert_attempts = 3
    upsert_gave_up = "upsert of {pair} kept racing; retry"

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        sqlite_synchronous: SqliteSynchronous = "full",
        migrate: bool = True,
    ) -> None:
        self.url = async_url(url)
        #: Upgrade an older schema at start (else refuse, naming ``ratewire db upgrade``).
        self._migrate = migrate
        #: What :meth:`start` did to the schema (None: migrating was off).
        self.schema_change: SchemaChange | None = None
        self._sqlite_synchronous: SqliteSynchronous = sqlite_synchronous
        self.dialect = make_url(self.url).get_backend_name()
        self.epoch = ""
        self._sql = Statements(self.dialect)
        self._audit_chain: AuditChain | None = None
        self._pg_connect_options: dict[str, Any] = {}
        self._async = None
        self._sqlite_writer: Engine | None = None
        self._sqlite_reader = None
        self._sqlite_row_reader = None
        self._pg_row_reader = None
        sqlite_connect: Callable[[], sqlite3.Connection] | None = None
        postgres: Dialect | None = None  # compiles the driver path's statements
        if self.dialect == "sqlite":
            sync_url = make_url(self.url).set(drivername="sqlite")
            # One writer thread and connection (SQLite has one writer at a time; queueing in
            # the executor beats spinning in SQLite's busy handler); readers never block in WAL.
            self._sqlite_writer = sqlite_engine(
                sync_url, sqlite_synchronous, immediate=True, pool_size=1
            )
            self._sqlite_reader = sqlite_engine(
                sync_url, sqlite_synchronous, immediate=False, pool_size=4
            )
            self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="ratewire-sqlite-w")
            self._read_threads = ThreadPoolExecutor(4, thread_name_prefix="ratewire-sqlite-r")
            # The database file and options exactly as SQLAlchemy opens them from the URL.
            args, options = self._sqlite_reader.dialect.create_connect_args(sync_url)
            connect_args: list[Any] = list(args)
            # check_same_thread off: close() closes them from the event loop thread.
            connect_kwargs: dict[str, Any] = {**options, "check_same_thread": False}

            def connect() -> sqlite3.Connection:
                connection: sqlite3.Connection = sqlite3.connect(*connect_args, **connect_kwargs)
                configure_sqlite(connection, sqlite_synchronous)
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
        self._commits = GroupCommit(
            self._run,
            sqlite_writer=self._sqlite_writer,
            sqlite_thread=self._write_thread if self._sqlite_writer is not None else None,
            sqlite_connect=sqlite_connect,
            engine=self._async,
        )
        if sqlite_connect is not None:
            self._sqlite_row_reader = SqliteRowReader(self._run.sqlite, sqlite_connect)
        #: Webhooks and their cursors, in this database (ratewire.webhooks delivers them).
        self.webhooks = SqlWebhookStore(self._read, self._write)
        #: Durable consumers' positions, in this database (ratewire.services.consumers).
        self.consumers = SqlConsumerStore(self._read, self._write)

    # -- running operations ----------------------------------------------------------------

    async def _write(
        self, body: Callable[[Connection], _T], *, driver: bool = False, rating: bool = False
    ) -> _T:
        """Run ``body`` in one write transaction (retried on a deadlock). ``driver``: the body
        touches the connection only through ``self._run``, so on PostgreSQL it may run on
        asyncpg directly (rating writes, whose commits are timed, and audit appends)."""
        try:
            return await self._commits.run(body, driver, timed=rating)
        except IntegrityError:
            raise
        except (OSError, DBAPIError) as exc:
            raise self._unavailable(exc) from exc

    def observe_commits(self, observe: Callable[[str, float], None]) -> None:
        self._commits.observe = observe

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            self.schema_change = await self._prepare_schema()
            await self._write(seed_and_prove_writable)
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
                import asyncpg  # ratewire[postgresql]: checked when the store opens

                self._commits.pg_pool = await asyncpg.create_pool(
                    min_size=0, max_size=PG_WRITE_POOL_SIZE, **self._pg_connect_options
                )
        except StorageUnavailable as exc:
            reason = str(exc).removeprefix(f"{self.dialect}: ")
            safe_url = make_url(self.url).render_as_string(hide_password=True)
            raise StorageUnavailable(f"cannot open {safe_url}: {reason}") from exc
        self.epoch = str(epoch)
        if int(version or 0) > SCHEMA_VERSION:
            raise StorageUnavailable(
                f"{self.dialect}: schema version {version} is newer than this ratewire "
                f"({SCHEMA_VERSION}); upgrade ratewire"
            )

    async def schema_state(self) -> SchemaState:
        """Where the database's schema stands (the store need not be started)."""
        return await self._read(schema_state)

    async def upgrade_schema(self) -> SchemaChange:
        """Create or migrate the schema to this ratewire's, under the migration lock."""
        return await self._write(lambda conn: upgrade(conn, self.dialect))

    async def _prepare_schema(self) -> SchemaChange | None:
        if self._migrate:
            return await self.upgrade_schema()
        refuse_if_behind(await self.schema_state())
        return None

    async def close(self) -> None:
        await self._commits.drain()  # writes already queued are committed and answered first
        self._commits.close()
        if self._async is not None:
            await self._async.dispose()
        if self._pg_row_reader is not None:
            await self._pg_row_reader.close()
        if self._commits.pg_pool is not None:
            await self._commits.pg_pool.close()
        for engine in (self._sqlite_writer, self._sqlite_reader):
            if engine is not None:
                engine.dispose()
        if self._sqlite_writer is not None:
            self._write_thread.shutdown(wait=True)
            self._read_threads.shutdown(wait=True)
        if self._sqlite_row_reader is not None:
            self._sqlite_row_reader.close()

    # -- write steps (run inside one transaction) --------------------------------------------

    def _bump_counter(
        self, conn: WriteConnection, stmt: Any, key: tuple[str, str], values: dict[str, int]
    ) -> int:
        """Add ``values`` to the counters of row ``key`` (creating it); its new last_offset."""
        name, value = key
        if self._sql.returning:
            return int(self._run.scalar(conn, stmt, {name: value, **values}))
        engine_conn = cast(Connection, conn)  # MySQL: no RETURNING, no driver path
        engine_conn.execute(stmt, {name: value, **values})
        query = self._sql.game_offset if name == "game_id" else self._sql.user_offset
        return int(engine_conn.scalar(query, {"key": value}) or 0)

    def _next_seq(self, conn: WriteConnection) -> int:
        if self._sql.returning:
            return int(self._run.scalar(conn, self._sql.bump_global))
        engine_conn = cast(Connection, conn)  # MySQL: no RETURNING, no driver path
        engine_conn.execute(self._sql.bump_global)
        return int(engine_conn.scalar(self._sql.global_offset) or 0)

    def _record(
        self,
        conn: WriteConnection,
        kind: EventKind,
        old: Rating | None,
        new: Rating | None,
        now: datetime,
        audit: AuditContext | None,
    ) -> RatingEvent:
        """Move the counters and append the event (and its audit entry); the rating row is
        already written."""
        current, delta = _change(old, new)
        histogram = dict(zip(HISTOGRAM_NAMES, delta.histogram, strict=True))
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
                "occurred_at": epoch_ms(now),
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
        refused: Exception,
    ) -> RatingEvent:
        """PostgreSQL: the rating row, the counters and the event in one statement
        (``pg_writes``); raises ``refused`` when the rating row was not written (then nothing
        was)."""
        current, delta = _change(old, new)
        data = current.to_wire()
        offsets = write_rating(
            conn, statement, delta, kind, orjson.dumps(data).decode(), epoch_ms(now), rating_values
        )
        if offsets is None:
            raise refused
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
            audit_tables.append(conn, self._audit_chain, [record], self._commits.audit_cursor)
        return RatingEvent(
            seq, kind, current.game_id, current.user_id, game_offset, user_offset, data, now
        )

    def _locked(
        self, conn: WriteConnection, rating_id: str, expected_version: int | None
    ) -> Rating:
        row = self._run.first(conn, self._sql.lock_rating, {"rid": rating_id})
        if row is None:
            raise NotFound(rating_id)
        rating = rating_from_row(row)
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
                    CREATE,
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
                        epoch_ms(rating.created_at),
                        epoch_ms(rating.updated_at),
                        rating.version,
                    ),
                    PairTaken(),
                )
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
                    "created_at": epoch_ms(rating.created_at),
                    "updated_at": epoch_ms(rating.updated_at),
                    "version": rating.version,
                },
            )
            event = self._record(conn, "created", None, rating, now, audit)
            return WriteResult(rating, event, True)

        try:
            return await self._write(body, driver=True, rating=True)
        except (IntegrityError, PairTaken):
            existing = await self._pair_id(draft.game_id, draft.user_id)
            raise AlreadyExists(draft.game_id, draft.user_id, existing) from None

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
                raise NoChange(old)
            if isinstance(conn, PgWriteConnection):
                values = (rating_id, new.score, new.comment, epoch_ms(new.updated_at), new.version)
                # Locked above, so the row is there: NotFound is not expected.
                event = self._record_pg(
                    conn, UPDATE, "updated", old, new, now, audit, values, NotFound(rating_id)
                )
                return WriteResult(new, event)
            self._run.execute(
                conn,
                self._sql.update_rating,
                {
                    "rid": rating_id,
                    "b_score": new.score,
                    "b_comment": new.comment,
                    "b_updated_at": epoch_ms(new.updated_at),
                    "b_version": new.version,
                },
            )
            return WriteResult(new, self._record(conn, "updated", old, new, now, audit))

        try:
            return await self._write(body, driver=True, rating=True)
        except NoChange as unchanged:
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
                    conn,
                    DELETE,
                    "deleted",
                    old,
                    None,
                    now,
                    audit,
                    (rating_id,),
                    NotFound(rating_id),
                )
                return WriteResult(old, event)
            self._run.execute(conn, self._sql.delete_rating, {"rid": rating_id})
            return WriteResult(old, self._record(conn, "deleted", old, None, now, audit))

        return await self._write(body, driver=True, rating=True)

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
            expired = conn.execute(
                delete(events).where(events.c.occurred_at < epoch_ms(older_than))
            )
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
                audit_tables.append(conn, self._audit_chain, [record], self._commits.audit_cursor)

        await self._write(body)

    # -- audit log ------------------------------------------------------------------------

    def use_audit(self, chain: AuditChain | None) -> None:
        self._audit_chain = chain

    async def append_audit(self, records: Sequence[AuditRecord]) -> None:
        chain = self._audit_chain
        if chain is None or not records:
            return
        await self._write(
            lambda conn: audit_tables.append(conn, chain, records, self._commits.audit_cursor),
            driver=True,
        )

    async def prune_audit(self, older_than_ms: int, record: AuditRecord) -> int:
        chain = self._audit_chain
        if chain is None:
            return 0
        return await self._write(
            lambda conn: audit_tables.prune(
                conn, chain, older_than_ms, record, self._commits.audit_cursor
            )
        )
