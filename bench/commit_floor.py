"""The disk's floor under a rating write: one stdlib ``sqlite3`` transaction in WAL mode with
``synchronous=FULL`` holding the five statements a write needs (the rating row, the summary
upsert, the event, the head row, an audit entry), timed commit by commit. With
``--backend postgresql``, the same five statements in one asyncpg transaction against the
PostgreSQL server (``RATEWIRE_BENCH_POSTGRES``, default the local ``test`` database; the
tables go in a scratch schema, dropped afterwards).

Measured two ways, because they differ: back to back (what "the disk's speed" usually means)
and paced at the rate a benchmark offers writes (``--rate``, default 50/s: the fan-out
benchmark's load). Paced, each commit starts from an idle disk and CPU, and costs more:
on 2026-12-07 here, p50 0.27 ms back to back and 0.70 ms at 50/s for the same transaction.
A ratio to the back-to-back figure flatters nothing but also explains nothing about a server
that writes 50 times a second: compare a server's ``commit`` stage with the paced floor.

    python -m bench.commit_floor [--backend sqlite|postgresql] [--commits 1000] [--rate 50]
                                 [--dir DIR] [--json-out F]

``bench.fanout`` runs the paced floor of the backend it measured after its runs and prints
the server's ``commit`` stage beside it.

``--dir`` should be where the server's database lives (same disk, same file system).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = """
create table rating(id text primary key, game text, user text, score int, version int,
                    unique (game, user));
create table summary(game text primary key, count int, total int);
create table event(seq integer primary key, game text, game_offset int, data text);
create index event_game on event(game, game_offset);
create table head(id int primary key, last int);
insert into head values (1, 0);
create table audit(seq integer primary key, at_ms int, actor text, detail text, mac text);
"""


def one_write(db: sqlite3.Connection, n: int) -> float:
    """Seconds one rating write's transaction takes, commit (and its fsync) included."""
    started = time.perf_counter()
    db.execute("begin immediate")
    db.execute("insert into rating values (?, 'g', ?, 3, 1)", (f"r{n}", f"u{n}"))
    db.execute(
        "insert into summary values ('g', 1, 3) "
        "on conflict(game) do update set count = count + 1, total = total + 3"
    )
    db.execute("insert into event(game, game_offset, data) values ('g', ?, ?)", (n, "x" * 300))
    db.execute("update head set last = last + 1 where id = 1")
    db.execute(
        "insert into audit(at_ms, actor, detail, mac) values (?, ?, ?, ?)",
        (int(time.time() * 1000), f"u{n}", "y" * 400, "m" * 64),
    )
    db.execute("commit")
    return time.perf_counter() - started


