"""Audit entries: who (actor, scopes, address, request), what (action, rating, detail), when.

Actions (stable names, documented in the README):

- ``rating.create``, ``rating.update``, ``rating.delete``: detail ``{"before", "after",
  "eventSeq"}``, written in the transaction of the change;
- ``revocation.create``: detail ``{"kind", "value", "reason", "expiresAt"}``, in the
  transaction of the revocation;
- ``auth.refused``: detail ``{"reason", "channel", "sub"?, "jti"?}`` (never the token);
- ``ws.connect``, ``ws.disconnect`` (detail ``{"code", "endpoint"}``), ``ws.rate_limited``
  (close 4008), ``ws.too_slow`` (close 4009);
- ``audit.pruned``: detail ``{"throughSeq", "throughMac"}``, the checkpoint of a prune.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from ratewire.domain.rating import storable_text
from ratewire.domain.time import epoch_ms, from_epoch_ms


@dataclass(frozen=True, slots=True)
class AuditContext:
    """Who is acting, and from where: taken from the request or connection."""

    actor: str | None = None
    scopes: str = ""
    ip: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """An entry before the store gives it its place in the chain."""

    action: str
    at_ms: int
    context: AuditContext = field(default_factory=AuditContext)
    rating_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def now(
        cls,
        action: str,
        context: AuditContext | None = None,
        *,
        rating_id: str | None = None,
        at: datetime | None = None,
        **detail: Any,
    ) -> AuditRecord:
        moment = at or datetime.now(UTC)
        return cls(
            action,
            epoch_ms(moment),
            context or AuditContext(),
            rating_id,
            detail,
        )

    def detail_json(self) -> bytes:
        """The detail as stored: canonical JSON (sorted keys), which the MAC covers."""
        return orjson.dumps(self.detail, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A stored entry: its place in the chain (``seq``) and its MAC over the previous one."""

    seq: int
    at_ms: int
    action: str
    actor: str | None
    scopes: str
    ip: str | None
    request_id: str | None
    rating_id: str | None
    detail_text: str
    mac: str

    def values(self) -> tuple[Any, ...]:
        """The fields in their order (:data:`AUDIT_FIELDS`), which is ``audit_log``'s column
        order; the chain's MAC covers all but the last two. Spelled out: cheaper on the write
        path than an ``attrgetter``."""
        return (
            self.seq,
            self.at_ms,
            self.action,
            self.actor,
            self.scopes,
            self.ip,
            self.request_id,
            self.rating_id,
            self.detail_text,
            self.mac,
        )

    def to_wire(self) -> dict[str, Any]:
        """As ``GET /audit`` and ``ratewire audit export`` give it (field names are stable)."""
        at = from_epoch_ms(self.at_ms)
        return {
            "seq": self.seq,
            "at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "action": self.action,
            "actor": self.actor,
            "scopes": self.scopes.split() if self.scopes else [],
            "ip": self.ip,
            "requestId": self.request_id,
            "ratingId": self.rating_id,
            "detail": orjson.loads(self.detail_text),
            "mac": self.mac,
        }


#: An entry's fields in their one order (:meth:`AuditEntry.values`): the SQL stores write it
#: as a row, and the chain's MAC covers it but for the detail and the MAC itself.
AUDIT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(AuditEntry))


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters of ``GET /audit`` and ``audit export``. ``before_seq`` pages newest first;
    ``after_seq`` walks oldest first (verify, export)."""

    actor: str | None = None
    action: str | None = None
    rating_id: str | None = None
    ip: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    before_seq: int | None = None
    after_seq: int | None = None
    limit: int = 100
    oldest_first: bool = False

    def matches(self, entry: AuditEntry) -> bool:
        """Whether ``entry`` passes every filter (for stores that filter in Python)."""
        return (
            (self.actor is None or entry.actor == self.actor)
            and (self.action is None or entry.action == self.action)
            and (self.rating_id is None or entry.rating_id == self.rating_id)
            and (self.ip is None or entry.ip == self.ip)
            and (self.since_ms is None or entry.at_ms >= self.since_ms)
            and (self.until_ms is None or entry.at_ms < self.until_ms)
            and (self.before_seq is None or entry.seq < self.before_seq)
            and (self.after_seq is None or entry.seq > self.after_seq)
        )


@dataclass(frozen=True, slots=True)
class AuditHead:
    """The chain's anchor in the store: its last entry, and the checkpoint of what retention
    pruned (verification starts there)."""

    seq: int
    mac: str
    pruned_seq: int
    pruned_mac: str


def _storable_value(value: Any) -> Any:
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(str(k)): _storable_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable_value(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -(2**63) <= value < 2**64 else str(value)  # orjson's range
    if value is None or isinstance(value, bool | float):
        return value
    return storable_text(repr(value))


def storable(record: AuditRecord) -> AuditRecord:
    """``record`` if every store can keep it as it is, else a copy with its text made
    storable (the same object back means nothing needed changing)."""
    context = record.context
    texts = (context.actor, context.scopes, context.ip, context.request_id, record.rating_id)
    try:
        for text in texts:
            if text is not None:
                text.encode()
        record.detail_json()
    except (UnicodeEncodeError, TypeError):
        # orjson raises its JSONEncodeError, a TypeError, for lone surrogates and for values
        # it cannot encode (and for integers above 64 bits).
        pass
    else:
        return record
    actor, scopes, ip, request_id, rating_id = (
        None if text is None else storable_text(text) for text in texts
    )
    return replace(
        record,
        context=AuditContext(actor, scopes or "", ip, request_id),
        rating_id=rating_id,
        detail=_storable_value(record.detail),
    )
