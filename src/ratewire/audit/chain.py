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
        # Keyed once; each MAC copies the keyed state instead of keying again.
        self._keyed = hmac.new(self._key, digestmod=hashlib.sha256) if self._key else None

    @property
    def keyed(self) -> bool:
        return self._key is not None

    def _mac(self, previous: str, canonical: bytes) -> str:
        message = previous.encode() + b"\n" + canonical
        if self._keyed is None:
            return hashlib.sha256(message).hexdigest()
        mac = self._keyed.copy()
        mac.update(message)
        return mac.hexdigest()

    @staticmethod
    def _canonical(entry: AuditEntry, detail: bytes) -> bytes:
        # The fields but the detail and the MAC as one JSON array, a newline, then the
        # detail's JSON as stored: no raw newline can occur inside the array (JSON escapes
        # it), so the split is unambiguous, and the detail is not escaped a second time.
        return orjson.dumps(entry.values()[:-2]) + b"\n" + detail

    def seal(self, previous: str, seq: int, record: AuditRecord) -> AuditEntry:
        """``record`` as the entry at ``seq`` after the entry whose MAC is ``previous``."""
        context = record.context
        detail = record.detail_json()
        unsealed = AuditEntry(
            seq,
            record.at_ms,
            record.action,
            context.actor,
            context.scopes,
            context.ip,
            context.request_id,
            record.rating_id,
            detail.decode(),
            "",
        )
        mac = self._mac(previous, self._canonical(unsealed, detail))
        return replace(unsealed, mac=mac)

    def expected_mac(self, previous: str, entry: AuditEntry) -> str:
        """The MAC ``entry`` must carry if it follows the entry whose MAC is ``previous``."""
        return self._mac(previous, self._canonical(entry, entry.detail_text.encode()))

    def verifies(self, previous: str, entry: AuditEntry) -> bool:
        return hmac.compare_digest(self.expected_mac(previous, entry), entry.mac)
