"""The audit records of the changes a store makes (built by every backend alike)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ratewire.audit.entry import AuditContext, AuditRecord
from ratewire.domain import Rating
from ratewire.domain.rating import EventKind
from ratewire.security.revocation import Revocation

_RATING_ACTIONS: dict[str, str] = {
    "created": "rating.create",
    "updated": "rating.update",
    "deleted": "rating.delete",
}


def rating_audit_record(
    kind: EventKind,
    old: Rating | None,
    new: Rating | None,
    now: datetime,
    event_seq: int,
    context: AuditContext | None,
    current_wire: dict[str, Any] | None = None,
) -> AuditRecord:
    """The entry of one rating change: the rating before and after, and its event's ``seq``.
    ``current_wire``: ``(new or old).to_wire()`` if the caller has it already (the event's
    data), to spare formatting it again on the write path."""
    current = new or old
    assert current is not None
    wire = current_wire if current_wire is not None else current.to_wire()
    return AuditRecord.now(
        _RATING_ACTIONS[kind],
        context,
        rating_id=current.id,
        at=now,
        before=None if old is None else (wire if new is None else old.to_wire()),
        after=None if new is None else wire,
        eventSeq=event_seq,
    )


def revocation_audit_record(revocation: Revocation, context: AuditContext | None) -> AuditRecord:
    return AuditRecord.now(
        "revocation.create",
        context,
        kind=revocation.kind,
        value=revocation.value,
        reason=revocation.reason,
        expiresAt=revocation.expires_at,
    )
