"""Revoked tokens: what a revocation is, and the in-memory deny list every check reads.

Two kinds: ``jti`` revokes one token; ``sub`` revokes every token of a user issued up to the
moment of revocation (tokens issued later work again). An entry is kept only while a token it
revokes could still verify: ``jwt.max_ttl_seconds`` bounds every token's life, so an entry
expires that long (plus twice the leeway: ``iat`` may be up to one leeway ahead, ``exp`` one
behind) after it was made. The store keeps the list (it survives restarts); the cluster
announcements carry new entries to every instance at once (ratewire.broker.announcements).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

RevocationKind = Literal["jti", "sub"]
REVOKED_REASON = "Token revoked"


@dataclass(frozen=True, slots=True)
class Revocation:
    """One deny-list entry. Times are UNIX seconds."""

    kind: RevocationKind
    value: str
    revoked_at: float
    expires_at: float
    revoked_by: str | None = None
    reason: str | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.value}"

    def to_wire(self) -> dict[str, Any]:
        """As sent over REST and through the broker."""
        return {
            "kind": self.kind,
            "value": self.value,
            "revokedAt": self.revoked_at,
            "expiresAt": self.expires_at,
            "revokedBy": self.revoked_by,
            "reason": self.reason,
        }

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> Revocation:
        kind = fields["kind"]
        if kind not in ("jti", "sub"):
            raise ValueError(f"unknown revocation kind {kind!r}")
        return cls(
            kind=kind,
            value=str(fields["value"]),
            revoked_at=float(fields["revokedAt"]),
            expires_at=float(fields["expiresAt"]),
            revoked_by=fields.get("revokedBy"),
            reason=fields.get("reason"),
        )


class DenyList:
    """The revocations in force, checked on every token verification (two dict lookups)."""

    def __init__(self) -> None:
        self._jtis: dict[str, Revocation] = {}
        self._subs: dict[str, Revocation] = {}

    def __len__(self) -> int:
        return len(self._jtis) + len(self._subs)

    def add(self, revocation: Revocation) -> bool:
        """Take ``revocation`` into account; False if it changes nothing (known already)."""
        entries = self._jtis if revocation.kind == "jti" else self._subs
        known = entries.get(revocation.value)
        if known is not None and known.revoked_at >= revocation.revoked_at:
            return False
        entries[revocation.value] = revocation
        return True

    def revokes(self, revocation: Revocation, sub: str, jti: str | None, iat: float | None) -> bool:
        """Whether ``revocation`` covers the token with these claims. A token without ``iat``
        cannot prove it was issued after a ``sub`` revocation, so it is covered."""
        if revocation.kind == "jti":
            return jti == revocation.value
        return sub == revocation.value and (iat is None or iat <= revocation.revoked_at)

    def is_revoked(self, sub: str, jti: str | None, iat: float | None) -> bool:
        if jti is not None:
            by_jti = self._jtis.get(jti)
            if by_jti is not None:
                return True
        by_sub = self._subs.get(sub)
        return by_sub is not None and self.revokes(by_sub, sub, jti, iat)

    def entries(self) -> list[Revocation]:
        """Every entry in force, newest first."""
        return sorted(
            (*self._jtis.values(), *self._subs.values()),
            key=lambda entry: entry.revoked_at,
            reverse=True,
        )

    def prune(self, now: float | None = None) -> int:
        """Forget expired entries; returns how many went."""
        now = time.time() if now is None else now
        removed = 0
        for entries in (self._jtis, self._subs):
            for value in [v for v, entry in entries.items() if entry.expires_at <= now]:
                del entries[value]
                removed += 1
        return removed
