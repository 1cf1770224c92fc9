"""Which WebSocket server implementation should carry the fan-out? The same minimal broadcast
server (JWT on ``?token=``, ``connection_success``, ``subscribe``, and a ``POST /ratings``
trigger that encodes each event once and writes it to every subscriber without awaiting) on
three implementations (bench/ws_broadcast.py), measured with the fan-out harness:

- picows (Cython framing over asyncio/uvloop),
- the ``websockets`` library's asyncio server,
- uvicorn's own WebSocket (websockets-sansio) under a plain ASGI app.

    python -m bench.ws_impls --subs 2000 --rate 0 --seconds 10
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from bench.fanout.measure import run_one
from bench.fanout.report import print_table
from bench.servers import raise_fd_limit
from bench.ws_broadcast import IMPLEMENTATIONS, start


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subs", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=0)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    raise_fd_limit()
    results = []
    for impl in IMPLEMENTATIONS:
        target = start(impl)
        try:
            results.append(run_one(target, args.subs, args.rate, args.seconds, 2))
        finally:
            target.stop()
    print_table(results)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps([r.__dict__ for r in results], indent=2))


if __name__ == "__main__":
    main()
