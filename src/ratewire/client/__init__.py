"""The ratewire Python client (asyncio, typed): follow topics exactly once across reconnects,
and use the REST API. Reference: docs/client.md.

    from ratewire.client import Client

    async with Client("ws://localhost:8081/", token=token) as client:
        async for update in client.subscribe("rating.game.42"):
            print(update.offset, update.event, update.rating.score)
"""

from ratewire.client.api import KEEP, Client, rest_url_for
from ratewire.client.connection import TokenProvider
from ratewire.client.consumers import ConsumedUpdate, Consumer
from ratewire.client.models import (
    ApiError,
    AuthenticationError,
    BadRequest,
    Conflict,
    Forbidden,
    Gap,
    GapError,
    HistoryPage,
    NotFound,
    PreconditionFailed,
    RateLimited,
    RatewireError,
    Rating,
    ServerUnavailable,
    Snapshot,
    SubscriptionRefused,
    Summary,
    SummaryUpdate,
    Unauthorized,
    Update,
)
from ratewire.client.stream import StreamClosed, rating_updates
from ratewire.client.sync import SyncClient

__all__ = [
    "KEEP",
    "ApiError",
    "AuthenticationError",
    "BadRequest",
    "Client",
    "Conflict",
    "ConsumedUpdate",
    "Consumer",
    "Forbidden",
    "Gap",
    "GapError",
    "HistoryPage",
    "NotFound",
    "PreconditionFailed",
    "RateLimited",
    "RatewireError",
    "Rating",
    "ServerUnavailable",
    "Snapshot",
    "StreamClosed",
    "SubscriptionRefused",
    "Summary",
    "SummaryUpdate",
    "SyncClient",
    "TokenProvider",
    "Unauthorized",
    "Update",
    "rating_updates",
    "rest_url_for",
]
