"""The ``ratewire`` command line (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from ratewire import __version__
from ratewire.cli_common import (
    auth_option,
    config_option,
    settings_from,
    token_service,
    with_dev_secret,
)
from ratewire.cli_webhooks import webhook
from ratewire.config import ConfigError, Settings


@click.group()
@click.version_option(version=__version__, prog_name="ratewire")
def main() -> None:
    """ratewire: ratings over REST, every change streamed over WebSockets."""


@main.command()
@config_option
@auth_option
@click.option("--log-level", default="INFO", show_default=True)
@click.option(
    "--role",
    type=click.Choice(["all", "api", "stream"]),
    default=None,
    help="all: REST + relay + WebSockets; api: REST + relay; stream: WebSockets only "
    "(default: server.role, else all)",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=256),
    default=None,
    help="processes on this host sharing both ports (default: server.workers, else 1)",
)
@click.option(
    "--dev",
    is_flag=True,
    help="local trial: without a configured key, sign with a random secret kept in "
    "./.ratewire-dev-secret; accept secrets shorter than 32 bytes (with a warning)",
)
@click.option("--reuse-port", is_flag=True, hidden=True)
def serve(
    config_path: Path | None,
    auth_path: Path | None,
    log_level: str,
    role: str | None,
    workers: int | None,
    dev: bool,
    reuse_port: bool,
) -> None:
    """Run the server (REST on server.port, WebSockets on modules.websocket.port and /ws)."""
    import logging

    import uvloop

    from ratewire.extras import optional_exception
    from ratewire.logs import configure_logging
    from ratewire.runtime import Runtime
    from ratewire.security.keys import load_key_set
    from ratewire.storage import StorageError
    from ratewire.storage.factory import UnsupportedBackend

    settings = settings_from(config_path, auth_path)
    dev_note = None
    if dev:
        settings, dev_note = with_dev_secret(settings, create=True)
    server = settings.server.model_copy(
        update={
            "role": role or settings.server.role,
            "workers": workers or settings.server.workers,
        }
    )
    settings = settings.model_copy(update={"server": server})
    configure_logging(log_level.upper(), settings.log.format)
    notes: list[str] = []  # said once listening (a start that fails says one line only)
    if dev and "host" not in settings.server.model_fields_set:
        # A trial server stays on this machine unless told otherwise.
        settings = settings.model_copy(
            update={"server": settings.server.model_copy(update={"host": "127.0.0.1"})}
        )
        if not reuse_port:
            notes.append(
                "dev mode: listening on 127.0.0.1 only; set server.host "
                "(RATEWIRE_SERVER__HOST=0.0.0.0) to open it to other machines"
            )

    def cannot_start(reason: object) -> None:
        click.echo(f"ratewire: cannot start: {reason}", err=True)
        sys.exit(1)

    if (problem := settings.deployment_problem()) is not None:
        cannot_start(problem)
    try:
        load_key_set(settings.jwt, dev=dev)  # a weak or missing key stops here, in one line
    except ConfigError as exc:
        click.echo(f"ratewire: config error: {exc}", err=True)
        sys.exit(2)
    if dev_note is not None and not reuse_port:
        logging.getLogger("ratewire").warning(dev_note)
    if settings.server.workers > 1 and not reuse_port:
        from ratewire.workers import prepare_storage, supervise

        forwarded = [
            *(("--config", str(config_path)) if config_path else ()),
            *(("--auth", str(auth_path)) if auth_path else ()),
            *("--log-level", log_level, "--role", settings.server.role),
            *(("--dev",) if dev else ()),
        ]
        try:
            uvloop.run(prepare_storage(settings))
        except (StorageError, OSError) as exc:
            cannot_start(exc)
        sys.exit(uvloop.run(supervise(settings.server.workers, forwarded)))

    async def run() -> None:
        await Runtime(settings, reuse_port=reuse_port, dev=dev, notes=notes).serve()

    try:
        uvloop.run(run())
    except (StorageError, UnsupportedBackend, OSError) as exc:
        cannot_start(exc)
    except optional_exception("redis.exceptions", "RedisError") as exc:
        cannot_start(f"broker unreachable at {settings.broker.url}: {exc}")


@main.command()
@click.argument("sub")
@click.option("--scope", default=None, help='space-separated scopes, e.g. "ratings:admin"')
@click.option(
    "--ttl", type=click.IntRange(min=1), default=None, help="seconds (default: jwt.expiry_seconds)"
)
@config_option
@auth_option
def token(
    sub: str, scope: str | None, ttl: int | None, config_path: Path | None, auth_path: Path | None
) -> None:
    """Print a JWT for SUB signed with the configured key (or the --dev secret)."""
    service = token_service(settings_from(config_path, auth_path))
    try:
        click.echo(service.issue(sub, scope=scope, ttl_seconds=ttl))
    except ValueError as exc:
        click.echo(f"ratewire token: {exc}", err=True)
        sys.exit(2)


@main.command()
@click.argument("topic")
@click.option("--since", type=click.IntRange(min=0), default=None, help="replay after this offset")
@click.option("--json", "as_json", is_flag=True, help="print each frame as one JSON line")
@click.option("--url", default=None, help="WebSocket URL (default: the configured module port)")
@click.option("--token", "token_value", default=None, help="JWT (default: one minted for 'tail')")
@config_option
@auth_option
def tail(
    topic: str,
    since: int | None,
    as_json: bool,
    url: str | None,
    token_value: str | None,
    config_path: Path | None,
    auth_path: Path | None,
) -> None:
    """Print TOPIC's rating updates as they come (reconnects and resumes by itself)."""
    from ratewire.client import Client, RatewireError
    from ratewire.security.tokens import SCOPE_ADMIN

    settings = settings_from(config_path, auth_path)
    if url is None:
        scheme = "wss" if settings.tls.cert else "ws"
        url = f"{scheme}://127.0.0.1:{settings.modules.websocket.port}/"
    # Without --token, a fresh one whenever needed: tail outlives any one token.
    issuer = None if token_value else token_service(settings)
    colour = sys.stdout.isatty() and not as_json

    def mint() -> str:
        assert issuer is not None
        return str(issuer.issue("tail", scope=SCOPE_ADMIN))

    async def follow() -> None:
        provider = None if token_value else mint
        async with Client(url, token_value, provider) as client:
            async for item in client.subscribe(topic, since):
                click.echo(_tail_line(item, as_json=as_json, colour=colour))

    try:
        asyncio.run(follow())
    except RatewireError as exc:
        click.echo(f"ratewire tail: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


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


@main.command()
@click.argument("token_id", metavar="[JTI]", required=False)
@click.option("--jti", default=None, help="revoke this one token (its jti claim)")
@click.option("--sub", default=None, help="revoke every token of this user issued until now")
@click.option("--reason", default=None, help="kept with the entry")
@click.option("--list", "list_only", is_flag=True, help="print the revocations in force instead")
@click.option("--url", default=None, help="REST base URL (default: the configured server port)")
@click.option("--token", "token_value", default=None, help="admin JWT (default: one minted here)")
@config_option
@auth_option
def revoke(
    token_id: str | None,
    jti: str | None,
    sub: str | None,
    reason: str | None,
    list_only: bool,
    url: str | None,
    token_value: str | None,
    config_path: Path | None,
    auth_path: Path | None,
) -> None:
    """Revoke a token (JTI or --jti) or every current token of a user (--sub), on every
    instance; their open WebSocket connections close with 4001 "Token revoked"."""
    import orjson

    from ratewire.admin_client import AdminRequestFailed, admin_request
    from ratewire.security.tokens import SCOPE_ADMIN

    if token_id is not None:
        if jti is not None and jti != token_id:
            click.echo("ratewire revoke: give the jti once (JTI or --jti)", err=True)
            sys.exit(2)
        jti = token_id
    if not list_only and (jti is None) == (sub is None):
        click.echo("ratewire revoke: give exactly one of --jti or --sub (or --list)", err=True)
        sys.exit(2)
    settings = settings_from(config_path, auth_path)
    if url is None:
        scheme = "https" if settings.tls.cert else "http"
        url = f"{scheme}://127.0.0.1:{settings.server.port}"
    token_value = token_value or token_service(settings).issue("ratewire-cli", scope=SCOPE_ADMIN)
    try:
        if list_only:
            answer = admin_request(url, token_value, "GET", "/admin/revocations")
            for entry in answer["items"]:
                click.echo(orjson.dumps(entry).decode())
            return
        body = {"jti": jti} if jti is not None else {"sub": sub}
        if reason:
            body["reason"] = reason
        answer = admin_request(url, token_value, "POST", "/admin/revocations", body)
    except AdminRequestFailed as exc:
        click.echo(f"ratewire revoke: {exc}", err=True)
        sys.exit(1)
    click.echo(orjson.dumps(answer).decode())


@main.command()
@click.option("--url", default=None, help="WebSocket URL (default: the configured module port)")
@click.option("--rest-url", default=None, help="REST base URL (default: the configured port)")
@click.option(
    "--token",
    "token_value",
    envvar="RATEWIRE_MCP_TOKEN",
    default=None,
    help="JWT the server acts with (env RATEWIRE_MCP_TOKEN; default: minted here, renewed)",
)
@click.option("--as", "subject", default="mcp-agent", help="user of the minted token")
@click.option(
    "--http",
    "http_port",
    type=click.IntRange(1, 65535),
    default=None,
    help="serve streamable HTTP on this port (path /mcp) instead of stdio; every request "
    "then needs its agent's own ratewire token (Authorization: Bearer)",
)
@click.option("--host", default="127.0.0.1", help="address for --http")
@config_option
@auth_option
def mcp(
    url: str | None,
    rest_url: str | None,
    token_value: str | None,
    subject: str,
    http_port: int | None,
    host: str,
    config_path: Path | None,
    auth_path: Path | None,
) -> None:
    """Serve the Model Context Protocol for AI agents: tools over the REST API and live
    game-summary resources (stdio by default)."""
    from ratewire.extras import MissingExtra, require

    try:
        require("mcp", "ratewire mcp")
    except MissingExtra as exc:
        click.echo(f"ratewire: cannot start: {exc}", err=True)
        sys.exit(1)
    from ratewire.mcp_server import run

    settings = settings_from(config_path, auth_path)
    tls = bool(settings.tls.cert)
    if url is None:
        url = f"{'wss' if tls else 'ws'}://127.0.0.1:{settings.modules.websocket.port}/"
    if rest_url is None:
        rest_url = f"{'https' if tls else 'http'}://127.0.0.1:{settings.server.port}"
    provider = None
    if token_value is None:
        issuer = token_service(settings)

        def provider() -> str:
            return str(issuer.issue(subject))

    if http_port is not None:
        from ratewire.mcp_auth import binding_problem

        problem = binding_problem(host, settings.mcp, settings.tls)
        if problem is not None:
            click.echo(f"ratewire: cannot start: {problem}", err=True)
            sys.exit(1)
    run(
        url,
        token_value,
        provider,
        rest_url=rest_url,
        http_port=http_port,
        host=host,
        mcp_settings=settings.mcp,
        tls=settings.tls,
    )


@main.group()
def audit() -> None:
    """The audit log: verify its chain, record an anchor, export it (reads the database)."""


def _run_with_store(settings: Settings, work: Any) -> Any:
    """``await work(store)`` on the configured store; exits 1 with one line if it is down."""
    from ratewire.storage import StorageError, open_store
    from ratewire.storage.factory import UnsupportedBackend

    async def run() -> Any:
        store = open_store(settings.storage)
        await store.start()
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (StorageError, UnsupportedBackend, OSError) as exc:
        click.echo(f"ratewire audit: {exc}", err=True)
        sys.exit(1)


@audit.command("verify")
@click.option(
    "--anchor",
    default=None,
    metavar="SEQ:MAC",
    help="an anchor from `ratewire audit anchor`: the entry must still be there, unchanged",
)
@config_option
@auth_option
def audit_verify(anchor: str | None, config_path: Path | None, auth_path: Path | None) -> None:
    """Walk the chain; exit 0 if intact, 1 naming the first entry that is not."""
    from ratewire.audit import AuditChain
    from ratewire.audit.verify import verify_chain

    settings = settings_from(config_path, auth_path)
    pinned: tuple[int, str] | None = None
    if anchor is not None:
        seq, _, mac = anchor.partition(":")
        if not seq.isdigit() or len(mac) != 64:
            click.echo(f"ratewire audit verify: --anchor {anchor!r} is not SEQ:MAC", err=True)
            sys.exit(2)
        pinned = (int(seq), mac)

    def progress(count: int) -> None:
        if sys.stderr.isatty():
            click.echo(f"\r{count} entries checked", err=True, nl=False)

    verdict = _run_with_store(
        settings,
        lambda store: verify_chain(
            store, AuditChain(settings.audit.key), anchor=pinned, progress=progress
        ),
    )
    if sys.stderr.isatty():
        click.echo("", err=True)
    if verdict.problem is not None:
        click.echo(f"audit chain broken: {verdict.problem}", err=True)
        sys.exit(1)
    click.echo(
        f"audit chain intact: {verdict.checked} entries (#{verdict.first_seq}..#{verdict.last_seq})"
    )


@audit.command("anchor")
@config_option
@auth_option
def audit_anchor(config_path: Path | None, auth_path: Path | None) -> None:
    """Print the chain's head as SEQ:MAC; keep it outside the database, and pass it to
    `verify --anchor` later to detect a rewound log."""
    settings = settings_from(config_path, auth_path)
    head = _run_with_store(settings, lambda store: store.audit_head())
    click.echo(f"{head.seq}:{head.mac}")


@audit.command("export")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]),
    default=None,
    help="from this time on (UTC unless a zone is given)",
)
@click.option("--format", "output_format", type=click.Choice(["jsonl"]), default="jsonl")
@config_option
@auth_option
def audit_export(
    since: Any, output_format: str, config_path: Path | None, auth_path: Path | None
) -> None:
    """Stream entries oldest first, one JSON object a line (the fields of GET /audit)."""
    from datetime import UTC

    import orjson

    from ratewire.audit import AuditQuery

    settings = settings_from(config_path, auth_path)
    since_ms = None
    if since is not None:
        moment = since if since.tzinfo else since.replace(tzinfo=UTC)
        since_ms = int(moment.timestamp() * 1000)

    async def export(store: Any) -> int:
        written, after = 0, 0
        out = sys.stdout.buffer
        while True:
            page = await store.audit_entries(
                AuditQuery(since_ms=since_ms, after_seq=after, limit=1000, oldest_first=True)
            )
            if not page:
                return written
            for entry in page:
                out.write(orjson.dumps(entry.to_wire()) + b"\n")
            out.flush()
            written += len(page)
            after = page[-1].seq
            click.echo(f"{written} entries exported", err=True)

    count = _run_with_store(settings, export)
    if count == 0:
        click.echo("no entries", err=True)


