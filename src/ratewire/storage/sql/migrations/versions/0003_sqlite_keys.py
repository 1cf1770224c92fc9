"""SQLite: the integer keys as rowids and the counter tables WITHOUT ROWID, so that a rating
write touches six B-trees fewer (schema version 3). Other databases: only the version.

On SQLite a table whose primary key is not its rowid keeps two B-trees, and each rating write
changed both of ``global_head``, ``rating_events``, ``audit_log``, ``audit_head``,
``game_summaries`` and ``user_heads`` (see ratewire.storage.sql.types). SQLite cannot change
a table's key in place: each table is copied into a new one with the same columns and rows,
which replaces it, and its indexes are made again. A large history makes this take a while,
once.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: table -> (its columns, its key's declaration before and after, WITHOUT ROWID after, indexes)
_TABLES: dict[str, tuple[str, tuple[str, str], bool, tuple[str, ...]]] = {
    "global_head": (
        "id {key} NOT NULL, last_offset BIGINT NOT NULL, PRIMARY KEY (id)",
        ("SMALLINT", "INTEGER"),
        False,
        (),
    ),
    "audit_head": (
        "id {key} NOT NULL, seq BIGINT NOT NULL, mac VARCHAR(64) NOT NULL, "
        "pruned_seq BIGINT NOT NULL, pruned_mac VARCHAR(64) NOT NULL, PRIMARY KEY (id)",
        ("SMALLINT", "INTEGER"),
        False,
        (),
    ),
    "rating_events": (
        "seq {key} NOT NULL, kind VARCHAR(8) NOT NULL, game_id VARCHAR(64) NOT NULL, "
        "user_id VARCHAR(64) NOT NULL, game_offset BIGINT NOT NULL, "
        "user_offset BIGINT NOT NULL, payload TEXT NOT NULL, occurred_at BIGINT NOT NULL, "
        "PRIMARY KEY (seq)",
        ("BIGINT", "INTEGER"),
        False,
        (
            "CREATE INDEX ix_rating_events_game ON rating_events (game_id, game_offset)",
            "CREATE INDEX ix_rating_events_occurred_at ON rating_events (occurred_at)",
            "CREATE INDEX ix_rating_events_user ON rating_events (user_id, user_offset)",
        ),
    ),
    "audit_log": (
        "seq {key} NOT NULL, at_ms BIGINT NOT NULL, action VARCHAR(32) NOT NULL, "
        "actor VARCHAR(255), scopes VARCHAR(255) NOT NULL, ip VARCHAR(64), "
        "request_id VARCHAR(64), rating_id VARCHAR(40), detail TEXT NOT NULL, "
        "mac VARCHAR(64) NOT NULL, PRIMARY KEY (seq)",
        ("BIGINT", "INTEGER"),
        False,
        (
            "CREATE INDEX ix_audit_log_actor ON audit_log (actor, seq)",
            "CREATE INDEX ix_audit_log_at ON audit_log (at_ms)",
        ),
    ),
    "game_summaries": (
        "game_id VARCHAR(64) NOT NULL, count INTEGER NOT NULL, total BIGINT NOT NULL, "
        "h1 INTEGER NOT NULL, h2 INTEGER NOT NULL, h3 INTEGER NOT NULL, h4 INTEGER NOT NULL, "
        "h5 INTEGER NOT NULL, last_offset BIGINT NOT NULL, PRIMARY KEY (game_id)",
        ("", ""),
        True,
        (),
    ),
    "user_heads": (
        "user_id VARCHAR(64) NOT NULL, last_offset BIGINT NOT NULL, PRIMARY KEY (user_id)",
        ("", ""),
        True,
        (),
    ),
}


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table, (columns, (_, key), without_rowid, indexes) in _TABLES.items():
            _rebuild(table, columns.format(key=key), without_rowid, indexes)
    _set_schema_version(3)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table, (columns, (key, _), _, indexes) in _TABLES.items():
            _rebuild(table, columns.format(key=key), False, indexes)
    _set_schema_version(2)


def _rebuild(table: str, columns: str, without_rowid: bool, indexes: tuple[str, ...]) -> None:
    """Replace ``table`` by a copy declared with ``columns`` (same names, same order)."""
    names = ", ".join(
        row[1] for row in op.get_bind().exec_driver_sql(f"PRAGMA table_info({table})")
    )
    op.execute(
        f"CREATE TABLE {table}_0003 ({columns})" + (" WITHOUT ROWID" if without_rowid else "")
    )
    op.execute(f"INSERT INTO {table}_0003 ({names}) SELECT {names} FROM {table}")
    op.execute(f"DROP TABLE {table}")  # and its indexes
    op.execute(f"ALTER TABLE {table}_0003 RENAME TO {table}")
    for index in indexes:
        op.execute(index)


def _set_schema_version(version: int) -> None:
    # ratewire_meta's number is what a ratewire from before migrations checks: 0.1.0 refuses
    # to start on a schema newer than the one it knows, instead of misreading it.
    meta = sa.table("ratewire_meta", sa.column("key", sa.String), sa.column("value", sa.String))
    op.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(version)))
