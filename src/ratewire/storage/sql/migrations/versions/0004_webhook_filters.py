"""Webhook filters (issue 40): a webhook may carry a CEL expression its events must pass
(schema version 4). Existing webhooks get none: they go on delivering every event.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot alter a table in place beyond adding a column, and
    # dropping one (downgrade) needs the copy-and-move Alembic does in batch mode.
    with op.batch_alter_table("webhooks") as batch:
        batch.add_column(sa.Column("event_filter", sa.Text, nullable=True))
    _set_schema_version(4)


def downgrade() -> None:
    with op.batch_alter_table("webhooks") as batch:
        batch.drop_column("event_filter")
    _set_schema_version(3)


def _set_schema_version(version: int) -> None:
    # ratewire_meta's number is what a ratewire from before migrations checks: 0.1.0 refuses
    # to start on a schema newer than the one it knows, instead of misreading it.
    meta = sa.table("ratewire_meta", sa.column("key", sa.String), sa.column("value", sa.String))
    op.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(version)))
