"""``ratewire copy`` from the embedded SQLite default to PostgreSQL: rows/s and peak memory.

    python -m bench.copy                       # 1,000,000 ratings, and 200,000 for memory
    python -m bench.copy --ratings 100000 --sizes 1

The source is a SQLite database of N ratings, each with its event and its sealed audit entry
(a valid chain), built directly in the tables (building it through the REST API would take
hours) and kept in ``--work`` for the next run. Each size is copied by a real ``ratewire copy``
process into a new PostgreSQL database; its peak RSS comes from ``wait4``. Target: at least
50,000 ratings/s, and a peak memory that does not grow with the row count. The copy checks
the target's counts itself; ``--verify`` also walks the audit chain on the target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from ratewire.audit import GENESIS, AuditChain, AuditContext
from ratewire.audit.records import rating_audit_record
from ratewire.domain import Rating, new_rating_id
from ratewire.storage.sql import SqlStore

POSTGRES_ADMIN = os.environ.get("RATEWIRE_BENCH_POSTGRES", "postgresql://127.0.0.1:5432/test")
AUDIT_KEY = "bench-copy-audit-key-0123456789abcdef"
GAMES = 2_000


def build_source(path: Path, ratings: int) -> None:
    """A SQLite ratewire database holding ``ratings`` ratings, events and audit entries."""
    asyncio.run(_create_schema(path))
    chain = AuditChain(AUDIT_KEY)
    context = AuditContext("bench", "ratings:write", "127.0.0.1", None)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    game_offsets = [0] * GAMES
    totals = [[0, 0, 0, 0, 0, 0, 0] for _ in range(GAMES)]  # count, total, h1..h5
    mac = GENESIS
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        batch_r, batch_e, batch_a, batch_u = [], [], [], []
        for n in range(1, ratings + 1):
            game, user, score = n % GAMES, f"u{n}", 1 + n % 5
            at = start + timedelta(milliseconds=n)
            rating = Rating(new_rating_id(), f"g{game}", user, score, None, at, at, 1)
            wire = rating.to_wire()
            game_offsets[game] += 1
            ms = int(at.timestamp() * 1000)
            batch_r.append((rating.id, rating.game_id, user, score, None, ms, ms, 1))
            batch_e.append(
                (n, "created", rating.game_id, user, game_offsets[game], 1,
                 orjson.dumps(wire).decode(), ms)
            )  # fmt: skip
            batch_u.append((user, 1))
            entry = chain.seal(
                mac, n, rating_audit_record("created", None, rating, at, n, context, wire)
            )
            mac = entry.mac
            batch_a.append(
                (n, entry.at_ms, entry.action, entry.actor, entry.scopes, entry.ip,
                 entry.request_id, entry.rating_id, entry.detail_text, entry.mac)
            )  # fmt: skip
            counters = totals[game]
            counters[0] += 1
            counters[1] += score
            counters[1 + score] += 1
            if len(batch_r) == 20_000 or n == ratings:
                conn.executemany("INSERT INTO ratings VALUES (?,?,?,?,?,?,?,?)", batch_r)
                conn.executemany("INSERT INTO rating_events VALUES (?,?,?,?,?,?,?,?)", batch_e)
                conn.executemany("INSERT INTO user_heads VALUES (?,?)", batch_u)
                conn.executemany("INSERT INTO audit_log VALUES (?,?,?,?,?,?,?,?,?,?)", batch_a)
                batch_r, batch_e, batch_a, batch_u = [], [], [], []
                print(f"\r  building the source: {n:,}/{ratings:,} ratings", end="", flush=True)
        conn.executemany(
            "INSERT INTO game_summaries VALUES (?,?,?,?,?,?,?,?,?)",
            [(f"g{g}", *totals[g], game_offsets[g]) for g in range(GAMES) if totals[g][0]],
        )
        conn.execute("UPDATE global_head SET last_offset = ?", (ratings,))
        conn.execute("UPDATE audit_head SET seq = ?, mac = ?", (ratings, mac))
    print()


async def _create_schema(path: Path) -> None:
    store = SqlStore(f"sqlite:///{path}")
    await store.start()
    await store.close()


async def _postgres(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_ADMIN.replace("postgresql://", "postgres://"))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def copy_once(source: Path, ratings: int, verify: bool) -> dict[str, float]:
    name = f"ratewire_bench_copy_{secrets.token_hex(3)}"
    asyncio.run(_postgres(f"CREATE DATABASE {name}"))
    # Each run writes about 1.4 GB of WAL, more than max_wal_size: without a checkpoint
    # first, a run pays for the previous run's (measured: 1.5x to 2x slower).
    asyncio.run(_postgres("CHECKPOINT"))
    target = POSTGRES_ADMIN.rsplit("/", 1)[0] + "/" + name
    try:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "ratewire", "copy", "--from", f"sqlite:///{source}",
             "--to", target],
            stderr=subprocess.PIPE,
        )  # fmt: skip
        assert process.stderr is not None
        said = process.stderr.read().decode()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        if process.returncode != 0:
            raise SystemExit(f"ratewire copy failed ({process.returncode}): {said}")
        if verify:
            env = {**os.environ, "RATEWIRE_STORAGE__BACKEND": "postgresql",
                   "RATEWIRE_STORAGE__URL": target, "RATEWIRE_AUDIT__KEY": AUDIT_KEY}  # fmt: skip
            checked = subprocess.run(
                [sys.executable, "-m", "ratewire", "audit", "verify"],
                env=env, capture_output=True, text=True,
            )  # fmt: skip
            if checked.returncode != 0:
                raise SystemExit(f"the copied audit chain does not verify: {checked.stdout}")
    finally:
        asyncio.run(_postgres(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    rows = ratings * 3 + ratings + GAMES  # ratings, events, audit entries, user heads, games
    return {
        "ratings": ratings,
        "seconds": round(seconds, 2),
        "ratings_per_second": round(ratings / seconds),
        "rows_per_second": round(rows / seconds),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratings", type=int, default=1_000_000)
    parser.add_argument("--sizes", type=int, default=2, help="also copy 1/5 of it (memory)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ratewire-bench-copy"))
    parser.add_argument("--verify", action="store_true", help="walk the copied audit chain")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    sizes = [args.ratings // 5, args.ratings][-args.sizes :]
    results = []
    for size in sizes:
        source = args.work / f"source-{size}.db"
        if not source.exists():
            build_source(source, size)
        result = copy_once(source, size, args.verify)
        results.append(result)
        print(
            f"{size:>9,} ratings: {result['seconds']:6.1f} s, "
            f"{result['ratings_per_second']:>7,} ratings/s, "
            f"{result['rows_per_second']:>9,} rows/s, "
            f"peak RSS {result['peak_rss_mib']} MiB"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"at": datetime.now(UTC).isoformat(), "runs": results}, indent=2)
        )


if __name__ == "__main__":
    main()
