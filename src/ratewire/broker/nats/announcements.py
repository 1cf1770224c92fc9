"""Announcements through NATS (see :mod:`ratewire.broker.announcements`): a core NATS subject
carries each one to every instance at once, and a key-value bucket keeps every entry for
instances that (re)connect later, as the hash does on Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.errors import NoKeysError, NoStreamResponseError, NotFoundError
from nats.js.kv import KeyValue

from ratewire.broker.announcements import RevocationHandler, deliver_announced, deliver_kept
from ratewire.broker.base import translated
from ratewire.broker.nats import link as nats_link
from ratewire.config import BrokerSettings
from ratewire.security.revocation import Revocation

log = logging.getLogger("ratewire.broker")


class NatsAnnouncements:
    """Announcements on ``P.announcements``, with the entries kept in ``P_revocations``."""

    def __init__(self, settings: BrokerSettings) -> None:
        self._settings = settings
        self._names = nats_link.NatsNames(settings.prefix)
        self._nc: NatsClient | None = None
        self._kept: KeyValue | None = None
        self._handler: RevocationHandler | None = None
        self._reload: asyncio.Task[None] | None = None

    async def start(self, on_revocation: RevocationHandler) -> None:
        self._handler = on_revocation
        # nats-py subscribes again by itself after a reconnect; what was announced while
        # this instance was away is read from the bucket then.
        with translated("NATS", nats_link.UNREACHABLE):
            self._nc = await nats_link.connect(
                self._settings, "announcements", on_reconnect=self._on_reconnect
            )
            await self._nc.subscribe(self._names.announcements, cb=self._on_message)
            self._kept = await self._bucket()
            await self._load_kept()

    async def _bucket(self) -> KeyValue:
        assert self._nc is not None
        return await nats_link.bucket(
            self._nc, self._names.revocations_bucket, replicas=self._settings.replicas
        )

    async def announce(self, revocation: Revocation) -> None:
        payload = orjson.dumps(revocation.to_wire())
        assert self._nc is not None and self._kept is not None, "start() first"
        with translated("NATS", nats_link.UNREACHABLE):
            if not self._nc.is_connected:
                # nats-py would hold the message until it reconnects: the caller should know.
                raise ConnectionError("not connected (reconnecting)")
            try:
                await self._kept.put(nats_link.bucket_key(revocation.key), payload)
            except NoStreamResponseError:  # NATS lost the bucket (a wiped store): make it again
                self._kept = await self._bucket()
                await self._kept.put(nats_link.bucket_key(revocation.key), payload)
            await self._nc.publish(self._names.announcements, payload)
            await self._nc.flush(timeout=5)

    async def close(self) -> None:
        if self._reload is not None:
            self._reload.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload
        if self._nc is not None:
            with contextlib.suppress(NatsError, OSError):
                await self._nc.close()

    async def _on_reconnect(self) -> None:
        self._reload = asyncio.create_task(self._load_kept(), name="announcements-reload")

    async def _on_message(self, msg: Msg) -> None:
        deliver_announced(msg.data, self._handler)

    async def _load_kept(self) -> None:
        kept = self._kept
        assert kept is not None
        try:
            keys = await kept.keys()
        except NoKeysError:
            return
        except NotFoundError:  # NATS lost the bucket (a wiped store): nothing was kept
            self._kept = await self._bucket()
            return
        except nats_link.UNREACHABLE as exc:
            log.warning("announcements: cannot read the kept revocations (%s)", exc)
            return
        entries = []
        for key in keys:
            with contextlib.suppress(NotFoundError):
                entries.append((key, (await kept.get(key)).value or b""))
        for key in deliver_kept(entries, self._handler):
            with contextlib.suppress(NotFoundError):
                await kept.purge(key)