@main.group()
def bench() -> None:
    """The benchmarks of bench/ (run from a source checkout)."""


@bench.command("fanout")
@click.option("--subs", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=50,
    show_default=True,
    help="writes/s; 0 = as fast as they go",
)
@click.option("--seconds", type=click.FloatRange(min=1), default=10, show_default=True)
@click.option(
    "--procs", type=click.IntRange(min=1), default=2, show_default=True, help="subscriber processes"
)
@click.option(
    "--target",
    default="both",
    show_default=True,
    help="ratewire, ratewire-asgi, node-guide, both, all; cluster targets: pg-local, pg-redis, "
    "cluster-3, workers-2, cluster (PostgreSQL + Redis); see python -m bench.fanout --help",
)
@click.option("--json-out", type=click.Path(path_type=Path), default=None)
def bench_fanout(
    subs: int, rate: float, seconds: float, procs: int, target: str, json_out: Path | None
) -> None:
    """N subscribers of one game topic, R writes/s over REST: deliveries/s, losses, latency."""
    fanout = _bench_module("fanout")
    argv = ["--subs", str(subs), "--rate", str(rate), "--seconds", str(seconds)]
    argv += ["--procs", str(procs), "--target", target]
    fanout.main(argv + (["--json-out", str(json_out)] if json_out else []))


@bench.command("rest")
@click.option(
    "--backend",
    type=click.Choice(["sqlite", "postgresql", "cluster", "both", "all"]),
    default="both",
    show_default=True,
)
@click.option("--seconds", type=click.FloatRange(min=1), default=10, show_default=True)
@click.option("--connections", type=click.IntRange(min=1), default=32, show_default=True)
def bench_rest(backend: str, seconds: float, connections: int) -> None:
    """/healthz, summary, rating, POST and PUT under wrk load (sqlite, postgresql, cluster)."""
    rest = _bench_module("rest")
    rest.main(["--backend", backend, "--seconds", str(seconds), "--connections", str(connections)])


def _bench_module(name: str) -> Any:
    import importlib

    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / "bench" / f"{name}.py").is_file():
        click.echo(
            "ratewire bench: bench/ is part of the source checkout; run it from there", err=True
        )
        sys.exit(2)
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    return importlib.import_module(f"bench.{name}")


main.add_command(webhook)
