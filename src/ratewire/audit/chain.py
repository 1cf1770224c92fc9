"""The hash chain that makes the audit log tamper-evident.

Each entry's MAC covers the previous entry's MAC and a canonical encoding of the entry
itself, so changing, removing or reordering any entry breaks every MAC after it. With
``audit.key`` set the MAC is HMAC-SHA256 under that key: someone who can write to the
database but does not hold the key cannot rebuild a valid chain after an edit. Without a key it
is plain SHA-256, which still catches accidents and careless edits but not a writer who
recomputes the chain; the server warns at start.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import replace

import orjson

from ratewire.audit.entry import AuditEntry, AuditRecord

#: The "previous MAC" of the first entry.
GENESIS = "0" * 64


class AuditChain:
    """Seals records into the chain and checks stored entries."""

    def __init__(self, key: str | None) -> None:
        self._key = key.encode() if key else None

    @property
    def keyed(self) -> bool:
        return self._key is not None

    def _mac(self, previous: str, canonical: bytes) -> str:
        message = previous.encode() + b"\n" + canonical
        if self._key is None:
            return hashlib.sha256(message).hexdigest()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    @staticmethod
    def _canonical(
        seq: int,
        at_ms: int,
        action: str,
        actor: str | None,
        scopes: str,
        ip: str | None,
        request_id: str | None,
        rating_id: str | None,
        detail_text: str,
    ) -> bytes:
        return orjson.dumps(
            [seq, at_ms, action, actor, scopes, ip, request_id, rating_id, detail_text]
        )

    def seal(self, previous: str, seq: int, record: AuditRecord) -> AuditEntry:
        """``record`` as the entry at ``seq`` after the entry whose MAC is ``previous``."""
        context = record.context
        unsealed = AuditEntry(
            seq,
            record.at_ms,
            record.action,
            context.actor,
            context.scopes,
            context.ip,
            context.request_id,
            record.rating_id,
            record.detail_text(),
            "",
        )
        return replace(unsealed, mac=self.expected_mac(previous, unsealed))

    def expected_mac(self, previous: str, entry: AuditEntry) -> str:
        """The MAC ``entry`` must carry if it follows the entry whose MAC is ``previous``."""
        canonical = self._canonical(
            entry.seq,
            entry.at_ms,
            entry.action,
            entry.actor,
            entry.scopes,
            entry.ip,
            entry.request_id,
            entry.rating_id,
            entry.detail_text,
        )
        return self._mac(previous, canonical)

    def verifies(self, previous: str, entry: AuditEntry) -> bool:
        return hmac.compare_digest(self.expected_mac(previous, entry), entry.mac)
