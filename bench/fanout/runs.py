"""Every target in turn, once (:func:`run_fanout`) or in alternating rounds against the
guide's server (:func:`run_alternating`); or each target's plain and summary loads side by
side (:func:`run_summary`, ``--summary``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from bench.fanout.floor import commit_beside_floor
from bench.fanout.measure import Result, run_one, summary_drain_seconds
from bench.fanout.report import (
    RatioSummary,
    print_budget,
    print_ratios,
    print_summary_ratios,
    print_table,
    write_json,
)
from bench.fanout.targets import STARTERS
from bench.servers import raise_fd_limit


def measure(
    name: str,
    subs: int,
    rate: float,
    seconds: float,
    procs: int,
    *,
    publisher: str = "auto",
    profile_dir: Path | None = None,
    event_filter: str | None = None,
    interval_ms: int = 0,
    idle: bool = False,
    drain_seconds: float | None = None,
) -> Result:
    """Start the target called ``name``, measure it once (:func:`run_one`), stop it."""
    from rich.console import Console

    load = f", summaries every {interval_ms} ms" if interval_ms else ""
    load = ", subscribed elsewhere" if idle else load
    with Console(stderr=True).status(
        f"{name}: {subs} subscribers{load}, {'max' if rate == 0 else rate} writes/s, {seconds:g} s"
    ):
        target = STARTERS[name]()
        try:
            return run_one(
                target,
                subs,
                rate,
                seconds,
                procs,
                publisher=publisher,
                profile_dir=profile_dir,
                event_filter=event_filter,
                interval_ms=interval_ms,
                idle=idle,
                drain_seconds=drain_seconds,
            )
        finally:
            target.stop()


def run_fanout(
    subs: int,
    rate: float,
    seconds: float,
    *,
    targets: Sequence[str] = ("ratewire", "node-guide"),
    procs: int = 2,
    json_out: Path | None = None,
    publisher: str = "auto",
    profile_dir: Path | None = None,
    event_filter: str | None = None,
) -> list[Result]:
    """Run the benchmark against each target in turn (same machine, same run) and report."""
    raise_fd_limit()
    results = [
        measure(
            name,
            subs,
            rate,
            seconds,
            procs,
            publisher=publisher,
            profile_dir=profile_dir,
            event_filter=event_filter,
        )
        for name in targets
    ]
    print_table(results)
    print_budget(results)
    floors = commit_beside_floor(results, rate)
    if json_out is not None:
        write_json(json_out, {"results": [asdict(r) for r in results], "commit_floor": floors})
    return results


def run_summary(
    subs: int,
    rate: float,
    seconds: float,
    interval_ms: int,
    *,
    targets: Sequence[str] = ("ratewire",),
    procs: int = 2,
    json_out: Path | None = None,
    publisher: str = "auto",
) -> list[Result]:
    """Each target three times: ``subs`` subscribers of the game's every update, then of its
    ``summary.game.{id}`` at ``interval_ms``, then of another game (the writes alone, with
    the same connections open); the server's CPU per write of each, and the ratios, in all
    and of what the subscribers themselves cost (issue 40: 1,000 summary subscribers at 200
    writes/s and 1,000 ms should cost the server at least 10x less than 1,000 plain ones)."""
    raise_fd_limit()
    results = []
    # One drain for the three: the server's CPU is counted over the same time in each.
    drain = summary_drain_seconds(subs, interval_ms)
    for name in targets:
        for interval, idle in ((0, False), (interval_ms, False), (0, True)):
            results.append(
                measure(
                    *(name, subs, rate, seconds, procs),
                    publisher=publisher,
                    interval_ms=interval,
                    idle=idle,
                    drain_seconds=drain,
                )
            )
    print_table(results)
    ratios = print_summary_ratios(results)
    if json_out is not None:
        write_json(json_out, {"results": [asdict(r) for r in results], "ratios": ratios})
    return results


def _ratio(ours: float, guide: float) -> float:
    return round(ours / guide, 3) if guide else float("nan")


def run_alternating(
    subs: int,
    rate: float,
    seconds: float,
    rounds: int,
    *,
    targets: Sequence[str] = ("ratewire", "node-guide"),
    procs: int = 2,
    json_out: Path | None = None,
    publisher: str = "auto",
    profile_dir: Path | None = None,
    event_filter: str | None = None,
) -> list[RatioSummary]:
    """``rounds`` rounds of every target, the order rotated each round; each non-guide
    target's p50, p99 and deliveries/s divided by the guide's of the same round. Single runs
    on a shared 2-core machine swing by 2x: the median of these ratios is the figure."""
    raise_fd_limit()
    names = list(dict.fromkeys([*targets, "node-guide"]))
    results: list[list[Result]] = []
    for index in range(rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        by_name = {
            name: measure(
                name,
                subs,
                rate,
                seconds,
                procs,
                publisher=publisher,
                profile_dir=profile_dir,
                event_filter=event_filter,
            )
            for name in order
        }
        results.append([by_name[name] for name in names])
        print_table(results[-1])
    summaries = []
    for position, name in enumerate(names):
        if name == "node-guide":
            continue
        guide_at = names.index("node-guide")
        pairs = [(r[position], r[guide_at]) for r in results]
        summaries.append(
            RatioSummary(
                name,
                [round(ours.p50_ms / guide.p50_ms, 3) for ours, guide in pairs],
                [round(ours.p99_ms / guide.p99_ms, 3) for ours, guide in pairs],
                [round(ours.deliveries_per_s / guide.deliveries_per_s, 3) for ours, guide in pairs],
                [_ratio(ours.post_p50_ms, guide.post_p50_ms) for ours, guide in pairs],
                [
                    _ratio(ours.cpu_ms_per_1000_deliveries, guide.cpu_ms_per_1000_deliveries)
                    for ours, guide in pairs
                ],
            )
        )
    print_ratios(rounds, names, results, summaries)
    print_budget([r for round_results in results for r in round_results][: len(names)])
    floors = commit_beside_floor([r for round_results in results for r in round_results], rate)
    if json_out is not None:
        write_json(
            json_out,
            {
                "subs": subs,
                "rate": rate,
                "seconds": seconds,
                "filter": event_filter,
                "rounds": [[asdict(r) for r in round_results] for round_results in results],
                "ratios": [summary.as_dict() for summary in summaries],
                "commit_floor": floors,
            },
        )
    return summaries
