"""What differs between SQLite, PostgreSQL and MySQL/MariaDB: drivers, the prebuilt portable
statements (upserts, RETURNING or not), SQLite's connection set-up, and how each database's
errors are told apart (deadlocks, rejected data, a lost connection)."""

from __future__ import annotations

import sqlite3
from typing import Any, Literal

from sqlalchemy import Table, bindparam, create_engine, delete, event, insert, select, update
from sqlalchemy.dialects import mysql as mysql_dialect
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from ratewire.domain import TopicKind
from ratewire.storage.sql.checkpoints import SAFETY_NET_PAGES
from ratewire.storage.sql.schema import (
    HISTOGRAM,
    events,
    game_summaries,
    global_head,
    ratings,
    user_heads,
)

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


class Statements:
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
            ["count", "total", *(c.name for c in HISTOGRAM), "last_offset"],
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


def is_deadlock(exc: DBAPIError) -> bool:
    code = str(getattr(exc.orig, "sqlstate", "") or getattr(exc.orig, "args", [""])[0])
    return code in ("40P01", "1213")  # PostgreSQL deadlock_detected, MySQL ER_LOCK_DEADLOCK


def rejected_class(exc: BaseException) -> str | None:
    """The SQLSTATE class of a statement PostgreSQL rejected while its connection stays
    usable (data, constraint, transaction rollback); None for anything else."""
    state = str(getattr(getattr(exc, "orig", None), "sqlstate", "") or "")
    return state[:2] if state[:2] in ("22", "23", "40") else None


#: SQLSTATE classes that point at one write's own data (22: data exception, 23: integrity).
WRITE_AT_FAULT = ("22", "23")


def driver_reason(exc: BaseException) -> str:
    """The driver's own words, without SQLAlchemy's statement dump and doc link."""
    original = getattr(exc, "orig", None) or exc
    return (
        str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
    )


SqliteSynchronous = Literal["full", "normal"]


def configure_sqlite(connection: sqlite3.Connection, synchronous: SqliteSynchronous) -> None:
    """What every connection to a SQLite store runs first."""
    connection.isolation_level = None  # we issue BEGIN ourselves
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a 2xx answer means the rating is on disk, even across a power cut. NORMAL (WAL):
    # the commit is in the WAL file, so it survives the process dying, not the machine.
    cursor.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
    cursor.execute("PRAGMA busy_timeout=10000")
    # The store checkpoints in the background (checkpoints.py); a commit only as a safety net.
    cursor.execute(f"PRAGMA wal_autocheckpoint={SAFETY_NET_PAGES}")
    cursor.close()


def sqlite_engine(
    url: Any, synchronous: SqliteSynchronous, *, immediate: bool, pool_size: int
) -> Engine:
    """A synchronous engine on the SQLite file: ``immediate`` for the one writer (each
    transaction takes the write lock as it begins), else a reader in autocommit."""
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        connect_args={"check_same_thread": False},  # pooled across the executor's threads
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        configure_sqlite(dbapi_connection, synchronous)

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # Readers run in autocommit: in WAL mode each statement reads one snapshot.
        if immediate:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
