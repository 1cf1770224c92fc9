"""Summarise py-spy raw profiles (``bench.fanout --py-spy DIR``): per thread, the share of
samples by their innermost Python frames, so a before/after pair can be compared by eye.

    python -m bench.profiles bench/results/profiles/ratewire-*.txt --frames 4
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

_FRAME = re.compile(r"^(?P<name>[^ (]+) \((?P<file>[^:]+)(?::\d+)?\)$")


def summarise(path: Path, frames: int = 4, top: int = 12) -> str:
    """The report of one raw profile: threads by samples, each with its top stacks."""
    by_thread: dict[str, Counter[str]] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        parts = stack.split(";")
        thread, calls = parts[0], parts[1:]
        names = []
        for call in calls:
            match = _FRAME.match(call)
            names.append(match.group("name") if match else call)
        idle = not names or names[-1] in ("<module>", "run", "_worker", "wait", "select")
        key = "(idle)" if idle and len(names) <= 3 else " > ".join(names[-frames:])
        by_thread.setdefault(thread, Counter())[key] += int(count)
    out = [f"# {path.name}"]
    for thread, counts in sorted(by_thread.items(), key=lambda item: -item[1].total()):
        total = counts.total()
        out.append(f"## {thread}: {total} samples")
        for key, count in counts.most_common(top):
            out.append(f"{count:7d} {100 * count / total:5.1f}%  {key}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--frames", type=int, default=4, help="innermost frames kept per stack")
    parser.add_argument("--top", type=int, default=12, help="stacks listed per thread")
    args = parser.parse_args(argv)
    for path in args.profiles:
        print(summarise(path, args.frames, args.top))
        print()


if __name__ == "__main__":
    main()
