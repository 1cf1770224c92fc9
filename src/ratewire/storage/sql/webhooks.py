"""Webhooks on the SQL backends (SQLite, PostgreSQL, MySQL): two tables beside the ratings,
in the same database, so a webhook's cursor survives exactly what its events survive."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    delete,
    insert,
    or_,
    select,
    update,
)

from ratewire.domain.webhooks import DeliveryAttempt, Progress, Webhook
from ratewire.storage.sql.execution import TransactionRunner
from ratewire.storage.sql.schema import metadata
from ratewire.storage.webhook_store import ATTEMPTS_KEPT, CHANGEABLE

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("url", Text, nullable=False),
    Column("topics", Text, nullable=False),  # a JSON list
    Column("description", Text, nullable=False),
    Column("secret", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("cursor", BigInteger, nullable=False),
    Column("generation", Integer, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", BigInteger, nullable=False),
    # The webhook's filter (a CEL expression); not named "filter", a keyword in SQL.
    Column("event_filter", Text, nullable=True),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("webhook_id", String(32), nullable=False),
    Column("message_id", String(255), nullable=False),
    Column("topic", String(255), nullable=False),
    Column("topic_offset", BigInteger, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("duration_ms", Float, nullable=False),
    Column("at", BigInteger, nullable=False),
    Column("error", Text, nullable=True),
    Index("ix_webhook_attempts_webhook", "webhook_id", "id"),
)


def _webhook(row: Any) -> Webhook:
    return Webhook(
        id=row.id,
        url=row.url,
        topics=tuple(orjson.loads(row.topics)),
        description=row.description,
        secret=row.secret,
        created_at=int(row.created_at),
        updated_at=int(row.updated_at),
        status=row.status,
        cursor=int(row.cursor),
        generation=int(row.generation),
        last_error=row.last_error,
        lease_owner=row.lease_owner,
        lease_until=int(row.lease_until),
        filter=row.event_filter,
    )


def _row(webhook: Webhook) -> dict[str, Any]:
    return {
        "id": webhook.id,
        "url": webhook.url,
        "topics": orjson.dumps(list(webhook.topics)).decode(),
        "description": webhook.description,
        "secret": webhook.secret,
        "status": webhook.status,
        "cursor": webhook.cursor,
        "generation": webhook.generation,
        "last_error": webhook.last_error,
        "created_at": webhook.created_at,
        "updated_at": webhook.updated_at,
        "lease_owner": webhook.lease_owner,
        "lease_until": webhook.lease_until,
        "event_filter": webhook.filter,
    }


class SqlWebhookStore:
    """A :class:`~ratewire.storage.webhook_store.WebhookStore` over the SQL store's read and
    write transactions."""

    def __init__(self, read: TransactionRunner, write: TransactionRunner) -> None:
        self._read = read
        self._write = write

    async def add(self, webhook: Webhook) -> None:
        await self._write(lambda conn: conn.execute(insert(webhooks).values(**_row(webhook))))

    async def get(self, webhook_id: str) -> Webhook | None:
        def body(conn: Connection) -> Webhook | None:
            row = conn.execute(select(webhooks).where(webhooks.c.id == webhook_id)).first()
            return None if row is None else _webhook(row)

        return await self._read(body)

    async def all(self) -> list[Webhook]:
        def body(conn: Connection) -> list[Webhook]:
            rows = conn.execute(select(webhooks).order_by(webhooks.c.created_at, webhooks.c.id))
            return [_webhook(row) for row in rows]

        return await self._read(body)

    async def update(self, webhook_id: str, now_ms: int, **fields: Any) -> Webhook | None:
        assert set(fields) <= CHANGEABLE, set(fields) - CHANGEABLE
        values = dict(fields)
        if "topics" in values:
            values["topics"] = orjson.dumps(list(values["topics"])).decode()
        if "filter" in values:
            values["event_filter"] = values.pop("filter")

        def body(conn: Connection) -> Webhook | None:
            changed = conn.execute(
                update(webhooks)
                .where(webhooks.c.id == webhook_id)
                .values(updated_at=now_ms, generation=webhooks.c.generation + 1, **values)
            )
            if not changed.rowcount:
                return None
            row = conn.execute(select(webhooks).where(webhooks.c.id == webhook_id)).first()
            return None if row is None else _webhook(row)

        return await self._write(body)

    async def remove(self, webhook_id: str) -> bool:
        def body(conn: Connection) -> bool:
            conn.execute(
                delete(webhook_attempts).where(webhook_attempts.c.webhook_id == webhook_id)
            )
            return bool(conn.execute(delete(webhooks).where(webhooks.c.id == webhook_id)).rowcount)

        return await self._write(body)

    async def acquire(self, webhook_id: str, owner: str, now_ms: int, lease_ms: int) -> bool:
        free = or_(
            webhooks.c.lease_owner.is_(None),
            webhooks.c.lease_owner == owner,
            webhooks.c.lease_until < now_ms,
        )

        def body(conn: Connection) -> bool:
            taken = conn.execute(
                update(webhooks)
                .where(and_(webhooks.c.id == webhook_id, free))
                .values(lease_owner=owner, lease_until=now_ms + lease_ms)
            )
            return bool(taken.rowcount)

        return await self._write(body)

    async def release(self, webhook_id: str, owner: str) -> None:
        await self._write(
            lambda conn: conn.execute(
                update(webhooks)
                .where(and_(webhooks.c.id == webhook_id, webhooks.c.lease_owner == owner))
                .values(lease_owner=None, lease_until=0)
            )
        )

    async def save(
        self, webhook_id: str, owner: str, generation: int, progress: Progress, now_ms: int
    ) -> bool:
        def body(conn: Connection) -> bool:
            saved = conn.execute(
                update(webhooks)
                .where(
                    and_(
                        webhooks.c.id == webhook_id,
                        webhooks.c.lease_owner == owner,
                        webhooks.c.lease_until >= now_ms,
                        webhooks.c.generation == generation,
                    )
                )
                .values(
                    cursor=progress.cursor,
                    status=progress.status,
                    last_error=progress.last_error,
                )
            )
            if not saved.rowcount:
                return False
            if progress.attempts:
                conn.execute(
                    insert(webhook_attempts),
                    [
                        {
                            "webhook_id": a.webhook_id,
                            "message_id": a.message_id,
                            "topic": a.topic,
                            "topic_offset": a.offset,
                            "attempt": a.attempt,
                            "outcome": a.outcome,
                            "status_code": a.status_code,
                            "duration_ms": a.duration_ms,
                            "at": a.at,
                            "error": a.error,
                        }
                        for a in progress.attempts
                    ],
                )
                oldest_kept = conn.scalar(
                    select(webhook_attempts.c.id)
                    .where(webhook_attempts.c.webhook_id == webhook_id)
                    .order_by(webhook_attempts.c.id.desc())
                    .offset(ATTEMPTS_KEPT - 1)
                    .limit(1)
                )
                if oldest_kept is not None:
                    conn.execute(
                        delete(webhook_attempts).where(
                            and_(
                                webhook_attempts.c.webhook_id == webhook_id,
                                webhook_attempts.c.id < oldest_kept,
                            )
                        )
                    )
            return True

        return await self._write(body)

    async def attempts(self, webhook_id: str, limit: int) -> list[DeliveryAttempt]:
        def body(conn: Connection) -> list[DeliveryAttempt]:
            rows = conn.execute(
                select(webhook_attempts)
                .where(webhook_attempts.c.webhook_id == webhook_id)
                .order_by(webhook_attempts.c.id.desc())
                .limit(limit)
            )
            return [
                DeliveryAttempt(
                    webhook_id=row.webhook_id,
                    message_id=row.message_id,
                    topic=row.topic,
                    offset=int(row.topic_offset),
                    attempt=int(row.attempt),
                    outcome=row.outcome,
                    status_code=row.status_code,
                    duration_ms=float(row.duration_ms),
                    at=int(row.at),
                    error=row.error,
                )
                for row in rows
            ]

        return await self._read(body)
