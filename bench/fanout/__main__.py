"""``python -m bench.fanout``: the command line (see bench/fanout/__init__.py)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import bench.fanout
from bench.fanout.runs import run_alternating, run_fanout, run_summary
from bench.fanout.targets import PRESETS, STARTERS


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout", description=(bench.fanout.__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--subs", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50, help="writes/s; 0 = as fast as they go")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--procs", type=int, default=2, help="subscriber processes")
    parser.add_argument(
        "--target",
        default="both",
        help=f"a target ({', '.join(STARTERS)}), a comma-separated list of them, or a preset "
        f"({', '.join(PRESETS)})",
    )
    parser.add_argument(
        "--alternate",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="run the targets and the guide's server ROUNDS times, alternating, and report the "
        "median and spread of each ratio to the guide (5 is what the README's figures use)",
    )
    parser.add_argument(
        "--summary",
        action="store_true",
        help="each target three times: plain subscribers of the game, then of summary.game.{id} at "
        "--interval-ms, then of another game (the writes alone); compares the server's CPU per "
        "write (ratewire targets only)",
    )
    parser.add_argument("--interval-ms", type=int, default=1000, help="with --summary")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument(
        "--filter",
        dest="event_filter",
        default=None,
        metavar="EXPR",
        help='every ratewire subscriber subscribes with this CEL filter (e.g. "data.score == 1": '
        "the writes' scores cycle 1-5, so it passes a fifth); the guide's server has none",
    )
    parser.add_argument(
        "--publisher",
        choices=("auto", "inline", "separate"),
        default="auto",
        help="where the writes are made: inline (in the one subscriber process, as an agent "
        "that holds every subscription and writes too), separate (this process); auto: inline "
        "with --procs 1",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="DIR",
        help="sample each ratewire server with py-spy while it is measured; raw stacks to DIR "
        "(python -m bench.profiles DIR/*.txt summarises them)",
    )
    args = parser.parse_args(argv)
    targets = PRESETS.get(args.target) or tuple(args.target.split(","))
    unknown = [name for name in targets if name not in STARTERS]
    if unknown:
        parser.error(f"--target: unknown target {', '.join(unknown)}")
    if args.summary:
        if args.target == "both":
            targets = ("ratewire",)
        if "node-guide" in targets:
            parser.error("--summary: the guide's server has no summary streams")
        if args.interval_ms < 50:
            parser.error("--interval-ms must be at least 50")
        run_summary(
            args.subs,
            args.rate,
            args.seconds,
            args.interval_ms,
            targets=targets,
            procs=args.procs,
            json_out=args.json_out,
            publisher=args.publisher,
        )
        return
    if args.alternate:
        run_alternating(
            args.subs,
            args.rate,
            args.seconds,
            args.alternate,
            targets=targets,
            procs=args.procs,
            json_out=args.json_out,
            publisher=args.publisher,
            profile_dir=args.py_spy,
            event_filter=args.event_filter,
        )
        return
    run_fanout(
        args.subs,
        args.rate,
        args.seconds,
        targets=targets,
        procs=args.procs,
        json_out=args.json_out,
        publisher=args.publisher,
        profile_dir=args.py_spy,
        event_filter=args.event_filter,
    )


if __name__ == "__main__":
    main()
