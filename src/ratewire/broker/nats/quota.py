"""The shared REST quota's counts in a NATS key-value bucket (see
:mod:`ratewire.security.quota_lease`): ``P_quota``, one entry per client and minute window,
expiring after two windows. A chunk is carved out with compare-and-set on the entry's
revision; instances that lease for one client at the same moment retry."""

from __future__ import annotations

from collections.abc import Callable

from nats.aio.client import Client as NatsClient
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
)
from nats.js.kv import KeyValue

from ratewire.broker.nats import link as nats_link
from ratewire.broker.nats.link import NatsNames
from ratewire.config import BrokerSettings
from ratewire.security.quota_lease import WINDOW_SECONDS, ChunkStoreUnavailable

#: Compare-and-set rounds before a lease gives up (and the request is let through).
CAS_ATTEMPTS = 8


class NatsQuotaChunks:
    """Counts in ``P_quota`` through the broker's connection (``client()``, once connected)."""

    def __init__(self, settings: BrokerSettings, client: Callable[[], NatsClient]) -> None:
        self._bucket_name = NatsNames(settings.prefix).quota_bucket
        self._replicas = settings.replicas
        self._client = client
        self._kv: KeyValue | None = None

    async def lease(
        self, key: str, window: int, previous_weight: int, limit: int, chunk_max: int
    ) -> tuple[int, int]:
        client = self._client()
        if not client.is_connected:
            raise ChunkStoreUnavailable("NATS is not connected (reconnecting)")
        name = nats_link.bucket_key(key)
        try:
            kv = await self._bucket(client)
            for _ in range(CAS_ATTEMPTS):
                previous, _ = await self._count(kv, f"{name}.{window - 1}")
                current, revision = await self._count(kv, f"{name}.{window}")
                left = limit - previous * previous_weight // 1000 - current
                if left <= 0:
                    return 0, 0
                grant = min(chunk_max, max(1, left // 4), left)
                try:
                    await kv.update(
                        f"{name}.{window}", str(current + grant).encode(), last=revision
                    )
                except KeyWrongLastSequenceError:
                    continue  # another instance leased for this client meanwhile
                return grant, left - grant
        except NoStreamResponseError as exc:
            self._kv = None  # NATS lost the bucket (a wiped store): made again next time
            raise ChunkStoreUnavailable("the quota bucket is gone") from exc
        except nats_link.UNREACHABLE as exc:
            raise ChunkStoreUnavailable(str(exc) or type(exc).__name__) from exc
        raise ChunkStoreUnavailable(f"{CAS_ATTEMPTS} instances at once leasing for one client")

    async def _bucket(self, client: NatsClient) -> KeyValue:
        if self._kv is None:
            self._kv = await nats_link.bucket(
                client,
                self._bucket_name,
                replicas=self._replicas,
                ttl=2 * WINDOW_SECONDS,
                api_timeout=2,
            )
        return self._kv

    @staticmethod
    async def _count(kv: KeyValue, key: str) -> tuple[int, int]:
        """(the count, its revision); (0, 0) when there is none."""
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return 0, 0
        return int(entry.value or b"0"), int(entry.revision or 0)

    async def close(self) -> None:
        return None  # the connection is the broker's
