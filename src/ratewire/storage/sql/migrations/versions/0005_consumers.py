"""Durable consumers: each consumer's position, the offsets its members hold, and the offsets
acked above its floor (schema version 5).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "consumers",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("sub", sa.String(255), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("topic", sa.String(100), nullable=False),
        sa.Column("ack_floor", sa.BigInteger, nullable=False),
        sa.Column("claimed_through", sa.BigInteger, nullable=False),
        sa.Column("ack_wait_ms", sa.Integer, nullable=False),
        sa.Column("max_in_flight", sa.Integer, nullable=False),
        sa.Column("event_filter", sa.Text, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("active_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_consumers_sub", "consumers", ["sub"])
    op.create_index("ix_consumers_active_at", "consumers", ["active_at"])
    op.create_table(
        "consumer_claims",
        sa.Column("consumer_id", sa.String(64), primary_key=True),
        sa.Column("topic_offset", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("member", sa.String(64), nullable=False),
        sa.Column("delivery", sa.Integer, nullable=False),
        sa.Column("deadline", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "consumer_acks",
        sa.Column("consumer_id", sa.String(64), primary_key=True),
        sa.Column("topic_offset", sa.BigInteger, primary_key=True, autoincrement=False),
    )
    _set_schema_version(5)


def downgrade() -> None:
    op.drop_table("consumer_acks")
    op.drop_table("consumer_claims")
    op.drop_table("consumers")
    _set_schema_version(4)


def _set_schema_version(version: int) -> None:
    # As in 0002: the number a ratewire from before migrations checks before opening.
    meta = sa.table("ratewire_meta", sa.column("key", sa.String), sa.column("value", sa.String))
    op.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(version)))
