"""What the audit log needs of the store that keeps it: the storage backends implement this,
and the audit package depends on nothing above it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ratewire.audit.entry import AuditEntry, AuditHead, AuditQuery, AuditRecord


class AuditStoreError(Exception):
    """Base of the errors an audit store raises when it cannot append or read (the storage
    backends' ``StorageError`` is one)."""


class AuditStore(Protocol):
    """Appends to and reads the chain (see ``ratewire.storage.base.RatingStore``)."""

    async def append_audit(self, records: Sequence[AuditRecord]) -> None:
        """Seal ``records`` after the chain's head and store them, in one transaction."""
        ...

    async def audit_entries(self, query: AuditQuery) -> list[AuditEntry]:
        """Entries matching ``query``."""
        ...

    async def audit_head(self) -> AuditHead:
        """The chain's head and its pruning checkpoint."""
        ...
