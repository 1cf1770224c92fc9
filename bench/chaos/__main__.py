"""``python -m bench.chaos --seconds 60 --seed 7``: one chaos run (see bench/chaos/__init__.py).
Exits 1 when the checker finds a violation; the report names the seed to replay it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

from bench.chaos.run import human_summary, run, save


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json-out", type=Path, default=None, help="the report as JSON")
    parser.add_argument("--history-out", type=Path, default=None, help="the whole history")
    parser.add_argument("--workdir", type=Path, default=None, help="logs of every process")
    parser.add_argument(
        "--wipe-every",
        type=int,
        default=40,
        help="every Nth fault deletes the broker's data before restarting it (default 40)",
    )
    parser.add_argument(
        "--broker",
        choices=("redis", "nats"),
        default="redis",
        help="the cluster broker the instances share (default redis)",
    )
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ratewire-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    history, verdict, result = asyncio.run(
        run(
            args.seconds,
            args.seed,
            workdir,
            progress=progress,
            wipe_every=args.wipe_every,
            broker=args.broker,
        )
    )
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(result, indent=2))
    if args.history_out is not None:
        save(history, args.history_out)
    print(human_summary(result))
    sys.exit(1 if verdict.violations else 0)


if __name__ == "__main__":
    main()
