"""Webhooks: the registered endpoints with their cursors, and their delivery attempts
(schema version 2).

Builds between 0.1.0 and this migration created these tables without a migration; on such a
database the tables exist already and are kept as they are.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "webhooks" not in existing:
        op.create_table(
            "webhooks",
            sa.Column("id", sa.String(32), primary_key=True),
            sa.Column("url", sa.Text, nullable=False),
            sa.Column("topics", sa.Text, nullable=False),
            sa.Column("description", sa.Text, nullable=False),
            sa.Column("secret", sa.String(64), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("cursor", sa.BigInteger, nullable=False),
            sa.Column("generation", sa.Integer, nullable=False),
            sa.Column("last_error", sa.Text, nullable=True),
            sa.Column("created_at", sa.BigInteger, nullable=False),
            sa.Column("updated_at", sa.BigInteger, nullable=False),
            sa.Column("lease_owner", sa.String(64), nullable=True),
            sa.Column("lease_until", sa.BigInteger, nullable=False),
        )
    if "webhook_attempts" not in existing:
        op.create_table(
            "webhook_attempts",
            sa.Column(
                "id",
                sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                primary_key=True,
                autoincrement=True,
            ),
            sa.Column("webhook_id", sa.String(32), nullable=False),
            sa.Column("message_id", sa.String(255), nullable=False),
            sa.Column("topic", sa.String(255), nullable=False),
            sa.Column("topic_offset", sa.BigInteger, nullable=False),
            sa.Column("attempt", sa.Integer, nullable=False),
            sa.Column("outcome", sa.String(16), nullable=False),
            sa.Column("status_code", sa.Integer, nullable=True),
            sa.Column("duration_ms", sa.Float, nullable=False),
            sa.Column("at", sa.BigInteger, nullable=False),
            sa.Column("error", sa.Text, nullable=True),
        )
        op.create_index("ix_webhook_attempts_webhook", "webhook_attempts", ["webhook_id", "id"])
    _set_schema_version(2)


def downgrade() -> None:
    op.drop_table("webhook_attempts")
    op.drop_table("webhooks")
    _set_schema_version(1)


def _set_schema_version(version: int) -> None:
    # ratewire_meta's number is what a ratewire from before migrations checks: 0.1.0 refuses
    # to start on a schema newer than the one it knows, instead of misreading it.
    meta = sa.table("ratewire_meta", sa.column("key", sa.String), sa.column("value", sa.String))
    op.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(version)))
