"""What an instance does in the background besides serving: history and audit retention, and
the one-time warnings about how the audit log is set up."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from ratewire.audit import AuditContext, AuditRecord
from ratewire.config import Settings
from ratewire.domain import epoch_ms
from ratewire.storage import RatingStore

log = logging.getLogger("ratewire")
#: How often audit retention runs (each run that removes entries adds a checkpoint entry).
AUDIT_PRUNE_SECONDS = 3600.0


def announce_audit_mode(settings: Settings, has_store: bool) -> None:
    """Warn once, at start, where the audit log is off or weaker than it should be."""
    audit = settings.audit
    if not audit.enabled:
        log.warning("audit log off (audit.enabled: false): changes are not recorded")
    elif not has_store:
        log.warning(
            "audit: this instance has no database, so its WebSocket connects, disconnects "
            "and refused tokens are not recorded (changes are, by the api instances)"
        )
    elif not audit.key or len(audit.key.encode()) < 32:
        log.warning(
            "audit.key is not set (or shorter than 32 bytes): the audit chain is plain "
            "SHA-256, so whoever can write to the database could rebuild it after an edit; "
            "set a 32+ byte RATEWIRE_AUDIT__KEY"
        )


async def prune_audit(store: RatingStore, retention_days: float) -> None:
    """Remove audit entries older than ``retention_days``, leaving a checkpoint entry."""
    cutoff = datetime.now(UTC) - timedelta(days=retention_days)
    record = AuditRecord.now(
        "audit.pruned", AuditContext(actor="ratewire"), retentionDays=retention_days
    )
    removed = await store.prune_audit(epoch_ms(cutoff), record)
    if removed:
        log.info("pruned %d audit entries older than %g days", removed, retention_days)


async def prune_forever(store: RatingStore, settings: Settings, *, audit: bool) -> None:
    """Keep history within ``history.*`` (and the audit log within its retention, if
    ``audit``) until cancelled; a failed pass is logged and retried."""
    history = settings.history
    audit_pruned_at = -AUDIT_PRUNE_SECONDS
    while True:
        retention_days = settings.audit.retention_days
        if (
            audit
            and retention_days > 0
            and time.monotonic() - audit_pruned_at >= AUDIT_PRUNE_SECONDS
        ):
            audit_pruned_at = time.monotonic()
            try:
                await prune_audit(store, retention_days)
            except Exception:
                log.exception("audit pruning failed; will retry")
        await asyncio.sleep(history.prune_interval_seconds)
        cutoff = datetime.now(UTC) - timedelta(seconds=history.max_age_seconds)
        try:
            removed = await store.prune_history(history.max_events_per_topic, cutoff)
        except Exception:
            log.exception("history pruning failed; will retry")
            continue
        if removed:
            log.info("pruned %d events from history", removed)
