"""The cluster broker, announcements and shared quota counts that ``broker.backend`` names."""

from __future__ import annotations

from ratewire.broker.announcements import Announcements
from ratewire.broker.base import ClusterBroker
from ratewire.config import Settings
from ratewire.security.quota_lease import ChunkStore


def open_cluster_broker(settings: Settings) -> tuple[ClusterBroker, Announcements]:
    """The broker every instance shares and the announcements beside it (imports the
    driver: Settings.deployment_problem() has checked its extra is installed)."""
    broker = settings.broker
    if broker.backend == "nats":
        from ratewire.broker.nats.announcements import NatsAnnouncements
        from ratewire.broker.nats.broker import NatsBroker

        return NatsBroker(broker), NatsAnnouncements(broker)
    if broker.backend == "redis":
        from ratewire.broker.redis.announcements import RedisAnnouncements
        from ratewire.broker.redis.broker import RedisBroker

        url = broker.resolved_url()
        return (
            RedisBroker(
                url,
                prefix=broker.prefix,
                max_events=settings.history.max_events_per_topic,
                lease_seconds=broker.lease_seconds,
            ),
            RedisAnnouncements(url, prefix=broker.prefix),
        )
    raise ValueError(f"broker.backend {broker.backend!r} is not a cluster broker")


def open_quota_chunks(settings: Settings, broker: ClusterBroker | None) -> ChunkStore | None:
    """Where the instances of a cluster count each client's REST requests together: the
    broker's Redis, or a key-value bucket on the broker's NATS connection. None on a single
    node (each process counts alone)."""
    if broker is None:
        return None
    if settings.broker.backend == "nats":
        from ratewire.broker.nats.broker import NatsBroker
        from ratewire.broker.nats.quota import NatsQuotaChunks

        assert isinstance(broker, NatsBroker)
        return NatsQuotaChunks(settings.broker, broker.client)
    from ratewire.broker.redis.quota import RedisQuotaChunks

    return RedisQuotaChunks(settings.broker.resolved_url())
