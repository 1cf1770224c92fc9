"""Revoking tokens across the deployment: keep the entry in the store, take it into this
instance's deny list, announce it to every other instance, and close the live connections it
covers (4001 ``Token revoked``), everywhere, within milliseconds.

The store is the record (it survives restarts); announcements are the fast path. The store is
also read again every ``poll_seconds``, which bounds how late an instance can learn of an
entry whose announcement it missed, and is how processes sharing a store without a cluster
broker (``--workers`` on a local broker) learn of each other's revocations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ratewire.audit import AuditContext
from ratewire.broker.announcements import Announcements
from ratewire.broker.base import BrokerUnavailable
from ratewire.security.revocation import Revocation, RevocationKind
from ratewire.security.tokens import TokenService
from ratewire.storage.base import RatingStore, StorageError

log = logging.getLogger("ratewire.revocations")
RevokedHandler = Callable[[Revocation], None]


class RevocationService:
    """The deny list's life cycle on one instance."""

    def __init__(
        self,
        tokens: TokenService,
        store: RatingStore | None,
        announcements: Announcements,
        on_revoked: RevokedHandler,
        *,
        poll_seconds: float,
    ) -> None:
        self._tokens = tokens
        self._deny = tokens.deny_list
        self._store = store
        self._announcements = announcements
        self._on_revoked = on_revoked
        self._poll_seconds = poll_seconds
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the entries in force, then follow announcements and the store."""
        if self._store is not None:
            await self._reload()
        await self._announcements.start(self._take)
        if self._store is not None:
            self._poller = asyncio.create_task(self._poll_forever(), name="revocation-poller")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self._announcements.close()

    async def revoke(
        self,
        kind: RevocationKind,
        value: str,
        *,
        by: str | None,
        reason: str | None,
        audit: AuditContext | None = None,
    ) -> Revocation:
        """Revoke one token (``jti``) or every token of a user issued until now (``sub``).
        Effective here when this returns; on other instances within milliseconds."""
        now = time.time()
        revocation = Revocation(
            kind=kind,
            value=value,
            revoked_at=now,
            expires_at=now + self._tokens.max_lifetime,
            revoked_by=by,
            reason=reason,
        )
        if self._store is not None:
            # One transaction with its audit entry. StorageError: nothing revoked.
            await self._store.add_revocation(revocation, audit)
        self._take(revocation)
        try:
            await self._announcements.announce(revocation)
        except BrokerUnavailable as exc:
            # Stored and in force here; the others read it from the store at their next poll.
            log.warning(
                "revocation of %s stored, but could not be announced (%s): other instances "
                "apply it within %.0f s",
                revocation.key,
                exc,
                self._poll_seconds,
            )
        log.info("revoked %s (by %s)", revocation.key, by or "unknown")
        return revocation

    def entries(self) -> list[Revocation]:
        """The revocations in force, newest first."""
        self._deny.prune()
        return self._deny.entries()

    def _take(self, revocation: Revocation) -> None:
        if self._deny.add(revocation):
            self._on_revoked(revocation)

    async def _reload(self) -> None:
        assert self._store is not None
        for revocation in await self._store.revocations(time.time()):
            self._take(revocation)
        self._deny.prune()

    async def _poll_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                await self._reload()
            except StorageError as exc:
                if not failing:
                    log.warning("cannot read revocations from storage (%s); will retry", exc)
                failing = True
            else:
                failing = False