def _figures(times: list[float], commits: int, rate: float) -> dict[str, float]:
    times = sorted(times)
    return {
        "commits": commits,
        "rate": rate,
        "mean_ms": round(statistics.mean(times) * 1000, 3),
        "p50_ms": round(times[len(times) // 2] * 1000, 3),
        "p99_ms": round(times[int(len(times) * 0.99)] * 1000, 3),
    }


def measure(directory: Path, commits: int, rate: float, label: str) -> dict[str, float]:
    """Time ``commits`` writes on a fresh database in ``directory``, ``rate`` per second
    (0: back to back); the figures in milliseconds."""
    path = directory / f"commit-floor-{label}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("pragma journal_mode=wal")
    db.execute("pragma synchronous=full")
    db.executescript(SCHEMA)
    for warm in range(50):
        one_write(db, -warm - 1)
    times = []
    interval = 1 / rate if rate else 0.0
    next_at = time.perf_counter()
    for n in range(commits):
        if interval:
            next_at += interval
        times.append(one_write(db, n))
        if (n + 1) % max(1, commits // 10) == 0:
            print(f"  {label}: {n + 1}/{commits} commits", file=sys.stderr)
        if interval and (wait := next_at - time.perf_counter()) > 0:
            time.sleep(wait)
    db.close()
    return _figures(times, commits, rate)


POSTGRES_URL = os.environ.get("RATEWIRE_BENCH_POSTGRES", "postgresql://127.0.0.1:5432/test")
PG_SCHEMA = """
create table rating(id text primary key, game text, "user" text, score int, version int,
                    unique (game, "user"));
create table summary(game text primary key, count int, total int);
create table event(seq bigint primary key, game text, game_offset bigint, data text);
create index event_game on event(game, game_offset);
create table head(id int primary key, last bigint);
insert into head values (1, 0);
create table audit(seq bigint primary key, at_ms bigint, actor text, detail text, mac text);
"""


async def _pg_write(db: Any, n: int) -> float:
    started = time.perf_counter()
    async with db.transaction():
        await db.execute("insert into rating values ($1, 'g', $2, 3, 1)", f"r{n}", f"u{n}")
        await db.execute(
            "insert into summary values ('g', 1, 3) on conflict(game) do update "
            "set count = summary.count + 1, total = summary.total + 3"
        )
        seq = await db.fetchval("update head set last = last + 1 where id = 1 returning last")
        await db.execute("insert into event values ($1, 'g', $2, $3)", seq, n, "x" * 300)
        await db.execute(
            "insert into audit values ($1, $2, $3, $4, $5)",
            seq,
            int(time.time() * 1000),
            f"u{n}",
            "y" * 400,
            "m" * 64,
        )
    return time.perf_counter() - started


async def measure_postgres(commits: int, rate: float, label: str) -> dict[str, float]:
    """:func:`measure` for PostgreSQL: one asyncpg transaction per write (each statement
    prepared once, as ratewire's driver path does), in a scratch schema."""
    import asyncpg

    schema = f"commit_floor_{secrets.token_hex(4)}"
    db = await asyncpg.connect(POSTGRES_URL.replace("postgresql://", "postgres://", 1))
    try:
        await db.execute(f"create schema {schema}; set search_path = {schema}")
        await db.execute(PG_SCHEMA)
        for warm in range(50):
            await _pg_write(db, -warm - 1)
        times = []
        interval = 1 / rate if rate else 0.0
        next_at = time.perf_counter()
        for n in range(commits):
            next_at += interval
            times.append(await _pg_write(db, n))
            if (n + 1) % max(1, commits // 10) == 0:
                print(f"  {label}: {n + 1}/{commits} commits", file=sys.stderr)
            if interval and (wait := next_at - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
    finally:
        await db.execute(f"drop schema if exists {schema} cascade")
        await db.close()
    return _figures(times, commits, rate)


def floor(
    backend: str, commits: int, rate: float, directory: Path | None = None
) -> dict[str, float]:
    """The paced (or, ``rate`` 0, back-to-back) floor of ``backend``: 'sqlite' in a scratch
    directory under ``directory``, or 'postgresql'."""
    label = "paced" if rate else "back-to-back"
    if backend == "postgresql":
        return asyncio.run(measure_postgres(commits, rate, label))
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        return measure(Path(scratch), commits, rate, label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50, help="paced writes/s (0: skip)")
    parser.add_argument("--dir", type=Path, default=None, help="where the database goes")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    results = {"back_to_back": floor(args.backend, args.commits, 0, args.dir)}
    if args.rate:
        results["paced"] = floor(args.backend, args.commits, args.rate, args.dir)
    for name, figures in results.items():
        print(
            f"{name:>12}: p50 {figures['p50_ms']:.3f} ms, mean {figures['mean_ms']:.3f} ms, "
            f"p99 {figures['p99_ms']:.3f} ms ({figures['commits']} commits"
            + (f" at {figures['rate']:g}/s)" if figures["rate"] else ")")
        )
    if args.json_out is not None:
        document = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "backend": args.backend,
            **results,
        }
        args.json_out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
