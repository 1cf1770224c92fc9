"""The connection to NATS that the broker and the announcements each hold, and the names
ratewire uses there.

Names (``P`` is ``broker.prefix``, ``E`` the store's epoch):

- stream ``P_E``, subjects ``P.E.ev.{gameId}.{userId}``: every event, one message each. The
  whole stream is the global topic; ``P.E.ev.{gameId}.*`` is a game's topic and
  ``P.E.ev.*.{userId}`` a user's (identifiers are ``[A-Za-z0-9_-]``, valid subject tokens).
- key-value bucket ``P_cluster``: ``epoch``, the epoch being published (read by instances that
  have no database).
- key-value bucket ``P_lease``: ``relay``, the relay lease (the bucket's entries expire after
  ``broker.lease_seconds`` unless renewed).
- key-value bucket ``P_revocations`` and subject ``P.announcements``: the deny list.
- key-value bucket ``P_quota``: the REST quota's counts (see broker.nats.quota).
"""

from __future__ import annotations

import base64
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from ratewire.config import BrokerSettings

#: nats-py's errors (and the socket's, and timeouts) that mean NATS could not be reached or
#: answered late: translated into BrokerUnavailable where they leave the broker.
UNREACHABLE: tuple[type[BaseException], ...] = (NatsError, OSError, TimeoutError)

log = logging.getLogger("ratewire.broker")

#: How often the client pings the server: a server that stopped answering (paused, or its
#: host gone) is noticed within two pings, and the client reconnects.
PING_INTERVAL_SECONDS = 2
#: Tries of each server before a start gives up on NATS.
FIRST_CONNECT_ATTEMPTS = 3


@dataclass(frozen=True)
class NatsNames:
    """Where ratewire's data lives in NATS."""

    prefix: str

    def stream(self, epoch: str) -> str:
        return f"{self.prefix}_{epoch}"

    def events(self, epoch: str) -> str:
        """The subject filter of every event."""
        return f"{self.prefix}.{epoch}.ev.>"

    def event_subject(self, epoch: str, game_id: str, user_id: str) -> str:
        return f"{self.prefix}.{epoch}.ev.{game_id}.{user_id}"

    def game_filter(self, epoch: str, game_id: str) -> str:
        return f"{self.prefix}.{epoch}.ev.{game_id}.*"

    def user_filter(self, epoch: str, user_id: str) -> str:
        return f"{self.prefix}.{epoch}.ev.*.{user_id}"

    @property
    def cluster_bucket(self) -> str:
        return f"{self.prefix}_cluster"

    @property
    def lease_bucket(self) -> str:
        return f"{self.prefix}_lease"

    @property
    def quota_bucket(self) -> str:
        return f"{self.prefix}_quota"

    @property
    def revocations_bucket(self) -> str:
        return f"{self.prefix}_revocations"

    @property
    def announcements(self) -> str:
        return f"{self.prefix}.announcements"


async def bucket(
    client: NatsClient,
    name: str,
    *,
    replicas: int,
    ttl: float | None = None,
    api_timeout: float = 5,
) -> KeyValue:
    """The key-value bucket ``name`` (one value per key), made if it does not exist yet."""
    js = client.jetstream(timeout=api_timeout)
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        return await js.create_key_value(bucket=name, history=1, ttl=ttl, replicas=replicas)


def bucket_key(text: str) -> str:
    """``text`` as a key-value key (keys allow fewer characters than token ids or IPs)."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def tls_context(settings: BrokerSettings) -> ssl.SSLContext | None:
    """The TLS settings as nats-py takes them (None: TLS only if a ``tls://`` URL asks)."""
    if not (settings.tls_ca_file or settings.tls_cert_file):
        return None
    context = ssl.create_default_context(cafile=settings.tls_ca_file)
    if settings.tls_cert_file:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


async def connect(
    settings: BrokerSettings,
    purpose: str,
    *,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
) -> NatsClient:
    """A connection that reconnects by itself, forever, whichever server of the cluster
    answers (nats-py re-subscribes its subscriptions after each reconnect, then calls
    ``on_reconnect``)."""
    servers = [url.strip() for url in settings.resolved_url().split(",") if url.strip()]
    state = {"down": False}

    async def on_error(exc: Exception) -> None:
        log.debug("NATS (%s): %s", purpose, exc)

    async def on_disconnect() -> None:
        if not state["down"]:
            state["down"] = True
            log.warning("NATS unreachable (%s); reconnecting", purpose)

    async def reconnected() -> None:
        state["down"] = False
        log.info("NATS reachable again (%s)", purpose)
        if on_reconnect is not None:
            await on_reconnect()

    context = tls_context(settings)
    client = await nats.connect(
        servers,
        name=f"ratewire {purpose}",
        connect_timeout=2,
        allow_reconnect=True,
        # nats-py's first connect runs its reconnect loop: bounded, so a start with NATS
        # unreachable fails with the reason instead of waiting forever; once connected it
        # reconnects forever (the option is read on every attempt).
        max_reconnect_attempts=FIRST_CONNECT_ATTEMPTS,
        reconnect_time_wait=0.25,
        ping_interval=PING_INTERVAL_SECONDS,
        max_outstanding_pings=2,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=reconnected,
        user_credentials=settings.credentials_file,
        nkeys_seed=settings.nkey_seed_file,
        **({"tls": context} if context is not None else {}),
    )
    client.options["max_reconnect_attempts"] = -1
    return client
