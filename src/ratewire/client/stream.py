"""``rating_updates``: the first client API (dict frames, one topic), kept for the scripts
written against it; it runs on :class:`~ratewire.client.Client`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from ratewire.client.core import ClientCore
from ratewire.client.models import AuthenticationError, Gap, RatewireError, SubscriptionRefused


class StreamClosed(RatewireError):
    """The server ended the stream for good (bad or expired token, refused topic)."""


async def rating_updates(
    url: str,
    token: str | Callable[[], str],
    topic: str,
    *,
    since: int | None = None,
    max_backoff: float = 10.0,
) -> AsyncIterator[dict[str, Any]]:
    """Yield every ``rating_update`` frame of ``topic`` (after offset ``since`` if given) as
    the server sent it, reconnecting and resuming. A frame of type ``resync`` is yielded when
    the server's history could not cover the gap: re-read state via REST.

    ``token`` may be a callable returning a fresh token (then tokens are renewed before they
    expire). New code: :class:`~ratewire.client.Client` gives typed updates."""
    provider = token if callable(token) else None
    fixed = None if callable(token) else token
    async with ClientCore(url, fixed, provider, max_backoff=max_backoff) as client:
        try:
            async for item in client.subscribe(topic, since):
                if isinstance(item, Gap):
                    yield {"type": "resync", "topic": topic, "offset": item.offset}
                else:
                    yield {
                        "type": "rating_update",
                        "topic": item.topic,
                        "offset": item.offset,
                        "event": item.event,
                        "data": item.data,
                    }
        except AuthenticationError as exc:
            reason = "authentication failed" if exc.code == 4001 else "token expired"
            raise StreamClosed(f"{reason} ({exc.reason})") from None
        except SubscriptionRefused as exc:
            raise StreamClosed(str(exc)) from None
