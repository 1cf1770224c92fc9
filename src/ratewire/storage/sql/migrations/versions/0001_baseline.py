"""The schema of ratewire 0.1.0 (schema version 1): ratings, summaries, topic heads, the
event log, revocations and the audit chain.

Databases created before migrations existed have exactly this schema (or this one plus the
webhook tables, created on the fly by builds between 0.1.0 and 0.2.0): ratewire stamps them
with this revision and upgrades from here. New databases are created whole from the current
schema and stamped with the head, as Alembic recommends, so this revision changes nothing.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
