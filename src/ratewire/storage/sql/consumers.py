"""Durable consumers on the SQL backends (SQLite, PostgreSQL, MySQL): three tables beside the
ratings, in the same database, so a consumer's position survives exactly what its events do.

A claim or an ack first updates the consumer's row: that takes the row's lock (PostgreSQL,
MySQL) or the database's write lock (SQLite), so two instances claiming for one consumer run
one after the other and never hand the same offset to two members.
A consumer's rows are keyed by :func:`~ratewire.storage.consumer_store.consumer_id`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    select,
    update,
)

from ratewire.storage.consumer_store import (
    AckOutcome,
    Claim,
    Consumer,
    ConsumerKey,
    consumer_id,
    split_acks,
)
from ratewire.storage.sql.execution import TransactionRunner
from ratewire.storage.sql.schema import metadata

#: Acked offsets read at a time while moving the floor.
_FLOOR_PAGE = 1000

consumers = Table(
    "consumers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("sub", String(255), nullable=False),
    Column("name", String(64), nullable=False),
    Column("topic", String(100), nullable=False),
    Column("ack_floor", BigInteger, nullable=False),
    Column("claimed_through", BigInteger, nullable=False),
    Column("ack_wait_ms", Integer, nullable=False),
    Column("max_in_flight", Integer, nullable=False),
    Column("event_filter", Text, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("active_at", BigInteger, nullable=False),
    Index("ix_consumers_sub", "sub"),
    Index("ix_consumers_active_at", "active_at"),
)

consumer_claims = Table(
    "consumer_claims",
    metadata,
    Column("consumer_id", String(64), primary_key=True),
    Column("topic_offset", BigInteger, primary_key=True, autoincrement=False),
    Column("member", String(64), nullable=False),
    Column("delivery", Integer, nullable=False),
    Column("deadline", BigInteger, nullable=False),
)

consumer_acks = Table(
    "consumer_acks",
    metadata,
    Column("consumer_id", String(64), primary_key=True),
    Column("topic_offset", BigInteger, primary_key=True, autoincrement=False),
)


def _consumer(row: Any, pending: int) -> Consumer:
    return Consumer(
        key=ConsumerKey(row.sub, row.name, row.topic),
        ack_floor=int(row.ack_floor),
        cursor=int(row.claimed_through),
        ack_wait_ms=int(row.ack_wait_ms),
        max_in_flight=int(row.max_in_flight),
        created_at=int(row.created_at),
        active_at=int(row.active_at),
        filter=row.event_filter,
        pending=pending,
    )


def _pending(conn: Connection, cid: str) -> int:
    counted = conn.scalar(
        select(func.count())
        .select_from(consumer_claims)
        .where(consumer_claims.c.consumer_id == cid)
    )
    return int(counted or 0)


def _locked(conn: Connection, cid: str, now_ms: int) -> Any:
    """The consumer's row, locked for the rest of the transaction (None if it is gone)."""
    conn.execute(update(consumers).where(consumers.c.id == cid).values(active_at=now_ms))
    return conn.execute(select(consumers).where(consumers.c.id == cid)).first()


def _claim(
    conn: Connection, cid: str, member: str, most: int, head: int, now_ms: int
) -> tuple[list[Claim], int]:
    row = _locked(conn, cid, now_ms)
    if row is None:
        return [], 0
    deadline = now_ms + int(row.ack_wait_ms)
    held = consumer_claims.c
    expired = conn.execute(
        select(held.topic_offset, held.delivery)
        .where(and_(held.consumer_id == cid, held.deadline < now_ms))
        .order_by(held.topic_offset)
        .limit(most)
    ).all()
    claims = [Claim(int(r.topic_offset), int(r.delivery) + 1) for r in expired]
    if claims:
        conn.execute(
            update(consumer_claims)
            .where(and_(held.consumer_id == cid, held.topic_offset.in_([c.offset for c in claims])))
            .values(member=member, delivery=held.delivery + 1, deadline=deadline)
        )
    cursor = int(row.claimed_through)
    fresh = range(cursor + 1, min(head, cursor + most - len(claims)) + 1)
    if fresh:
        conn.execute(
            insert(consumer_claims),
            [
                {
                    "consumer_id": cid,
                    "topic_offset": offset,
                    "member": member,
                    "delivery": 1,
                    "deadline": deadline,
                }
                for offset in fresh
            ],
        )
        cursor = fresh.stop - 1
        conn.execute(update(consumers).where(consumers.c.id == cid).values(claimed_through=cursor))
        claims.extend(Claim(offset, 1) for offset in fresh)
    return sorted(claims, key=lambda c: c.offset), cursor


def _ack(conn: Connection, cid: str, offsets: Sequence[int], now_ms: int) -> AckOutcome:
    row = _locked(conn, cid, now_ms)
    if row is None:
        return AckOutcome((), tuple(sorted(set(offsets))), 0, found=False)
    floor = int(row.ack_floor)
    acked, refused = split_acks(int(row.claimed_through), offsets)
    if acked:
        conn.execute(
            delete(consumer_claims).where(
                and_(
                    consumer_claims.c.consumer_id == cid,
                    consumer_claims.c.topic_offset.in_(acked),
                )
            )
        )
    above = [o for o in acked if o > floor]
    if above:
        known = set(
            conn.scalars(
                select(consumer_acks.c.topic_offset).where(
                    and_(
                        consumer_acks.c.consumer_id == cid, consumer_acks.c.topic_offset.in_(above)
                    )
                )
            )
        )
        new = [{"consumer_id": cid, "topic_offset": o} for o in above if o not in known]
        if new:
            conn.execute(insert(consumer_acks), new)
        floor = _advance_floor(conn, cid, floor)
    return AckOutcome(acked, refused, floor)


