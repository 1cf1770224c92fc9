"""The audit chain of the Redis store.

Redis scripts cannot compute HMAC-SHA256, so a write cannot seal its own entry. It queues
the record instead (``S:audit:pending``), atomically with the change. A sealer task, woken
by each write, takes the queue in order, seals it after the chain's head in Python, and
appends it with a script that checks the head and the queue did not move meanwhile: a burst
of writes is sealed in one or two round trips, off the writers' path. Every read of the
chain (``GET /audit``, verify, prune) seals first, so it sees every write acknowledged before
it. A process killed before its records were sealed leaves them queued, and the next seal
(any process's, or the store's start) takes them: an entry is never lost, and the chain's
order is the order of the writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from redis.exceptions import RedisError

from ratewire.audit import GENESIS, AuditChain, AuditContext, AuditEntry, AuditQuery, AuditRecord
from ratewire.audit.entry import AuditHead
from ratewire.storage.redis.scripts import PENDING, PRUNE_AUDIT, SEAL

log = logging.getLogger("ratewire.storage.redis")
ScriptRunner = Callable[[str, str, list[Any], list[Any]], Awaitable[Any]]
PENDING_SHA = hashlib.sha1(PENDING.encode()).hexdigest()
SEAL_SHA = hashlib.sha1(SEAL.encode()).hexdigest()

#: Records sealed per script call.
SEAL_BATCH = 500
#: Entries read per round trip when a query filters.
READ_BATCH = 200


def encode_record(record: AuditRecord) -> bytes:
    """A record as queued (the event's seq, for a rating change, is added when sealed)."""
    context = record.context
    return orjson.dumps(
        [
            record.action,
            record.at_ms,
            context.actor,
            context.scopes,
            context.ip,
            context.request_id,
            record.rating_id,
            record.detail,
        ]
    )


def _decode_pending(item: bytes) -> AuditRecord:
    seq, _, body = item.partition(b"|")
    action, at_ms, actor, scopes, ip, request_id, rating_id, detail = orjson.loads(body)
    if seq != b"0":
        detail = {**detail, "eventSeq": int(seq)}
    return AuditRecord(
        action, at_ms, AuditContext(actor, scopes, ip, request_id), rating_id, detail
    )


def _entry_args(entry: AuditEntry) -> list[Any]:
    return [
        entry.seq,
        entry.mac,
        entry.at_ms,
        entry.action,
        entry.actor or "",
        entry.scopes,
        entry.ip or "",
        entry.request_id or "",
        entry.rating_id or "",
        entry.detail_text,
    ]


def _entry(entry_id: bytes, fields: dict[bytes, bytes]) -> AuditEntry:
    def text(name: bytes) -> str | None:
        return fields[name].decode() or None

    return AuditEntry(
        seq=int(entry_id.split(b"-", 1)[0]),
        at_ms=int(fields[b"at"]),
        action=fields[b"act"].decode(),
        actor=text(b"who"),
        scopes=fields[b"sc"].decode(),
        ip=text(b"ip"),
        request_id=text(b"rq"),
        rating_id=text(b"rid"),
        detail_text=fields[b"d"].decode(),
        mac=fields[b"mac"].decode(),
    )


class RedisAuditChain:
    """Queue, seal and read the audit chain kept under ``prefix``."""

    def __init__(self, client: Any, prefix: str, run_script: ScriptRunner) -> None:
        """``client``: a redis.asyncio client that does not decode answers (bytes);
        ``run_script(script, sha, keys, args)`` runs a script on the store's write path."""
        self._client = client
        self._run_script = run_script
        self._wake = asyncio.Event()
        self._sealer: asyncio.Task[None] | None = None
        self._prefix = prefix
        self.chain: AuditChain | None = None
        self.pending_key = f"{prefix}:audit:pending"
        self._stream = f"{prefix}:audit"
        self._head_key = f"{prefix}:audit:head"
        self._prune_script = client.register_script(PRUNE_AUDIT)
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self._client.hsetnx(self._head_key, "seq", 0)
        await self._client.hsetnx(self._head_key, "mac", GENESIS)
        await self._client.hsetnx(self._head_key, "pseq", 0)
        await self._client.hsetnx(self._head_key, "pmac", GENESIS)
        if self.chain is not None:
            await self.seal()  # what a process killed after its write left queued
            self._sealer = asyncio.create_task(self._seal_when_woken(), name="audit-sealer")

    async def stop(self) -> None:
        """Seal what is queued and stop the sealer."""
        if self._sealer is not None:
            self._sealer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sealer
            self._sealer = None
            with contextlib.suppress(RedisError, OSError):
                await self.seal()

    def queued(self) -> None:
        """A write queued a record: seal it soon."""
        if self._sealer is None and self.chain is not None:  # the chain was set after start
            self._sealer = asyncio.create_task(self._seal_when_woken(), name="audit-sealer")
        self._wake.set()

    async def _seal_when_woken(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.seal()
            except (RedisError, OSError) as exc:
                # Redis is away: the records stay queued; the next write or read retries.
                log.warning("audit: sealing failed (%s); the records stay queued", exc)

    async def queue(self, records: Sequence[AuditRecord]) -> None:
        """Queue records that belong to no write (connects, refusals, checkpoints)."""
        await self._client.rpush(self.pending_key, *(b"0|" + encode_record(r) for r in records))

    async def head(self) -> AuditHead:
        """The chain's head, after sealing what is queued."""
        await self.seal()
        return await self._read_head()

    async def _read_head(self) -> AuditHead:
        seq, mac, pruned_seq, pruned_mac = await self._client.hmget(
            self._head_key, "seq", "mac", "pseq", "pmac"
        )
        return AuditHead(
            int(seq or 0),
            (mac or GENESIS.encode()).decode(),
            int(pruned_seq or 0),
            (pruned_mac or GENESIS.encode()).decode(),
        )

    async def seal(self) -> None:
        """Seal every queued record."""
        chain = self.chain
        if chain is None:
            return
        async with self._lock:
            while True:
                seq_raw, mac_raw, items = await self._run_script(
                    PENDING, PENDING_SHA, [self._prefix], [SEAL_BATCH]
                )
                if not items:
                    break
                seq, mac = int(seq_raw or 0), (mac_raw or GENESIS.encode()).decode()
                args: list[Any] = [seq, mac, len(items), items[0]]
                for item in items:
                    seq += 1
                    entry = chain.seal(mac, seq, _decode_pending(item))
                    mac = entry.mac
                    args.extend(_entry_args(entry))
                await self._run_script(SEAL, SEAL_SHA, [self._prefix], args)
                # 0: another process sealed first; read again (either way, go on until empty)

    async def entries(self, query: AuditQuery) -> list[AuditEntry]:
        """Sealed entries matching ``query``: O(entries looked at), newest (or oldest) first."""
        await self.seal()
        found: list[AuditEntry] = []
        if query.oldest_first:
            start = "-" if query.after_seq is None else f"({query.after_seq}-0"
        else:
            start = "+" if query.before_seq is None else f"({query.before_seq}-0"
        while len(found) < query.limit:
            if query.oldest_first:
                batch = await self._client.xrange(self._stream, start, "+", count=READ_BATCH)
            else:
                batch = await self._client.xrevrange(self._stream, start, "-", count=READ_BATCH)
            for entry_id, fields in batch:
                entry = _entry(entry_id, fields)
                if query.matches(entry):
                    found.append(entry)
                    if len(found) == query.limit:
                        break
            if len(batch) < READ_BATCH:
                break
            start = "(" + batch[-1][0].decode()
        return found

    async def prune(self, older_than_ms: int, record: AuditRecord) -> int:
        """Drop entries older than ``older_than_ms``; the last one dropped becomes the
        checkpoint, recorded as ``record``. Returns how many went."""
        chain = self.chain
        if chain is None:
            return 0
        await self.seal()
        async with self._lock:
            while True:
                head = await self._read_head()
                through: AuditEntry | None = None
                start = "-"
                while True:
                    batch = await self._client.xrange(self._stream, start, "+", count=READ_BATCH)
                    old = [_entry(i, f) for i, f in batch if int(f[b"at"]) < older_than_ms]
                    if old:
                        through = old[-1]
                    # Every entry is looked at (hourly, O(entries)): an old entry appended
                    # late (a backfill) still moves the checkpoint past it, as on SQL.
                    if len(batch) < READ_BATCH:
                        break
                    start = "(" + batch[-1][0].decode()
                if through is None:
                    return 0
                detail = {**record.detail, "throughSeq": through.seq, "throughMac": through.mac}
                checkpoint = chain.seal(
                    head.mac,
                    head.seq + 1,
                    AuditRecord(record.action, record.at_ms, record.context, None, detail),
                )
                args = [head.seq, head.mac, through.seq, through.mac, *_entry_args(checkpoint)]
                if await self._prune_script(keys=[self._prefix], args=args):
                    return through.seq - head.pruned_seq
