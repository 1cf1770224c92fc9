"""The SQL stores' schema: every table, its indexes, and rows turned back into domain objects.

Times are epoch milliseconds in BIGINT columns: portable and free of time zones. A game's
summary row also holds its topic's last offset, and the user and global heads hold theirs,
so a write's offsets come from the rows it already locks.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ratewire.domain import GameSummary, Rating, RatingEvent, from_epoch_ms
from ratewire.storage.sql.audit import AuditTables
from ratewire.storage.sql.types import SQLITE_ROWID, SQLITE_ROWID_SMALL

#: Kept in ``ratewire_meta`` (set by each migration that changes the schema, see
#: ``migrations/``): a ratewire from before migrations (0.1.0) refuses to open a newer schema.
SCHEMA_VERSION = 5

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
    sqlite_with_rowid=False,  # see storage.sql.types
)

user_heads = Table(
    "user_heads",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("last_offset", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

global_head = Table(
    "global_head",
    metadata,
    Column("id", SQLITE_ROWID_SMALL, primary_key=True, autoincrement=False),
    Column("last_offset", BigInteger, nullable=False),
)

events = Table(
    "rating_events",
    metadata,
    Column("seq", SQLITE_ROWID, primary_key=True, autoincrement=False),
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

HISTOGRAM = [game_summaries.c[f"h{score}"] for score in range(1, 6)]
HISTOGRAM_NAMES = tuple(column.name for column in HISTOGRAM)


def rating_from_row(row: Any) -> Rating:
    """A ``select(ratings)`` row (a SQLAlchemy row or the driver's tuple: by position)."""
    rating_id, game_id, user_id, score, comment, created_at, updated_at, version = row
    return Rating(
        id=rating_id,
        game_id=game_id,
        user_id=user_id,
        score=int(score),
        comment=comment,
        created_at=from_epoch_ms(created_at),
        updated_at=from_epoch_ms(updated_at),
        version=int(version),
    )


def event_from_row(row: Any) -> RatingEvent:
    return RatingEvent(
        seq=int(row.seq),
        kind=row.kind,
        game_id=row.game_id,
        user_id=row.user_id,
        game_offset=int(row.game_offset),
        user_offset=int(row.user_offset),
        data=orjson.loads(row.payload),
        occurred_at=from_epoch_ms(row.occurred_at),
    )


def summary_from_row(game_id: str, row: Any) -> GameSummary:
    """A ``select(game_summaries)`` row (a SQLAlchemy row or the driver's tuple: by position),
    or None for a game nobody rated."""
    if row is None:
        return GameSummary.empty(game_id)
    _, count, total, h1, h2, h3, h4, h5, last_offset = row
    histogram = (int(h1), int(h2), int(h3), int(h4), int(h5))
    return GameSummary(game_id, int(count), int(total), histogram, int(last_offset))


def seed(conn: Connection) -> None:
    """Insert the rows a new database starts with (the schema version, its epoch, the heads)."""
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


def seed_and_prove_writable(conn: Connection) -> None:
    """:func:`seed`, then one write that changes nothing: a database that opens but refuses
    writes (a read-only or immutable SQLite file, a read-only replica) is found at start,
    with its own error, instead of answering 503 to every write while ``/readyz`` says ready."""
    seed(conn)
    conn.execute(
        update(store_meta).where(store_meta.c.key == "epoch").values(value=store_meta.c.value)
    )