def _advance_floor(conn: Connection, cid: str, floor: int) -> int:
    start = floor
    while True:
        page = list(
            conn.scalars(
                select(consumer_acks.c.topic_offset)
                .where(
                    and_(consumer_acks.c.consumer_id == cid, consumer_acks.c.topic_offset > floor)
                )
                .order_by(consumer_acks.c.topic_offset)
                .limit(_FLOOR_PAGE)
            )
        )
        for offset in page:
            if int(offset) != floor + 1:
                break
            floor += 1
        else:
            if len(page) == _FLOOR_PAGE:
                continue
        break
    if floor != start:
        conn.execute(
            delete(consumer_acks).where(
                and_(consumer_acks.c.consumer_id == cid, consumer_acks.c.topic_offset <= floor)
            )
        )
        conn.execute(update(consumers).where(consumers.c.id == cid).values(ack_floor=floor))
    return floor


class SqlConsumerStore:
    """A :class:`~ratewire.storage.consumer_store.ConsumerStore` over the SQL store's read and
    write transactions."""

    def __init__(self, read: TransactionRunner, write: TransactionRunner) -> None:
        self._read = read
        self._write = write

    async def create(self, consumer: Consumer) -> tuple[Consumer, bool]:
        cid = consumer_id(consumer.key)

        def body(conn: Connection) -> tuple[Consumer, bool]:
            row = conn.execute(select(consumers).where(consumers.c.id == cid)).first()
            if row is not None:
                return _consumer(row, _pending(conn, cid)), False
            conn.execute(
                insert(consumers).values(
                    id=cid,
                    sub=consumer.key.sub,
                    name=consumer.key.name,
                    topic=consumer.key.topic,
                    ack_floor=consumer.ack_floor,
                    claimed_through=consumer.cursor,
                    ack_wait_ms=consumer.ack_wait_ms,
                    max_in_flight=consumer.max_in_flight,
                    event_filter=consumer.filter,
                    created_at=consumer.created_at,
                    active_at=consumer.active_at,
                )
            )
            return consumer, True

        return await self._write(body)

    async def get(self, key: ConsumerKey) -> Consumer | None:
        cid = consumer_id(key)

        def body(conn: Connection) -> Consumer | None:
            row = conn.execute(select(consumers).where(consumers.c.id == cid)).first()
            return None if row is None else _consumer(row, _pending(conn, cid))

        return await self._read(body)

    async def owned_by(self, sub: str) -> list[Consumer]:
        def body(conn: Connection) -> list[Consumer]:
            rows = conn.execute(select(consumers).where(consumers.c.sub == sub)).all()
            # The comparison may have ignored case (MySQL): only the exact owner's.
            return [_consumer(row, _pending(conn, row.id)) for row in rows if row.sub == sub]

        found: list[Consumer] = await self._read(body)
        return sorted(found, key=lambda c: (c.key.topic, c.key.name))

    async def remove(self, key: ConsumerKey) -> bool:
        cid = consumer_id(key)

        def body(conn: Connection) -> bool:
            conn.execute(delete(consumer_claims).where(consumer_claims.c.consumer_id == cid))
            conn.execute(delete(consumer_acks).where(consumer_acks.c.consumer_id == cid))
            return bool(conn.execute(delete(consumers).where(consumers.c.id == cid)).rowcount)

        return await self._write(body)

    async def claim(
        self, key: ConsumerKey, member: str, most: int, head: int, now_ms: int
    ) -> tuple[list[Claim], int]:
        cid = consumer_id(key)
        return await self._write(lambda conn: _claim(conn, cid, member, most, head, now_ms))

    async def ack(self, key: ConsumerKey, offsets: Sequence[int], now_ms: int) -> AckOutcome:
        cid = consumer_id(key)
        return await self._write(lambda conn: _ack(conn, cid, offsets, now_ms))

    async def release(self, key: ConsumerKey, member: str) -> int:
        cid = consumer_id(key)

        def body(conn: Connection) -> int:
            released = conn.execute(
                update(consumer_claims)
                .where(
                    and_(consumer_claims.c.consumer_id == cid, consumer_claims.c.member == member)
                )
                .values(deadline=0)
            )
            return int(released.rowcount or 0)

        return await self._write(body)

    async def remove_idle(self, before_ms: int) -> list[ConsumerKey]:
        def body(conn: Connection) -> list[ConsumerKey]:
            rows = conn.execute(
                select(consumers.c.id, consumers.c.sub, consumers.c.name, consumers.c.topic).where(
                    consumers.c.active_at < before_ms
                )
            ).all()
            ids = [row.id for row in rows]
            if ids:
                conn.execute(delete(consumer_claims).where(consumer_claims.c.consumer_id.in_(ids)))
                conn.execute(delete(consumer_acks).where(consumer_acks.c.consumer_id.in_(ids)))
                conn.execute(delete(consumers).where(consumers.c.id.in_(ids)))
            return [ConsumerKey(row.sub, row.name, row.topic) for row in rows]

        return await self._write(body)


__all__ = ["SqlConsumerStore", "consumer_acks", "consumer_claims", "consumers"]
