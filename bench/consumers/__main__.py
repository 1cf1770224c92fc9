"""``python -m bench.consumers``: the command line (see bench/consumers/__init__.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import bench.consumers
from bench.consumers.report import print_table, save
from bench.consumers.run import Settings, run_one


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.consumers",
        description=(bench.consumers.__doc__ or "").split("\n\n")[0],
    )
    parser.add_argument("--writes-per-s", type=float, default=500)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20, help="how long the writes go on")
    parser.add_argument(
        "--kill-at",
        type=float,
        default=None,
        metavar="SECONDS",
        help="SIGKILL member 0 this far into the writes (default: half of --seconds; 0: none)",
    )
    parser.add_argument(
        "--hang-ms",
        type=int,
        default=200,
        help="member 0 hangs (SIGSTOP) this long before the SIGKILL, so it dies holding "
        "events (0: a plain SIGKILL, which may find it holding none)",
    )
    parser.add_argument("--ack-wait-ms", type=int, default=30_000)
    parser.add_argument("--max-in-flight", type=int, default=100)
    parser.add_argument(
        "--ack-every-ms", type=int, default=100, help="how often each member sends its acks"
    )
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--runs", type=int, default=1, help="runs, each on a fresh server")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    kill_at = args.seconds / 2 if args.kill_at is None else args.kill_at
    if args.members < 2 and kill_at:
        parser.error("a kill needs another member to take the work: --members 2 or more")
    if not 0 <= kill_at < args.seconds:
        parser.error("--kill-at must fall within --seconds")
    settings = Settings(
        writes_per_s=args.writes_per_s,
        members=args.members,
        seconds=args.seconds,
        kill_at=kill_at or None,
        hang_ms=args.hang_ms,
        ack_wait_ms=args.ack_wait_ms,
        max_in_flight=args.max_in_flight,
        ack_every_ms=args.ack_every_ms,
        backend=args.backend,
    )
    results = []
    for index in range(args.runs):
        print(f"run {index + 1} of {args.runs}", file=sys.stderr, flush=True)
        results.append(run_one(settings))
    print_table(results)
    print(f"saved {save(results, args.json_out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
