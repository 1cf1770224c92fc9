"""The audit log's tables and statements for the SQL stores (see ratewire.audit).

Appends take the ``audit_head`` row's lock (``SELECT ... FOR UPDATE``; SQLite has one writer),
so instances sharing a database extend one chain, in one order. A rating write takes it last,
after the global head row it already holds, so lock order stays the same everywhere.

One transaction (a group-commit batch of writes) reads the head once, seals its entries in
memory as its writes run, and writes them and the new head once at the end
(:class:`AuditCursor`): measured, three statements per write cost a fifth of SQLite's write
throughput; per batch they cost a few percent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection

from ratewire.audit import GENESIS, AuditChain, AuditEntry, AuditQuery, AuditRecord
from ratewire.audit.entry import AuditHead
from ratewire.storage.sql.execution import (
    PgWriteConnection,
    StatementRunner,
    WriteConnection,
    rows_of,
)
from ratewire.storage.sql.pg_writes import AUDIT_FLUSH
from ratewire.storage.sql.types import SQLITE_ROWID, SQLITE_ROWID_SMALL


class AuditCursor:
    """The chain's head within one transaction, and the entries sealed so far.

    ``assumed``: the head this process wrote last. The transaction seals after it without
    reading the head row, and :meth:`AuditTables.flush` moves the head only if it is still
    there (one statement instead of a locked read and a write: on PostgreSQL each is a round
    trip inside the write transaction). If another instance extended the chain meanwhile, the
    entries are sealed again after the real head.
    """

    __slots__ = ("assumed", "base", "chain", "head", "pending", "records", "run")

    def __init__(self, run: StatementRunner, assumed: tuple[int, str] | None = None) -> None:
        self.run = run
        self.assumed = assumed
        self.chain: AuditChain | None = None
        #: The head the transaction's entries are sealed after; ``head``: after the last one.
        self.base: tuple[int, str] | None = None
        self.head: tuple[int, str] | None = None
        self.pending: list[AuditEntry] = []
        self.records: list[AuditRecord] = []

    def snapshot(self) -> tuple[tuple[int, str] | None, int]:
        return self.head, len(self.pending)

    def restore(self, snapshot: tuple[tuple[int, str] | None, int]) -> None:
        """Forget what a write that rolled back to its savepoint sealed."""
        self.head, kept = snapshot
        del self.pending[kept:]
        del self.records[kept:]


def _sealed(
    chain: AuditChain, head: tuple[int, str], records: Sequence[AuditRecord]
) -> tuple[list[AuditEntry], tuple[int, str]]:
    """``records`` sealed one after the other from ``head``, and the new head."""
    seq, mac = head
    entries = []
    for record in records:
        seq += 1
        entry = chain.seal(mac, seq, record)
        mac = entry.mac
        entries.append(entry)
    return entries, (seq, mac)


class AuditTables:
    """``audit_log`` and ``audit_head`` on ``metadata``, and what runs on them."""

    def __init__(self, metadata: MetaData) -> None:
        self.log = Table(
            "audit_log",
            metadata,
            Column("seq", SQLITE_ROWID, primary_key=True, autoincrement=False),
            Column("at_ms", BigInteger, nullable=False),
            Column("action", String(32), nullable=False),
            Column("actor", String(255), nullable=True),
            Column("scopes", String(255), nullable=False),
            Column("ip", String(64), nullable=True),
            Column("request_id", String(64), nullable=True),
            Column("rating_id", String(40), nullable=True),
            Column("detail", Text, nullable=False),
            Column("mac", String(64), nullable=False),
            # Two secondary indexes, not five: each one is a B-tree insert per entry, and with
            # five the log cost 10-13% of SQLite's write throughput (measured, bench.rest
            # --audit both), with two 6%. Filters on action, rating or address scan from the
            # newest entry; a time range (the at_ms index) bounds that scan on a large log.
            Index("ix_audit_log_actor", "actor", "seq"),
            Index("ix_audit_log_at", "at_ms"),
        )
        #: audit_log's columns, in the order of AuditEntry.values() (AUDIT_FIELDS).
        self._columns = tuple(self.log.columns.keys())
        self.head = Table(
            "audit_head",
            metadata,
            Column("id", SQLITE_ROWID_SMALL, primary_key=True, autoincrement=False),
            Column("seq", BigInteger, nullable=False),
            Column("mac", String(64), nullable=False),
            Column("pruned_seq", BigInteger, nullable=False),
            Column("pruned_mac", String(64), nullable=False),
        )
        self._lock_head = select(self.head).where(self.head.c.id == 1).with_for_update()
        self._insert = insert(self.log)
        self._move_head = (
            update(self.head)
            .where(self.head.c.id == 1)
            .values(seq=bindparam("b_seq"), mac=bindparam("b_mac"))
        )
        self._move_head_from = (
            update(self.head)
            .where(
                self.head.c.id == 1,
                self.head.c.seq == bindparam("b_old_seq"),
                self.head.c.mac == bindparam("b_old_mac"),
            )
            .values(seq=bindparam("b_seq"), mac=bindparam("b_mac"))
        )

    def seed_row(self) -> dict[str, Any]:
        return {"id": 1, "seq": 0, "mac": GENESIS, "pruned_seq": 0, "pruned_mac": GENESIS}

    def append(
        self,
        conn: WriteConnection,
        chain: AuditChain,
        records: Sequence[AuditRecord],
        cursor: AuditCursor,
    ) -> None:
        """Seal ``records`` after the transaction's head; they are written by :meth:`flush`
        when the transaction's writes are done."""
        if cursor.head is None:
            cursor.head = cursor.base = cursor.assumed or self._read_locked(conn, cursor)
        cursor.chain = chain
        entries, cursor.head = _sealed(chain, cursor.head, records)
        cursor.pending.extend(entries)
        cursor.records.extend(records)

    def _read_locked(self, conn: WriteConnection, cursor: AuditCursor) -> tuple[int, str]:
        # Column order of audit_head: id, seq, mac, pruned_seq, pruned_mac.
        head = cursor.run.one(conn, self._lock_head)
        return int(head[1]), str(head[2])

    def flush(self, conn: WriteConnection, cursor: AuditCursor) -> None:
        """Move the head past the transaction's entries (locking it) and insert them."""
        if not cursor.pending or cursor.head is None:
            return
        if isinstance(conn, PgWriteConnection):
            self._flush_pg(conn, cursor)
            return
        seq, mac = cursor.head
        moved = True
        if cursor.assumed is not None:
            old_seq, old_mac = cursor.assumed
            moved = (
                cursor.run.rowcount(
                    conn,
                    self._move_head_from,
                    {"b_seq": seq, "b_mac": mac, "b_old_seq": old_seq, "b_old_mac": old_mac},
                )
                == 1
            )
            if not moved:  # another instance extended the chain: seal again after its head
                assert cursor.chain is not None
                head = self._read_locked(conn, cursor)
                cursor.pending, cursor.head = _sealed(cursor.chain, head, cursor.records)
                seq, mac = cursor.head
        if not moved or cursor.assumed is None:
            cursor.run.execute(conn, self._move_head, {"b_seq": seq, "b_mac": mac})
        cursor.run.executemany(conn, self._insert, [self._row(entry) for entry in cursor.pending])
        cursor.pending.clear()
        cursor.records.clear()

    def _flush_pg(self, conn: PgWriteConnection, cursor: AuditCursor) -> None:
        """PostgreSQL: the head's move and the entries' insert in one statement, which inserts
        nothing if the head is not where the entries were sealed from (then: read it locked,
        seal again after it, and run it once more, which now moves it)."""
        assert cursor.base is not None and cursor.head is not None
        for _ in range(2):
            columns = [
                list(column) for column in zip(*map(AuditEntry.values, cursor.pending), strict=True)
            ]
            status = cursor.run.pg_execute(
                conn, AUDIT_FLUSH, (*cursor.head, *cursor.base, *columns)
            )
            if rows_of(status) == len(cursor.pending):
                cursor.pending.clear()
                cursor.records.clear()
                return
            assert cursor.chain is not None  # another instance extended the chain
            cursor.base = self._read_locked(conn, cursor)
            cursor.pending, cursor.head = _sealed(cursor.chain, cursor.base, cursor.records)
        raise AssertionError("the audit head moved while locked")

    def _row(self, entry: AuditEntry) -> dict[str, Any]:
        return dict(zip(self._columns, entry.values(), strict=True))

    def read_head(self, conn: Connection) -> AuditHead:
        row = conn.execute(select(self.head).where(self.head.c.id == 1)).one()
        return AuditHead(int(row.seq), row.mac, int(row.pruned_seq), row.pruned_mac)

    def entries(self, conn: Connection, query: AuditQuery) -> list[AuditEntry]:
        log = self.log
        conditions = []
        for column, value in (
            (log.c.actor, query.actor),
            (log.c.action, query.action),
            (log.c.rating_id, query.rating_id),
            (log.c.ip, query.ip),
        ):
            if value is not None:
                conditions.append(column == value)
        if query.since_ms is not None:
            conditions.append(log.c.at_ms >= query.since_ms)
        if query.until_ms is not None:
            conditions.append(log.c.at_ms < query.until_ms)
        if query.before_seq is not None:
            conditions.append(log.c.seq < query.before_seq)
        if query.after_seq is not None:
            conditions.append(log.c.seq > query.after_seq)
        order = log.c.seq.asc() if query.oldest_first else log.c.seq.desc()
        statement = select(log).where(and_(True, *conditions)).order_by(order).limit(query.limit)
        return [
            AuditEntry(
                int(row.seq),
                int(row.at_ms),
                row.action,
                row.actor,
                row.scopes,
                row.ip,
                row.request_id,
                row.rating_id,
                row.detail,
                row.mac,
            )
            for row in conn.execute(statement)
        ]

    def prune(
        self,
        conn: Connection,
        chain: AuditChain,
        older_than_ms: int,
        record: AuditRecord,
        cursor: AuditCursor,
    ) -> int:
        """Delete entries older than ``older_than_ms``; the last one deleted becomes the
        checkpoint verification starts from, itself recorded as a chained ``audit.pruned``
        entry (``record`` with the checkpoint added to its detail)."""
        log = self.log
        last = conn.execute(
            select(log.c.seq, log.c.mac)
            .where(log.c.at_ms < older_than_ms)
            .order_by(log.c.seq.desc())
            .limit(1)
        ).first()
        if last is None:
            return 0
        through_seq, through_mac = int(last.seq), str(last.mac)
        detail = {**record.detail, "throughSeq": through_seq, "throughMac": through_mac}
        checkpoint = AuditRecord(record.action, record.at_ms, record.context, None, detail)
        self.append(conn, chain, [checkpoint], cursor)
        removed = conn.execute(delete(log).where(log.c.seq <= through_seq)).rowcount
        conn.execute(
            update(self.head)
            .where(self.head.c.id == 1)
            .values(pruned_seq=through_seq, pruned_mac=through_mac)
        )
        return int(removed or 0)
