"""The audit log's write side for events that are not changes: refused authentications and
WebSocket connects and disconnects.

Changes (ratings, revocations) are recorded by the store inside their own transaction. The
events here happen on the hot path (every connection) and need no transaction of their own,
so they are buffered and appended in batches: recording one costs an append to a list, and one
transaction every ``flush_seconds`` carries them all. A crash can lose the last fraction of a
second of them; it can never lose or invent a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ratewire.audit.entry import AuditContext, AuditRecord
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
        #: Records dropped because storage stayed unreachable too long.
        self.dropped = 0

    def record(
        self,
        action: str,
        context: AuditContext | None = None,
        *,
        rating_id: str | None = None,
        **detail: Any,
    ) -> None:
        """Queue one entry (never blocks, never raises)."""
        self._buffer.append(AuditRecord.now(action, context, rating_id=rating_id, **detail))
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

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._flush_seconds)
            try:
                await self.flush()
            except AuditStoreError as exc:
                if not self._failing:
                    log.warning("audit entries wait for storage (%s); will retry", exc)
                self._failing = True
            else:
                if self._failing:
                    log.info("audit entries written again")
                self._failing = False
