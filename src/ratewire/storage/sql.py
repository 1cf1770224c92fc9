"""Relational store on SQLAlchemy 2 Core (async): SQLite (default), PostgreSQL and MySQL/MariaDB.

Each write is one transaction that takes its locks in one fixed order: the rating row, the
game's summary row (which also holds the game topic's last offset), the user's head row, and
last the single global head row. Because every write ends on the global row, the global
offset (``seq``) is the commit order, and the relay can follow it without gaps; because the
global row is taken last, it is held only for the event insert and the commit.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

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
    cast,
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
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

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
from ratewire.storage.base import (
    AlreadyExists,
    NotFound,
    StorageUnavailable,
    VersionMismatch,
    WriteResult,
)

SCHEMA_VERSION = 1
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

_HISTOGRAM = [game_summaries.c[f"h{score}"] for score in range(1, 6)]
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
    return Rating(
        id=row.id,
        game_id=row.game_id,
        user_id=row.user_id,
        score=int(row.score),
        comment=row.comment,
        created_at=_from_ms(row.created_at),
        updated_at=_from_ms(row.updated_at),
        version=int(row.version),
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
    if row is None:
        return GameSummary.empty(game_id)
    histogram = (int(row.h1), int(row.h2), int(row.h3), int(row.h4), int(row.h5))
    return GameSummary(game_id, int(row.count), int(row.total), histogram, int(row.last_offset))


class _NoChange(Exception):
    """Raised inside a write transaction to roll it back when the write changes nothing."""

    def __init__(self, rating: Rating) -> None:
        self.rating = rating


class SqlStore:
    """A :class:`~ratewire.storage.base.RatingStore` over SQLite, PostgreSQL or MySQL."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = async_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        self.epoch = ""
        if self.dialect == "sqlite":
            # SQLite has one writer at a time: a single writer connection that opens every
            # transaction with BEGIN IMMEDIATE queues writers here, in asyncio, instead of in
            # SQLite's busy handler; readers use their own connections and never block on WAL.
            self._writer = self._sqlite_engine(immediate=True, pool_size=1)
            self._reader = self._sqlite_engine(immediate=False, pool_size=pool_size)
        else:
            # READ COMMITTED: each statement sees what committed before it, which the
            # lock-then-read steps of a write rely on (MySQL defaults to REPEATABLE READ).
            self._writer = create_async_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                isolation_level="READ COMMITTED",
            )
            self._reader = self._writer

    def _sqlite_engine(self, *, immediate: bool, pool_size: int) -> AsyncEngine:
        engine = create_async_engine(self.url, pool_size=pool_size, max_overflow=0)

        @event.listens_for(engine.sync_engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # FULL: a 2xx answer means the rating is on disk, even across a power cut.
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            async with self._writer.begin() as conn:
                await conn.run_sync(metadata.create_all, checkfirst=True)
            async with self._writer.begin() as conn:
                await self._seed(conn)
            async with self._reader.connect() as conn:
                version = await conn.scalar(
                    select(store_meta.c.value).where(store_meta.c.key == "schema_version")
                )
                self.epoch = str(
                    await conn.scalar(select(store_meta.c.value).where(store_meta.c.key == "epoch"))
                )
        except (OSError, DBAPIError) as exc:
            raise StorageUnavailable(
                f"{self.dialect}: cannot open {self._safe_url()}: {exc}"
            ) from exc
        if int(version or 0) > SCHEMA_VERSION:
            raise StorageUnavailable(
                f"{self.dialect}: schema version {version} is newer than this ratewire "
                f"({SCHEMA_VERSION}); upgrade ratewire"
            )

    async def _seed(self, conn: AsyncConnection) -> None:
        # Several instances may start at once against one database: seed rows are inserted
        # only where missing, and a lost race is harmless.
        for table, row in (
            (store_meta, {"key": "schema_version", "value": str(SCHEMA_VERSION)}),
            (store_meta, {"key": "epoch", "value": secrets.token_hex(8)}),
            (global_head, {"id": 1, "last_offset": 0}),
        ):
            key = next(iter(row))
            exists = await conn.scalar(select(func.count()).where(table.c[key] == row[key]))
            if not exists:
                try:
                    async with conn.begin_nested():
                        await conn.execute(insert(table).values(**row))
                except IntegrityError:
                    pass

    def _safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    async def close(self) -> None:
        await self._writer.dispose()
        if self._reader is not self._writer:
            await self._reader.dispose()

    async def ping(self) -> None:
        try:
            async with self._reader.connect() as conn:
                await conn.scalar(select(literal(1)))
        except (OSError, DBAPIError) as exc:
            raise StorageUnavailable(f"{self.dialect}: {exc}") from exc

    # -- writes ---------------------------------------------------------------------------

    async def _write(self, body: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        for attempt in range(5):
            try:
                async with self._writer.begin() as conn:
                    return await body(conn)
            except OperationalError as exc:
                # MySQL may pick a deadlock victim under gap locks; the lock order makes it
                # rare, and retrying the whole transaction is the documented remedy.
                if self.dialect != "mysql" or "1213" not in str(exc.orig) or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    async def _upsert_returning(
        self,
        conn: AsyncConnection,
        table: Table,
        key: dict[str, Any],
        first: dict[str, Any],
        increments: dict[str, Any],
    ) -> int:
        """Insert ``key + first`` or add ``increments`` to the existing row; return last_offset."""
        values = {**key, **first}
        if self.dialect == "mysql":
            stmt = mysql_dialect.insert(table).values(**values)
            await conn.execute(
                stmt.on_duplicate_key_update(
                    **{name: table.c[name] + amount for name, amount in increments.items()}
                )
            )
            key_col, key_value = next(iter(key.items()))
            offset = await conn.scalar(
                select(table.c.last_offset).where(table.c[key_col] == key_value)
            )
            return int(offset or 0)
        dialect_insert = (
            pg_dialect.insert if self.dialect == "postgresql" else sqlite_dialect.insert
        )
        upsert = (
            dialect_insert(table)
            .values(**values)
            .on_conflict_do_update(
                index_elements=list(key),
                set_={name: table.c[name] + amount for name, amount in increments.items()},
            )
            .returning(table.c.last_offset)
        )
        return int((await conn.execute(upsert)).scalar_one())

    async def _next_seq(self, conn: AsyncConnection) -> int:
        bump = (
            update(global_head)
            .where(global_head.c.id == 1)
            .values(last_offset=global_head.c.last_offset + 1)
        )
        if self.dialect == "mysql":
            await conn.execute(bump)
            seq = await conn.scalar(select(global_head.c.last_offset).where(global_head.c.id == 1))
            return int(seq or 0)
        return int((await conn.execute(bump.returning(global_head.c.last_offset))).scalar_one())

    async def _record(
        self,
        conn: AsyncConnection,
        kind: EventKind,
        old: Rating | None,
        new: Rating | None,
        now: datetime,
    ) -> RatingEvent:
        """Move the counters and append the event; the rating row is already written."""
        current = new or old
        assert current is not None
        delta = SummaryDelta.between(
            None if old is None else old.score, None if new is None else new.score
        )
        histogram = dict(zip((c.name for c in _HISTOGRAM), delta.histogram, strict=True))
        game_offset = await self._upsert_returning(
            conn,
            game_summaries,
            {"game_id": current.game_id},
            {"count": delta.count, "total": delta.total, **histogram, "last_offset": 1},
            {"count": delta.count, "total": delta.total, **histogram, "last_offset": 1},
        )
        user_offset = await self._upsert_returning(
            conn, user_heads, {"user_id": current.user_id}, {"last_offset": 1}, {"last_offset": 1}
        )
        seq = await self._next_seq(conn)
        data = current.to_wire()
        await conn.execute(
            insert(events).values(
                seq=seq,
                kind=kind,
                game_id=current.game_id,
                user_id=current.user_id,
                game_offset=game_offset,
                user_offset=user_offset,
                payload=orjson.dumps(data).decode(),
                occurred_at=_ms(now),
            )
        )
        return RatingEvent(
            seq, kind, current.game_id, current.user_id, game_offset, user_offset, data, now
        )

    async def _locked(
        self, conn: AsyncConnection, rating_id: str, expected_version: int | None
    ) -> Rating:
        row = (
            await conn.execute(select(ratings).where(ratings.c.id == rating_id).with_for_update())
        ).first()
        if row is None:
            raise NotFound(rating_id)
        rating = _rating_from_row(row)
        if expected_version is not None and expected_version != rating.version:
            raise VersionMismatch(rating_id, expected_version, rating.version)
        return rating

    async def _existing_id(self, conn: AsyncConnection, game_id: str, user_id: str) -> str | None:
        found = await conn.scalar(
            select(ratings.c.id).where(ratings.c.game_id == game_id, ratings.c.user_id == user_id)
        )
        return None if found is None else str(found)

    async def create(self, draft: RatingDraft, now: datetime) -> WriteResult:
        rating = Rating.new(draft, now)

        async def body(conn: AsyncConnection) -> WriteResult:
            await self._insert_rating(conn, rating)
            return WriteResult(rating, await self._record(conn, "created", None, rating, now), True)

        try:
            return await self._write(body)
        except IntegrityError:
            async with self._reader.connect() as conn:
                existing = await self._existing_id(conn, draft.game_id, draft.user_id)
            raise AlreadyExists(draft.game_id, draft.user_id, existing) from None

    async def _insert_rating(self, conn: AsyncConnection, rating: Rating) -> None:
        await conn.execute(
            insert(ratings).values(
                id=rating.id,
                game_id=rating.game_id,
                user_id=rating.user_id,
                score=rating.score,
                comment=rating.comment,
                created_at=_ms(rating.created_at),
                updated_at=_ms(rating.updated_at),
                version=rating.version,
            )
        )

    async def upsert(
        self, draft: RatingDraft, expected_version: int | None, now: datetime
    ) -> WriteResult:
        changes = RatingChanges(
            score=draft.score, comment=draft.comment, clear_comment=draft.comment is None
        )
        for _ in range(3):
            async with self._reader.connect() as conn:
                existing_id = await self._existing_id(conn, draft.game_id, draft.user_id)
            if existing_id is None:
                if expected_version is not None:
                    raise VersionMismatch(
                        f"{draft.game_id}/{draft.user_id}", expected_version, None
                    )
                try:
                    return await self.create(draft, now)
                except AlreadyExists:
                    continue  # a concurrent writer created it first: update that one instead
            try:
                return await self.update(existing_id, changes, expected_version, now)
            except NotFound:
                continue  # deleted between the lookup and the update: create it again
        raise StorageUnavailable(f"upsert of {draft.game_id}/{draft.user_id} kept racing; retry")

    async def update(
        self, rating_id: str, changes: RatingChanges, expected_version: int | None, now: datetime
    ) -> WriteResult:
        async def body(conn: AsyncConnection) -> WriteResult:
            old = await self._locked(conn, rating_id, expected_version)
            new = changes.apply(old, now)
            if new is None:
                raise _NoChange(old)
            await conn.execute(
                update(ratings)
                .where(ratings.c.id == rating_id)
                .values(
                    score=new.score,
                    comment=new.comment,
                    updated_at=_ms(new.updated_at),
                    version=new.version,
                )
            )
            return WriteResult(new, await self._record(conn, "updated", old, new, now))

        try:
            return await self._write(body)
        except _NoChange as unchanged:
            return WriteResult(unchanged.rating, None)

    async def delete(
        self, rating_id: str, expected_version: int | None, now: datetime
    ) -> WriteResult:
        async def body(conn: AsyncConnection) -> WriteResult:
            old = await self._locked(conn, rating_id, expected_version)
            await conn.execute(delete(ratings).where(ratings.c.id == rating_id))
            return WriteResult(old, await self._record(conn, "deleted", old, None, now))

        return await self._write(body)

    # -- reads ----------------------------------------------------------------------------

    async def get(self, rating_id: str) -> Rating:
        async with self._reader.connect() as conn:
            row = (await conn.execute(select(ratings).where(ratings.c.id == rating_id))).first()
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
        async with self._reader.connect() as conn:
            return [_rating_from_row(row) for row in await conn.execute(query)]

    async def summary(self, game_id: str) -> GameSummary:
        async with self._reader.connect() as conn:
            row = (
                await conn.execute(
                    select(game_summaries).where(game_summaries.c.game_id == game_id)
                )
            ).first()
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
        async with self._reader.connect() as conn:
            return [_summary_from_row(row.game_id, row) for row in await conn.execute(query)]

    # -- event log ------------------------------------------------------------------------

    async def events_after(self, seq: int, limit: int) -> list[RatingEvent]:
        query = select(events).where(events.c.seq > seq).order_by(events.c.seq).limit(limit)
        async with self._reader.connect() as conn:
            return [_event_from_row(row) for row in await conn.execute(query)]

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
        async with self._reader.connect() as conn:
            return [_event_from_row(row) for row in await conn.execute(query.limit(limit))]

    async def topic_head(self, topic: Topic) -> int:
        if topic.kind is TopicKind.GLOBAL:
            query = select(global_head.c.last_offset).where(global_head.c.id == 1)
        elif topic.kind is TopicKind.GAME:
            query = select(game_summaries.c.last_offset).where(
                game_summaries.c.game_id == topic.key
            )
        elif topic.kind is TopicKind.USER:
            query = select(user_heads.c.last_offset).where(user_heads.c.user_id == topic.key)
        else:
            return 0
        async with self._reader.connect() as conn:
            return int(await conn.scalar(query) or 0)

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
        async with self._writer.begin() as conn:
            seq_head = int(
                await conn.scalar(select(global_head.c.last_offset).where(global_head.c.id == 1))
                or 0
            )
            expired = await conn.execute(
                delete(events).where(events.c.occurred_at < _ms(older_than))
            )
            outside = await conn.execute(
                delete(events).where(
                    and_(
                        events.c.seq <= seq_head - keep_per_topic,
                        events.c.game_offset <= game_head - keep_per_topic,
                        events.c.user_offset <= user_head - keep_per_topic,
                    )
                )
            )
        return int(expired.rowcount or 0) + int(outside.rowcount or 0)
