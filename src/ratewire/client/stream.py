"""Follow one topic: connect, subscribe, yield updates; on a dropped connection reconnect and
resume with ``since`` (and the epoch), so no update is missed or repeated."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

#: Close codes after which reconnecting cannot help.
FINAL_CLOSE_CODES = {4001: "authentication failed", 4002: "token expired"}


class StreamClosed(Exception):
    """The server ended the stream for good (bad or expired token, refused topic)."""


async def rating_updates(
    url: str,
    token: str | Callable[[], str],
    topic: str,
    *,
    since: int | None = None,
    max_backoff: float = 10.0,
) -> AsyncIterator[dict[str, Any]]:
    """Yield every ``rating_update`` frame of ``topic`` (after offset ``since`` if given),
    reconnecting with exponential backoff. A frame of type ``resync`` is yielded when the
    server's history could not cover the gap (``recovered: false``): re-read state via REST.

    ``token`` may be a callable that returns a fresh token: it is called for every connection,
    and a connection closed because its token expired (4002) then reconnects and resumes
    instead of ending the stream (tokens live at most ``jwt.max_ttl_seconds``)."""
    separator = "&" if "?" in url else "?"
    last, epoch, backoff = since, None, 0.5
    while True:
        current = token() if callable(token) else token
        try:
            async with connect(f"{url}{separator}token={current}", compression=None) as ws:
                hello = orjson.loads(await ws.recv())
                if hello.get("type") != "connection_success":
                    raise StreamClosed(f"unexpected first frame: {hello}")
                request: dict[str, Any] = {"action": "subscribe", "topic": topic}
                if last is not None:
                    request["since"] = last
                    if epoch is not None:
                        request["epoch"] = epoch
                await ws.send(orjson.dumps(request).decode())
                backoff = 0.5
                async for raw in ws:
                    frame = orjson.loads(raw)
                    kind = frame.get("type")
                    if kind == "rating_update":
                        last = frame["offset"]
                        yield frame
                    elif kind == "subscribed":
                        epoch = frame.get("epoch")
                        if frame.get("recovered") is False:
                            last = frame["offset"]
                            yield {"type": "resync", "topic": topic, "offset": last}
                    elif kind == "error" and frame.get("code") in ("forbidden", "unknown_topic"):
                        raise StreamClosed(f"{topic}: {frame.get('message')}")
        except ConnectionClosed as closed:
            renewable = callable(token) and closed.rcvd is not None and closed.rcvd.code == 4002
            if closed.rcvd is not None and closed.rcvd.code in FINAL_CLOSE_CODES and not renewable:
                reason = FINAL_CLOSE_CODES[closed.rcvd.code]
                raise StreamClosed(f"{reason} ({closed.rcvd.reason})") from None
        except InvalidStatus as refused:
            if refused.response.status_code not in (429, 503):  # busy: retry later
                raise StreamClosed(
                    f"upgrade refused: HTTP {refused.response.status_code}"
                ) from None
        except OSError:
            pass  # server unreachable: retry
        await asyncio.sleep(backoff)
        backoff = min(max_backoff, backoff * 2)
