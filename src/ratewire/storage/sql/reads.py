"""The SQL stores' reads: ratings, summaries, the event log, revocations and the audit log.

Single-row reads a request waits on go straight to the driver (``execution.SqliteRowReader``,
``PostgresRowReader``); the rest run as one function over a SQLAlchemy ``Connection``, on
SQLite in a reader thread (WAL: readers never block the writer), elsewhere through the async
engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Float, cast, literal, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from ratewire.audit import AuditEntry, AuditQuery
from ratewire.audit.entry import AuditHead
from ratewire.domain import GameSummary, Rating, RatingEvent, Topic, TopicKind
from ratewire.security.revocation import Revocation
from ratewire.storage.base import NotFound, StorageUnavailable
from ratewire.storage.sql.dialects import Statements, driver_reason
from ratewire.storage.sql.execution import PostgresRowReader, SqliteRowReader
from ratewire.storage.sql.schema import (
    audit_tables,
    event_from_row,
    events,
    game_summaries,
    rating_from_row,
    ratings,
    revocations,
    summary_from_row,
)

log = logging.getLogger("ratewire.storage")
GLOBAL = Topic(TopicKind.GLOBAL)
_T = TypeVar("_T")


class SqlReads:
    """The read half of :class:`~ratewire.storage.sql.SqlStore`, which sets up the
    connections declared here."""

    dialect: str
    _sql: Statements
    _async: AsyncEngine | None
    _sqlite_reader: Engine | None
    _read_threads: ThreadPoolExecutor
    _sqlite_row_reader: SqliteRowReader | None
    _pg_row_reader: PostgresRowReader | None

    def _unavailable(self, exc: BaseException) -> StorageUnavailable:
        # Callers get the driver's one-line reason (a 503 over REST); the traceback is kept
        # for debug logging only: an unreachable database is not a bug to trace.
        reason = driver_reason(exc)
        log.warning("%s storage error: %s", self.dialect, reason)
        log.debug("%s storage error", self.dialect, exc_info=exc)
        return StorageUnavailable(f"{self.dialect}: {reason}")

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

    async def ping(self) -> None:
        await self._read(lambda conn: conn.scalar(select(literal(1))))

    # -- reads ----------------------------------------------------------------------------

    async def get(self, rating_id: str) -> Rating:
        row = await self._read_row(self._sql.rating_by_id, {"rid": rating_id})
        if row is None:
            raise NotFound(rating_id)
        return rating_from_row(row)

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
        return await self._read(lambda conn: [rating_from_row(row) for row in conn.execute(query)])

    async def summary(self, game_id: str) -> GameSummary:
        row = await self._read_row(self._sql.summary, {"key": game_id})
        return summary_from_row(game_id, row)

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
            lambda conn: [summary_from_row(row.game_id, row) for row in conn.execute(query)]
        )

    # -- event log ------------------------------------------------------------------------

    async def events_after(self, seq: int, limit: int) -> list[RatingEvent]:
        query = select(events).where(events.c.seq > seq).order_by(events.c.seq).limit(limit)
        return await self._read(lambda conn: [event_from_row(row) for row in conn.execute(query)])

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
        return await self._read(lambda conn: [event_from_row(row) for row in conn.execute(query)])

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

    async def audit_entries(self, query: AuditQuery) -> list[AuditEntry]:
        return await self._read(lambda conn: audit_tables.entries(conn, query))

    async def audit_head(self) -> AuditHead:
        return await self._read(audit_tables.read_head)
