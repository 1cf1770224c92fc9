"""REST load benchmark: /healthz, GET summary (cached), GET rating, POST create and PUT upsert,
each also as a ratio to /healthz; load from wrk in a second process, against a real
``ratewire serve`` on sqlite or postgresql.

    python -m bench.rest --backend sqlite --seconds 10 --connections 32
    python -m bench.rest --backend both --audit both    # the audit log's cost, same run
    python -m bench.rest --backend both --hot-games 50  # and writes spread over 50 games
    ratewire bench rest --backend postgresql

Afterwards it checks that every 201 was stored: the summaries' counts add up to the number
of successful POSTs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench.fanout.measure import cpu_seconds
from bench.servers import ROOT, start_cluster, start_ratewire, start_redis_storage, token

WRK_DIR = ROOT / "bench" / "wrk"
GAMES = 16
#: Writers of the token-per-user load: more than it sends in a run, so every POST creates.
USERS = 20_000
POSTGRES_ADMIN = os.environ.get("RATEWIRE_BENCH_POSTGRES", "postgresql://127.0.0.1:5432/test")


@dataclass
class Measurement:
    backend: str
    audit: bool
    endpoint: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    requests: int
    #: The server's CPU (user + system, every process of the target) per request, in ms.
    server_cpu_ms_per_request: float = 0.0


def wrk(
    url: str, script: str, args: Sequence[str], seconds: float, connections: int
) -> dict[str, int]:
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("wrk is not installed: apt-get update && apt-get install -y wrk")
    command = [
        binary,
        "-t2",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_DIR / script),
        url,
        "--",
        *args,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    result: dict[str, int] = json.loads(line.removeprefix("RESULT "))
    return result


def measured(
    backend: str, audit: bool, endpoint: str, raw: dict[str, int], cpu_s: float = 0.0
) -> Measurement:
    errors = sum(
        raw[k] for k in ("non_2xx", "connect_errors", "read_errors", "write_errors", "timeouts")
    )
    return Measurement(
        backend,
        audit,
        endpoint,
        requests_per_s=round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        errors=errors,
        requests=raw["requests"],
        server_cpu_ms_per_request=round(1e3 * cpu_s / raw["requests"], 3) if raw["requests"] else 0,
    )


async def _postgres(statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(POSTGRES_ADMIN.replace("postgresql://", "postgres://"))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def run_rest(
    backend: str, seconds: float, connections: int, audit: bool, hot_games: int = 0
) -> list[Measurement]:
    """Measure the endpoints on ``backend`` with the audit log on or off; with ``hot_games``,
    also POSTs spread over that many games (``hot0`` ..), as a busy site's writes are."""
    from rich.console import Console

    console = Console(stderr=True)
    database = None
    audit_env = {
        "RATEWIRE_AUDIT__ENABLED": "true" if audit else "false",
        "RATEWIRE_AUDIT__KEY": "bench-audit-key-0123456789abcdef0123456789",
    }
    if backend == "redis":
        target = start_redis_storage(env_extra=audit_env)
    elif backend == "cluster":
        # Two instances on PostgreSQL and Redis; the load goes to the first (the second
        # follows the stream, as every instance of a cluster does).
        target = start_cluster("cluster", 2, env_extra=audit_env)
    else:
        if backend == "postgresql":
            database = f"ratewire_bench_{secrets.token_hex(4)}"
            asyncio.run(_postgres(f"CREATE DATABASE {database}"))
        url = None if database is None else POSTGRES_ADMIN.rsplit("/", 1)[0] + "/" + database
        target = start_ratewire(backend, url, env_extra=audit_env)
    backend_label = f"{backend}, audit {'on' if audit else 'off'}"
    base = target.post_url.removesuffix("/ratings")
    writer = token("bench-writer", "ratings:write:any")
    run_id = secrets.token_hex(3)
    results = []
    try:
        with console.status(f"{backend_label}: warming up"):
            wrk(base, "post_ratings.lua", [f"w{run_id}", writer, str(GAMES)], 2, 4)

        def measure(endpoint: str, script: str, args: list[str]) -> Measurement:
            with console.status(
                f"{backend_label}: {endpoint} for {seconds:g} s, {connections} connections"
            ):
                pids = target.pids()
                cpu_before = cpu_seconds(pids)
                raw = wrk(base, script, args, seconds, connections)
                cpu_s = cpu_seconds(pids) - cpu_before
            runs[endpoint] = raw
            return measured(backend, audit, endpoint, raw, cpu_s)

        runs: dict[str, dict[str, int]] = {}
        some_rating = httpx.post(
            f"{base}/ratings",
            json={"gameId": "g0", "userId": f"probe-{run_id}", "score": 3},
            headers={"Authorization": f"Bearer {writer}"},
        ).json()["id"]
        httpx.get(f"{base}/games/g0/summary")  # cached from here on: the reads below are hits
        results = [
            measure("GET /healthz", "get_path.lua", ["/healthz"]),
            measure("GET /games/{id}/summary", "get_path.lua", ["/games/g0/summary"]),
            measure("GET /ratings/{id}", "get_path.lua", [f"/ratings/{some_rating}"]),
            measure("POST /ratings", "post_ratings.lua", [run_id, writer, str(GAMES)]),
            measure("PUT /games/{g}/ratings/{u}", "put_ratings.lua", [run_id, writer, str(GAMES)]),
        ]
        hot = f"POST /ratings, {hot_games} hot games"
        as_users = f"POST /ratings, {hot_games} hot games, a token per user"
        if hot_games:
            args = [f"h{run_id}", writer, str(hot_games), "hot"]
            results.append(measure(hot, "post_ratings.lua", args))
            # The same load as a site's users bring it: each with its own token, writing its
            # own ratings (every request verifies another token, counts against its user).
            tokens_file = target.workdir / "user-tokens.txt"
            tokens_file.write_text(
                "".join(f"u{run_id}-{n} {token(f'u{run_id}-{n}')}\n" for n in range(USERS))
            )
            args = [str(tokens_file), str(hot_games), "users"]
            results.append(measure(as_users, "post_as_users.lua", args))
        post = runs["POST /ratings"]
        stored = sum(httpx.get(f"{base}/games/g{g}/summary").json()["count"] for g in range(GAMES))
        # POSTs create; PUTs after them replace or create (at most 2 x 50 pairs per game).
        warmup_stored = stored - (post["requests"] - post["non_2xx"]) - 1
        if warmup_stored < 0:
            raise SystemExit(f"{backend}: {-warmup_stored} acknowledged ratings are missing")
        for name, prefix in ((hot, "hot"), (as_users, "users")) if hot_games else ():
            created = runs[name]["requests"] - runs[name]["non_2xx"]
            found = sum(
                httpx.get(f"{base}/games/{prefix}{g}/summary").json()["count"]
                for g in range(hot_games)
            )
            # wrk stops counting with requests in flight: those may be stored too.
            if found < created:
                raise SystemExit(
                    f"{backend}: {created} hot-game writes acknowledged, {found} stored"
                )
        console.print(f"{backend}: every acknowledged rating is stored ({stored} in the summaries)")
    finally:
        target.stop()
        if database is not None:
            asyncio.run(_postgres(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backend",
        choices=["sqlite", "postgresql", "redis", "cluster", "both", "storage", "all"],
        default="both",
        help="both: sqlite and postgresql; redis: the Redis store (its own redis-server, AOF "
        "fsync always); storage: sqlite, postgresql and redis; cluster: two instances on "
        "PostgreSQL + Redis, load on the first; all: the four",
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--audit",
        choices=["on", "off", "both"],
        default="on",
        help="audit log on (the default), off, or both in the same run to compare",
    )
    parser.add_argument(
        "--hot-games",
        type=int,
        default=0,
        metavar="N",
        help="also measure POSTs spread over N games (50: a busy site's hot games)",
    )
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    backends = {
        "both": ["sqlite", "postgresql"],
        "storage": ["sqlite", "postgresql", "redis"],
        "all": ["sqlite", "postgresql", "redis", "cluster"],
    }.get(args.backend, [args.backend])
    modes = [True, False] if args.audit == "both" else [args.audit == "on"]
    results = [
        m
        for b in backends
        for audit in modes
        for m in run_rest(b, args.seconds, args.connections, audit, args.hot_games)
    ]
    table = Table(title=f"REST load (wrk, 2 threads, {args.connections} connections)")
    for column in (
        "backend",
        "audit",
        "endpoint",
        "requests/s",
        "x /healthz",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        "CPU ms/req",
    ):
        table.add_column(column, justify="right")
    healthz = {
        (m.backend, m.audit): m.requests_per_s for m in results if m.endpoint == "GET /healthz"
    }
    for m in results:
        table.add_row(
            m.backend,
            "on" if m.audit else "off",
            m.endpoint,
            f"{m.requests_per_s:,.0f}",
            f"{m.requests_per_s / healthz[(m.backend, m.audit)]:.2f}",
            f"{m.p50_ms:.2f}",
            f"{m.p99_ms:.2f}",
            f"{m.max_ms:.1f}",
            str(m.errors),
            f"{m.server_cpu_ms_per_request:.3f}",
        )
    Console(width=140).print(table)
    if args.json_out is not None:
        args.json_out.write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                    "machine": f"{os.cpu_count()} cores",
                    "results": [asdict(m) for m in results],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
