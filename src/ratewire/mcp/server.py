"""``ratewire mcp``: a Model Context Protocol server over a running ratewire, for AI agents.

Tools read and write through the REST API (:class:`~ratewire.client.Client`); the resource
``rating://games/{game_id}/summary`` is a game's live summary. Subscriptions are driven by
the WebSocket stream, not by polling: the server follows ``rating.game.*`` and publishes a
resource-updated event for a game's summary on each of its changes, which reaches every MCP
client listening for that URI (``subscriptions/listen``, MCP 2026-07-28) as
``notifications/resources/updated``. Clients still on a handshake-era protocol version (up to
2025-11-25) subscribe with ``resources/subscribe`` instead and are sent the same notification
on their session. ``rating://games/{game_id}/summary/every/{interval_ms}`` is the same
resource with notifications at most once per interval (:mod:`ratewire.mcp.paced`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from typing import Any

from mcp import types
from mcp.server import MCPServer, ServerRequestContext
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.settings import AuthSettings
from mcp.server.connection import Connection
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated
from mcp.shared.exceptions import MCPError
from pydantic import AnyHttpUrl

from ratewire import __version__
from ratewire.client import Client, Gap, HistoryPage, RatewireError, Rating, Summary, Update
from ratewire.client.connection import TokenProvider
from ratewire.config import McpSettings, TlsSettings
from ratewire.mcp.auth import (
    BareChallenge,
    RatewireTokenVerifier,
    metadata_routes,
    read_only,
    resource_url,
    transport_security,
)
from ratewire.mcp.paced import PACED_PATTERN, PACED_URI, PacedSummaries, interval_problem

log = logging.getLogger("ratewire.mcp")

SUMMARY_URI = "rating://games/{game_id}/summary"
#: watch_events' bounds: one call waits at most this long and returns at most this many.
WATCH_MAX_SECONDS = 60.0
WATCH_MAX_EVENTS = 500
#: How long watch_events waits for more once the first event came (a burst in one answer).
WATCH_LINGER_SECONDS = 0.25
#: Callers' REST clients kept at once over HTTP (the least recently used are closed).
MAX_CALLER_CLIENTS = 256
SUMMARY_URI_PATTERN = re.compile(r"rating://games/[^/]+/summary")
INSTRUCTIONS = """ratewire holds users' 1-5 ratings of games. Read a game's summary (count,
mean, Bayesian mean, histogram), the top games, recent ratings of a game or a user, and a
topic's change history; submit a rating. Subscribe to rating://games/{id}/summary to be told
when that game's ratings change. watch_events waits for a topic's next changes that pass a
filter (a CEL expression such as data.score <= 2) and returns them with the offset to go on
from. Or to rating://games/{id}/summary/every/{ms} to be told at most once every {ms}
milliseconds (50 or more)."""


def summary_uri(game_id: str) -> str:
    return SUMMARY_URI.format(game_id=game_id)


def _summary(summary: Summary) -> dict[str, Any]:
    return {
        "gameId": summary.game_id,
        "count": summary.count,
        "mean": summary.mean,
        "bayesianMean": summary.bayesian_mean,
        "histogram": {str(score): n for score, n in summary.histogram.items()},
    }


def _rating(rating: Rating) -> dict[str, Any]:
    fields = asdict(rating)
    for key in ("created_at", "updated_at"):
        fields[key] = fields[key].isoformat()
    return fields


def _history(page: HistoryPage) -> dict[str, Any]:
    return {
        "topic": page.topic,
        "head": page.head,
        "epoch": page.epoch,
        "events": [
            {"offset": u.offset, "event": u.event, "rating": _rating(u.rating)}
            for u in page.updates
        ],
    }


class RatewireMCP:
    """The MCP server of one ratewire: its tools, its resource, and the stream follower."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        *,
        rest_url: str | None = None,
        resource: str | None = None,
        authorization_servers: Sequence[str] = (),
    ) -> None:
        """``resource`` (the endpoint's public URL) makes it a resource server: every HTTP
        request needs a ratewire token, and each caller's tools run with its own token. The
        server's own token (``token``/``token_provider``) then only follows the stream for
        resource notifications; without ``resource`` (stdio) every call uses it."""
        self.client = Client(url, token, token_provider, rest_url=rest_url)
        self._url, self._rest_url = url, self.client.rest_url
        self._callers: OrderedDict[str, Client] = OrderedDict()
        self.bus = InMemorySubscriptionBus()
        self.verifier: RatewireTokenVerifier | None = None
        auth: AuthSettings | None = None
        if resource is not None:
            self.verifier = RatewireTokenVerifier(self._rest_url)
            auth = AuthSettings(
                issuer_url=AnyHttpUrl((list(authorization_servers) or [self._rest_url])[0]),
                resource_server_url=AnyHttpUrl(resource),
                # The verifier's answer comes from ratewire, which issued the token for it.
                validate_token_resource=False,
            )
        self.server: MCPServer[None] = MCPServer(
            "ratewire",
            version=__version__,
            instructions=INSTRUCTIONS,
            subscriptions=self.bus,
            lifespan=self._lifespan,
            token_verifier=self.verifier,
            auth=auth,
        )
        self._follower: asyncio.Task[None] | None = None
        # Handshake-era client connections by the URI they subscribed to with
        # resources/subscribe; held weakly, since a connection that ends is never said to
        # (a notification to it is dropped, not refused).
        self._legacy_subscribers: dict[str, weakref.WeakSet[Connection]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.paced = PacedSummaries(self.client, self._notify)
        self._register()
        self._serve_legacy_subscriptions()
        self._serve_paced_listens()

    @contextlib.asynccontextmanager
    async def _lifespan(self, _: MCPServer[None]) -> AsyncIterator[None]:
        if self._follower is None or self._follower.done():
            self._follower = asyncio.create_task(self._follow(), name="ratewire-mcp-follow")
        yield None

    async def _follow(self) -> None:
        """Tell listeners of a game's summary each time the game's ratings change."""
        try:
            async for item in self.client.subscribe("rating.game.*"):
                if isinstance(item, Update):
                    uri = summary_uri(item.rating.game_id)
                    await self.bus.publish(ResourceUpdated(uri=uri))
                    await self._notify_legacy_subscribers(uri)
                elif isinstance(item, Gap):  # some changes were not seen: any summary may be stale
                    log.warning("stream gap on %s; summaries may have changed unseen", item.topic)
        except RatewireError as exc:
            log.error("ratewire stream ended: %s; summary notifications stop", exc)

    async def _notify(self, uri: str) -> None:
        await self.bus.publish(ResourceUpdated(uri=uri))
        await self._notify_legacy_subscribers(uri)

    def _serve_paced_listens(self) -> None:
        """Start a paced URI's summary stream with its first ``subscriptions/listen`` and end
        it with its last: around the SDK's own handler, which serves the stream."""
        lowlevel = self.server._lowlevel_server
        entry = lowlevel.get_request_handler("subscriptions/listen")
        if entry is None:
            return
        serve = entry.handler

        async def listen(ctx: ServerRequestContext[Any, Any], params: Any) -> Any:
            uris = [str(uri) for uri in (params.notifications.resource_subscriptions or ())]
            for uri in uris:
                self.paced.acquire(uri)
            try:
                return await serve(ctx, params)
            finally:
                for uri in uris:
                    self.paced.release(uri)

        lowlevel.add_request_handler("subscriptions/listen", entry.params_type, listen)

    async def _notify_legacy_subscribers(self, uri: str) -> None:
        for connection in list(self._legacy_subscribers.get(uri, ())):
            await connection.send_resource_updated(uri)  # never raises: dropped if it has gone

    def _serve_legacy_subscriptions(self) -> None:
        """Answer ``resources/subscribe`` and ``resources/unsubscribe`` for clients that
        negotiated a handshake-era protocol version (the modern wire uses
        ``subscriptions/listen``, which :class:`MCPServer` serves from :attr:`bus`)."""

        def connection_of(ctx: ServerRequestContext[Any, Any]) -> Connection:
            # Each request gets its own ServerSession; the Connection under it is the client's
            # for as long as it stays, and the SDK keeps no public path to it from here.
            connection: Connection = ctx.session._connection
            return connection

        def checked_uri(uri: object) -> str:
            text = str(uri)
            if (
                SUMMARY_URI_PATTERN.fullmatch(text) is None
                and PACED_PATTERN.fullmatch(text) is None
            ):
                raise MCPError(
                    types.INVALID_PARAMS,
                    f"cannot subscribe to {uri}: only rating://games/{{game_id}}/summary and "
                    "rating://games/{game_id}/summary/every/{interval_ms}",
                )
            problem = interval_problem(text)
            if problem is not None:
                raise MCPError(types.INVALID_PARAMS, problem)
            return text

        async def subscribe(
            ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
        ) -> types.EmptyResult:
            uri = checked_uri(params.uri)
            subscribers = self._legacy_subscribers.setdefault(uri, weakref.WeakSet())
            connection = connection_of(ctx)
            if connection not in subscribers:
                subscribers.add(connection)
                self.paced.acquire(uri)
            return types.EmptyResult()

        async def unsubscribe(
            ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
        ) -> types.EmptyResult:
            subscribers = self._legacy_subscribers.get(str(params.uri))
            connection = connection_of(ctx)
            if subscribers is not None and connection in subscribers:
                subscribers.discard(connection)
                self.paced.release(str(params.uri))
            return types.EmptyResult()

        # MCPServer has no public hook for these two (the modern protocol dropped them); the
        # low-level server it wraps takes them like any other method.
        lowlevel = self.server._lowlevel_server
        lowlevel.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
        lowlevel.add_request_handler(
            "resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe
        )

    async def close(self) -> None:
        await self.paced.close()
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        for caller in self._callers.values():
            await caller.close()
        if self.verifier is not None:
            await self.verifier.close()
        await self.client.close()

    def caller_client(self) -> Client:
        """The REST client of this request's caller: its own token over HTTP (so ratings,
        permissions, rate limits and audit entries are the caller's), the server's on stdio."""
        access = get_access_token()
        if access is None:
            return self.client
        client = self._callers.get(access.token)
        if client is None:
            client = self._callers[access.token] = Client(
                self._url, access.token, rest_url=self._rest_url
            )
            while len(self._callers) > MAX_CALLER_CLIENTS:
                _, gone = self._callers.popitem(last=False)
                task = asyncio.get_running_loop().create_task(gone.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        self._callers.move_to_end(access.token)
        return client

    def _register(self) -> None:
        self._register_reads_and_writes()
        self._register_streams()
        self._register_resources()

    def _register_reads_and_writes(self) -> None:
        """The tools over REST: summaries, top list, ratings, submitting one, history."""
        server, client = self.server, self.caller_client

        @server.tool()
        async def game_summary(game_id: str) -> dict[str, Any]:
            """A game's ratings at a glance: count, mean, Bayesian mean (pulled toward the
            prior while there are few ratings) and the 1-5 histogram."""
            return _summary(await client().summary(game_id))

        @server.tool()
        async def top_games(limit: int = 10, min_count: int = 1) -> list[dict[str, Any]]:
            """The best games by Bayesian mean (with at least ``min_count`` ratings)."""
            return [_summary(s) for s in await client().top_games(limit, min_count)]

        @server.tool()
        async def recent_ratings(
            game_id: str | None = None, user_id: str | None = None, limit: int = 20
        ) -> list[dict[str, Any]]:
            """The newest ratings of a game, of a user, or of a user for a game."""
            if game_id is None and user_id is None:
                raise ValueError("give game_id, user_id or both")
            ratings: list[dict[str, Any]] = []
            async for rating in client().list_ratings(
                game_id=game_id, user_id=user_id, page_size=min(limit, 500)
            ):
                ratings.append(_rating(rating))
                if len(ratings) >= limit:
                    break
            return ratings

        @server.tool()
        async def submit_rating(
            game_id: str, score: int, comment: str | None = None, user_id: str | None = None
        ) -> dict[str, Any]:
            """Rate a game from 1 to 5 (creates or replaces the rating of ``user_id``,
            by default the caller's own)."""
            access = get_access_token()
            if access is not None and read_only(access):
                raise ToolError(
                    "403 forbidden: submit_rating writes, and this token is read-only (scope "
                    "ratings:read); it needs a token without that scope or with ratings:write"
                )
            return _rating(await client().rate(game_id, score, comment, user_id=user_id))

        @server.tool()
        async def events_since(topic: str, since: int = 0, limit: int = 100) -> dict[str, Any]:
            """The changes of a topic (``rating.global``, ``rating.game.{id}``,
            ``rating.user.{id}``) after offset ``since``, oldest first; ``head`` is the
            topic's last offset."""
            return _history(await client().events(topic, since, limit))

    def _register_streams(self) -> None:
        """The tools that wait for changes: a filtered watch, and a durable consumer's queue."""
        server, client = self.server, self.caller_client

        @server.tool()
        async def watch_events(
            topic: str,
            filter: str | None = None,
            since: int | None = None,
            max_events: int = 20,
            wait_seconds: float = 10.0,
        ) -> dict[str, Any]:
            """Wait for a topic's changes that pass ``filter``, a CEL expression evaluated by
            the server over ``event``, ``topic``, ``offset`` and ``data.score``,
            ``data.gameId``, ``data.userId``, ``data.comment``, ``data.version`` (e.g.
            ``data.score <= 2 && event != "deleted"``). Returns up to ``max_events`` of them
            (after offset ``since``, else from now) soon after the first arrived, or none once
            ``wait_seconds`` passed; call again with ``since`` = the returned ``next`` to miss
            nothing."""
            return await _watch(client(), topic, filter, since, max_events, wait_seconds)

        @server.tool()
        async def fetch_ratings(
            consumer: str, topic: str = "rating.global", max: int = 10, wait_ms: int = 0
        ) -> dict[str, Any]:
            """Take the next rating changes from a durable consumer: a work queue the server
            keeps for this token, shared with every other agent using the same ``consumer``
            name (each change goes to one of them). Created from now on first use. Handle
            each, then call ack_ratings with their offsets; changes not acked within 30 s
            come back (``delivery`` counts the times)."""
            return {"events": await client().fetch_consumer(topic, consumer, max, wait_ms)}

        @server.tool()
        async def ack_ratings(
            consumer: str, offsets: list[int], topic: str = "rating.global"
        ) -> dict[str, Any]:
            """Mark rating changes taken with fetch_ratings as handled (by their offsets):
            they are never handed out again."""
            await client().ack_consumer(topic, consumer, offsets)
            return {"acked": sorted(set(offsets))}

    def _register_resources(self) -> None:
        """A game's summary as a resource, notified on change or at most once per interval."""
        server, client = self.server, self.caller_client

        @server.resource(
            SUMMARY_URI,
            name="game-summary",
            description="A game's live rating summary; subscribe to be told when it changes",
            mime_type="application/json",
        )
        async def game_summary_resource(game_id: str) -> dict[str, Any]:
            return _summary(await client().summary(game_id))

        @server.resource(
            PACED_URI,
            name="game-summary-paced",
            description="A game's live rating summary; subscribe to be told of its changes at "
            "most once every interval_ms milliseconds (50 or more)",
            mime_type="application/json",
        )
        async def paced_summary_resource(game_id: str, interval_ms: str) -> dict[str, Any]:
            return _summary(await client().summary(game_id))


async def _watch(
    client: Client,
    topic: str,
    expression: str | None,
    since: int | None,
    max_events: int,
    wait_seconds: float,
) -> dict[str, Any]:
    """watch_events: a filtered subscription for one tool call (see the tool's docstring)."""
    wait = min(max(wait_seconds, 0.0), WATCH_MAX_SECONDS)
    most = min(max(max_events, 1), WATCH_MAX_EVENTS)
    events: list[dict[str, Any]] = []
    gaps: list[dict[str, Any]] = []
    following = since
    updates = client.subscribe(topic, since, filter=expression)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(wait) as scope:
            async for item in updates:
                if isinstance(item, Gap):
                    gaps.append({"after": item.after, "offset": item.offset})
                    following = item.offset
                    continue
                events.append(
                    {
                        "topic": item.topic,
                        "offset": item.offset,
                        "event": item.event,
                        "rating": _rating(item.rating),
                    }
                )
                following = item.offset
                if len(events) >= most:
                    break
                if len(events) == 1:  # answer soon, with the rest of a burst
                    deadline = scope.when() or loop.time()
                    scope.reschedule(min(deadline, loop.time() + WATCH_LINGER_SECONDS))
    except TimeoutError:
        pass
    except (RatewireError, ValueError) as exc:  # refused, or a ValueError: the caller follows
        # this topic with another filter in a concurrent call
        raise ToolError(str(exc)) from None
    finally:
        await updates.aclose()  # type: ignore[attr-defined]
    answer: dict[str, Any] = {"topic": topic, "filter": expression, "events": events}
    answer["next"] = following
    if gaps:
        answer["gaps"] = gaps
    return answer


def run(
    url: str,
    token: str | None,
    token_provider: TokenProvider | None,
    *,
    rest_url: str | None = None,
    http_port: int | None = None,
    host: str = "127.0.0.1",
    mcp_settings: McpSettings | None = None,
    tls: TlsSettings | None = None,
) -> None:
    """Serve MCP on stdio, or on streamable HTTP at ``host:http_port`` (path ``/mcp``) as a
    resource server: bearer tokens on every request (see :mod:`ratewire.mcp.auth`)."""
    if http_port is None:
        RatewireMCP(url, token, token_provider, rest_url=rest_url).server.run("stdio")
        return
    import uvicorn

    mcp_settings = mcp_settings or McpSettings()
    tls = tls or TlsSettings()
    resource = resource_url(host, http_port, mcp_settings, tls)
    app = RatewireMCP(
        url,
        token,
        token_provider,
        rest_url=rest_url,
        resource=resource,
        authorization_servers=mcp_settings.authorization_servers,
    )
    starlette = app.server.streamable_http_app(
        transport_security=transport_security(host, mcp_settings), host=host
    )
    # The SDK's metadata names one authorization server; ours names every configured one.
    starlette.router.routes = [
        route
        for route in starlette.router.routes
        if not getattr(route, "path", "").startswith("/.well-known/oauth-protected-resource")
    ] + metadata_routes(resource, mcp_settings.authorization_servers or [app.client.rest_url])
    config = uvicorn.Config(
        BareChallenge(starlette),
        host=host,
        port=http_port,
        ssl_certfile=tls.cert,
        ssl_keyfile=tls.key,
        log_level="warning",
    )
    where = f"{'https' if tls.cert else 'http'}://{host}:{http_port}/mcp"

    class Announcing(uvicorn.Server):
        """uvicorn at log level warning says nothing once it listens: say where."""

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(f"ratewire mcp {__version__}: listening on {where}", file=sys.stderr)

    asyncio.run(Announcing(config).serve())
