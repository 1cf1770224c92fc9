"""The disk's floor under a rating write: one stdlib ``sqlite3`` transaction in WAL mode with
``synchronous=FULL`` holding the five statements a write needs (the rating row, the summary
upsert, the event, the head row, an audit entry), timed commit by commit.

Measured two ways, because they differ: back to back (what "the disk's speed" usually means)
and paced at the rate a benchmark offers writes (``--rate``, default 50/s: the fan-out
benchmark's load). Paced, each commit starts from an idle disk and CPU, and costs more:
on 2026-12-07 here, p50 0.27 ms back to back and 0.70 ms at 50/s for the same transaction.
A ratio to the back-to-back figure flatters nothing but also explains nothing about a server
that writes 50 times a second: compare a server's ``commit`` stage with the paced floor.

    python -m bench.commit_floor [--commits 1000] [--rate 50] [--dir DIR] [--json-out F]

``--dir`` should be where the server's database lives (same disk, same file system).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

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
    times.sort()
    return {
        "commits": commits,
        "rate": rate,
        "mean_ms": round(statistics.mean(times) * 1000, 3),
        "p50_ms": round(times[len(times) // 2] * 1000, 3),
        "p99_ms": round(times[int(len(times) * 0.99)] * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50, help="paced writes/s (0: skip)")
    parser.add_argument("--dir", type=Path, default=None, help="where the database goes")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        results = {"back_to_back": measure(Path(scratch), args.commits, 0, "back-to-back")}
        if args.rate:
            results["paced"] = measure(Path(scratch), args.commits, args.rate, "paced")
    for name, figures in results.items():
        print(
            f"{name:>12}: p50 {figures['p50_ms']:.3f} ms, mean {figures['mean_ms']:.3f} ms, "
            f"p99 {figures['p99_ms']:.3f} ms ({figures['commits']} commits"
            + (f" at {figures['rate']:g}/s)" if figures["rate"] else ")")
        )
    if args.json_out is not None:
        document = {"date": datetime.now(UTC).isoformat(timespec="seconds"), **results}
        args.json_out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
