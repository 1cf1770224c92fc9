"""``ratewire tail``: print a topic's updates (or a summary topic's states) as they come."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from ratewire.cli.common import (
    auth_option,
    config_option,
    settings_from,
    token_service,
)


@click.command()
@click.argument("topic")
@click.option("--since", type=click.IntRange(min=0), default=None, help="replay after this offset")
@click.option(
    "--interval-ms",
    type=click.IntRange(min=50),
    default=1000,
    show_default=True,
    help="summary topics: at most one state per this many ms",
)
@click.option("--limit", type=click.IntRange(1, 500), default=None, help="summary.games.top: games")
@click.option(
    "--min-count", type=click.IntRange(min=1), default=None, help="summary.games.top: least ratings"
)
@click.option("--json", "as_json", is_flag=True, help="print each frame as one JSON line")
@click.option(
    "--filter",
    "expression",
    default=None,
    metavar="EXPR",
    help='only the updates this CEL expression passes, e.g. "data.score <= 2"',
)
@click.option(
    "--consumer",
    default=None,
    help="read through this durable consumer: the server keeps the position, acked as printed",
)
@click.option("--url", default=None, help="WebSocket URL (default: the configured module port)")
@click.option("--token", "token_value", default=None, help="JWT (default: one minted for 'tail')")
@config_option
@auth_option
def tail(
    topic: str,
    since: int | None,
    interval_ms: int,
    limit: int | None,
    min_count: int | None,
    as_json: bool,
    expression: str | None,
    consumer: str | None,
    url: str | None,
    token_value: str | None,
    config_path: Path | None,
    auth_path: Path | None,
) -> None:
    """Print TOPIC's rating updates as they come (reconnects and resumes by itself).

    A summary topic (summary.game.ID, summary.games.top) prints its state at once, then at
    most one per --interval-ms, when it changes. With --consumer, through a durable consumer:
    a second tail of the same name shares the work, and a tail started again goes on where
    the last one stopped."""
    from ratewire.client import Client, RatewireError
    from ratewire.security.tokens import SCOPE_ADMIN

    if expression is not None:
        # Checked here too: a typo is a usage error at once, not a refusal after connecting.
        from ratewire.domain.filters import BadFilter, compile_filter

        try:
            compile_filter(expression)
        except BadFilter as exc:
            raise click.BadParameter(exc.message, param_hint="--filter") from None
    settings = settings_from(config_path, auth_path)
    rest_url = None
    if url is None:
        scheme = "wss" if settings.tls.cert else "ws"
        url = f"{scheme}://127.0.0.1:{settings.modules.websocket.port}/"
        rest_url = f"{scheme.replace('ws', 'http')}://127.0.0.1:{settings.server.port}"
    if sys.stderr.isatty():
        _narrate(url, topic, since)
    # Without --token, a fresh one whenever needed: tail outlives any one token.
    issuer = None if token_value else token_service(settings)
    colour = sys.stdout.isatty() and not as_json

    def mint() -> str:
        assert issuer is not None
        return str(issuer.issue("tail", scope=SCOPE_ADMIN))

    async def follow() -> None:
        provider = None if token_value else mint
        async with Client(url, token_value, provider, rest_url=rest_url) as client:
            if topic.startswith("summary."):
                states = client.summaries(
                    topic, interval_ms=interval_ms, limit=limit, min_count=min_count
                )
                async for state in states:
                    click.echo(_summary_line(state, as_json=as_json, colour=colour))
                return
            if consumer is None:
                async for item in client.subscribe(topic, since, filter=expression):
                    click.echo(_tail_line(item, as_json=as_json, colour=colour))
                return
            async with client.consume(topic, consumer, since=since, auto_ack=True) as queue:
                async for taken in queue:
                    line = _tail_line(taken.update, as_json=as_json, colour=colour)
                    again = f" (delivery {taken.delivery})" if taken.delivery > 1 else ""
                    click.echo(line + ("" if as_json else again))

    try:
        asyncio.run(follow())
    except RatewireError as exc:
        click.echo(f"ratewire tail: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


def _narrate(url: str, topic: str, since: int | None) -> None:
    """Tell the person at the terminal, on stderr, what tail is doing (connecting, following,
    connection lost, cannot reach): the client's own INFO lines. stdout stays the updates."""
    import logging

    class Narration(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return click.style(f"ratewire tail: {record.getMessage()}", dim=True)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Narration())
    client_log = logging.getLogger("ratewire.client")
    client_log.addHandler(handler)
    client_log.setLevel(logging.INFO)
    client_log.propagate = False
    start = "" if since is None else f" (replaying {topic} after offset {since})"
    click.echo(click.style(f"ratewire tail: connecting to {url}{start}", dim=True), err=True)


_EVENT_COLOURS = {"created": "green", "updated": "cyan", "deleted": "red"}


def _tail_line(item: object, *, as_json: bool, colour: bool) -> str:
    """One update (or gap) as ``ratewire tail`` prints it."""
    import orjson

    from ratewire.client import Gap, Update

    if isinstance(item, Gap):
        if as_json:
            return orjson.dumps(
                {"type": "gap", "topic": item.topic, "after": item.after, "offset": item.offset}
            ).decode()
        line = (
            f"-- {item.topic}: history no longer reaches #{item.after}; resuming at #{item.offset}"
        )
        return click.style(line, fg="yellow") if colour else line
    assert isinstance(item, Update)
    if as_json:
        return orjson.dumps(
            {
                "type": "rating_update",
                "topic": item.topic,
                "offset": item.offset,
                "event": item.event,
                "data": item.data,
            }
        ).decode()
    rating = item.rating
    head = f"{item.topic} #{item.offset}"
    kind = f"{item.event:<7}"
    body = f"game={rating.game_id} user={rating.user_id} score={rating.score}"
    if colour:
        head = click.style(head, dim=True)
        kind = click.style(kind, fg=_EVENT_COLOURS[item.event], bold=True)
        body = body.replace(f"score={rating.score}", f"score={'★' * rating.score}")
    return f"{head} {kind} {body}"


def _summary_line(state: object, *, as_json: bool, colour: bool) -> str:
    """One summary state as ``ratewire tail`` prints it."""
    import orjson

    from ratewire.client import Summary, SummaryUpdate

    assert isinstance(state, SummaryUpdate)
    if as_json:
        frame = {"type": "summary", "topic": state.topic, "offset": state.offset}
        return orjson.dumps({**frame, "data": state.data}).decode()

    def brief(summary: Summary) -> str:
        mean = "-" if summary.mean is None else f"{summary.mean:.2f}"
        bayesian = "-" if summary.bayesian_mean is None else f"{summary.bayesian_mean:.2f}"
        return f"game={summary.game_id} count={summary.count} mean={mean} bayesian={bayesian}"

    head = f"{state.topic} #{state.offset}"
    if colour:
        head = click.style(head, dim=True)
    if state.summary is not None:
        return f"{head} {brief(state.summary)}"
    ranked = "; ".join(f"{n}. {brief(game)}" for n, game in enumerate(state.games, start=1))
    return f"{head} {ranked or '(no games)'}"
