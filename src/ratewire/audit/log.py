"""The audit log's write side for events that are not changes: refused authentications and
WebSocket connects and disconnects.

Changes (ratings, revocations) are recorded by the store inside their own transaction. The
events here happen on the hot path (every connection) and need no transaction of their own,
so they are buffered and appended in batches: recording one costs an append to a list, and one
transaction every ``flush_seconds`` carries them all. A crash can lose the last fraction of a
second of them; it can never lose or invent a change.

What is recorded here comes partly from untrusted input (the claims of a refused token), so
each record is made storable when it is queued, and the flusher survives any error: a flusher
that died once (on a claim holding a lone surrogate, which orjson refuses) silently ended the
log for the rest of the process's life. ``check`` lets ``/readyz`` report a stopped flusher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ratewire.audit.entry import AuditContext, AuditRecord, storable
from ratewire.audit.store import AuditStore, AuditStoreError

log = logging.getLogger("ratewire.audit")
#: Entries kept while storage is unreachable; beyond, the oldest are dropped (and counted).
MAX_BUFFERED = 100_000


class AuditLog:
    """Buffers audit records and appends them to the store's chain in batches."""

    def __init__(self, store: AuditStore, *, flush_seconds: float = 0.2) -> None:
        self._store = store
        self._flush_seconds = flush_seconds
        self._buffer: list[AuditRecord] = []
        self._flusher: asyncio.Task[None] | None = None
        self._failing = False
        #: Records dropped: storage stayed unreachable too long, or the store refused the
        #: record itself (never expected once records are made storable; counted, logged).
        self.dropped = 0
        #: Records that held text no store can keep (lone surrogates) and were recorded with
        #: it escaped (``\\udfff``).
        self.made_safe = 0

    def record(
        self,
        action: str,
        context: AuditContext | None = None,
        *,
        rating_id: str | None = None,
        **detail: Any,
    ) -> None:
        """Queue one entry (never blocks, never raises)."""
        entry = AuditRecord.now(action, context, rating_id=rating_id, **detail)
        safe = storable(entry)
        if safe is not entry:
            if not self.made_safe:
                log.warning(
                    "audit entry %s held text no store can keep; recorded with it escaped "
                    "(counted in ratewire_audit_entries_made_safe)",
                    action,
                )
            self.made_safe += 1
        self._buffer.append(safe)
        if len(self._buffer) > MAX_BUFFERED:
            del self._buffer[0]
            self.dropped += 1

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever(), name="audit-flusher")

    async def stop(self) -> None:
        """Write what is buffered, then stop."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        with contextlib.suppress(AuditStoreError):
            await self.flush()

    async def flush(self) -> None:
        """Append everything buffered now, in one transaction."""
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        try:
            await self._store.append_audit(batch)
        except BaseException:
            self._buffer[:0] = batch  # kept, in order, for the next attempt
            raise

    async def check(self) -> None:
        """Raise if the flusher is not running (for ``/readyz``): entries would pile up."""
        if self._flusher is None or self._flusher.done():
            raise RuntimeError("the audit log's writer has stopped")

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._flush_seconds)
            try:
                await self.flush()
            except AuditStoreError as exc:
                if not self._failing:
                    log.warning("audit entries wait for storage (%s); will retry", exc)
                self._failing = True
            except Exception:
                # Not the store being away: something in the batch. Retrying it whole would
                # wedge the log on it forever, so write the entries one by one.
                log.exception("an audit batch was refused; writing its entries one by one")
                await self._flush_one_by_one()
            else:
                if self._failing:
                    log.info("audit entries written again")
                self._failing = False

    async def _flush_one_by_one(self) -> None:
        batch, self._buffer = self._buffer, []
        for position, entry in enumerate(batch):
            try:
                await self._store.append_audit([entry])
            except AuditStoreError:
                self._buffer[:0] = batch[position:]  # storage went away: retry the rest
                return
            except Exception as exc:
                self.dropped += 1
                log.error("audit entry %s dropped: the store refused it (%s)", entry.action, exc)
