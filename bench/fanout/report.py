"""What a run prints and saves: the results table, the server's latency budget, the ratios
to the guide's server over alternating rounds, and the JSON file."""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.fanout.measure import Result
from ratewire.observability.latency import COMMIT_PARTS, STAGES


def print_table(results: list[Result]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fan-out (one game topic; send-to-receive latency)")
    for column in (
        "target",
        "subs",
        "rate/s",
        "writes",
        "delivered",
        "lost",
        "gaps/dups",
        "deliveries/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "POST p50/p99",
        "CPU ms/1k",
        "CPU ms/write",
        "conn/s",
        "KiB/idle conn",
    ):
        table.add_column(column, justify="right")
    for r in results:
        label = f" ({r.load})" if r.load != "plain" else " (filtered)" if r.filter else ""
        table.add_row(
            r.target + label,
            str(r.subs),
            "max" if r.rate == 0 else f"{r.rate:g}",
            str(r.writes_ok),
            str(r.delivered),
            str(r.lost),
            f"{r.gaps}/{r.duplicates}",
            f"{r.deliveries_per_s:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.max_ms:.1f}",
            f"{r.post_p50_ms:.1f}/{r.post_p99_ms:.1f}",
            f"{r.cpu_ms_per_1000_deliveries:.1f}",
            f"{r.server_cpu_ms_per_write:.2f}",
            f"{r.connects_per_s:,.0f}",
            f"{r.idle_kib_per_connection:.1f}",
        )
    Console(width=160).print(table)


def summary_ratios(results: list[Result]) -> list[dict[str, float | str]]:
    """``--summary``: per target, the server's CPU per write with plain and summary
    subscribers, how many times less the summary load costs in all, and (beside the
    ``idle`` run: the writes alone, the connections open) of what the subscribers cost."""
    plain = {r.target: r for r in results if r.load == "plain"}
    idle = {r.target: r for r in results if r.load == "idle"}
    rows: list[dict[str, float | str]] = []
    for r in results:
        if r.load != "summary" or r.target not in plain:
            continue
        base, ours = plain[r.target].server_cpu_ms_per_write, r.server_cpu_ms_per_write
        row: dict[str, float | str] = {
            "target": r.target,
            "plain_ms_per_write": base,
            "summary_ms_per_write": ours,
            "ratio": round(base / ours, 2) if ours else float("nan"),
            "frames": r.delivered,
            "behind": r.summaries_behind,
        }
        if r.target in idle:
            writes = idle[r.target].server_cpu_ms_per_write
            plain_own, summary_own = base - writes, ours - writes
            row |= {
                "writes_only_ms_per_write": writes,
                "plain_subscribers_ms_per_write": round(plain_own, 3),
                "summary_subscribers_ms_per_write": round(summary_own, 3),
                # None: the summary load cost no more than the writes alone (within the runs'
                # noise), so there is no ratio to give, only "more than plain / noise".
                "subscribers_ratio": round(plain_own / summary_own, 1) if summary_own > 0 else None,
            }
        rows.append(row)
    return rows


def print_summary_ratios(results: list[Result]) -> list[dict[str, float | str]]:
    """Print :func:`summary_ratios` as a table; returns them."""
    from rich.console import Console
    from rich.table import Table

    rows = summary_ratios(results)
    table = Table(title="summary streams beside plain subscribers (server CPU ms per write)")
    columns = {
        "target": "target",
        "plain_ms_per_write": "plain",
        "summary_ms_per_write": "summary",
        "ratio": "plain/summary",
        "writes_only_ms_per_write": "writes alone",
        "plain_subscribers_ms_per_write": "plain subs' own",
        "summary_subscribers_ms_per_write": "summary subs' own",
        "subscribers_ratio": "own: plain/summary",
        "frames": "frames",
        "behind": "behind",
    }
    for title in columns.values():
        table.add_column(title, justify="right")
    for row in rows:
        table.add_row(*(str(row.get(key, "")) for key in columns))
    Console(width=160).print(table)
    return rows


def print_budget(results: list[Result]) -> None:
    """The server-side latency budget of each ratewire run (stage by stage, and GC)."""
    from rich.console import Console
    from rich.table import Table

    with_budget = [r for r in results if r.budget]
    if not with_budget:
        return
    table = Table(title="latency budget (server side, per event; ms: mean / p50 / p99)")
    table.add_column("stage")
    for r in with_budget:
        table.add_column(r.target, justify="right")
    kinds = (*STAGES, *COMMIT_PARTS, "gc0", "gc1", "gc2")
    keys = [k for k in kinds if any(k in r.budget for r in with_budget)]
    for key in keys:
        cells = []
        for r in with_budget:
            b = r.budget.get(key)
            cells.append(
                "-"
                if b is None
                else f"{b['mean_ms']:.2f} / {b['p50_ms']:.2f} / {b['p99_ms']:.2f}"
                + (f" (x{b['count']:.0f})" if key.startswith("gc") else "")
            )
        table.add_row(key, *cells)
    Console(width=160).print(table)


def write_json(json_out: Path, payload: dict[str, object]) -> None:
    json_out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{os.cpu_count()} cores, {os.uname().machine}",
        **payload,
    }
    json_out.write_text(json.dumps(payload, indent=2) + "\n")


@dataclass
class RatioSummary:
    """One target against the guide's server over alternating rounds."""

    target: str
    #: Per round: the target's figure divided by the guide's in the same round.
    p50: list[float]
    p99: list[float]
    deliveries: list[float]
    #: The publisher's POST p50, and server CPU per delivery, against the guide's.
    post_p50: list[float] = field(default_factory=list)
    cpu_per_delivery: list[float] = field(default_factory=list)

    @staticmethod
    def spread(values: list[float]) -> dict[str, float]:
        return {
            "median": round(statistics.median(values), 3),
            "min": round(min(values), 3),
            "max": round(max(values), 3),
        }

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "p50_ratio": {"runs": self.p50, **self.spread(self.p50)},
            "p99_ratio": {"runs": self.p99, **self.spread(self.p99)},
            "deliveries_ratio": {"runs": self.deliveries, **self.spread(self.deliveries)},
            "post_p50_ratio": {"runs": self.post_p50, **self.spread(self.post_p50)},
            "cpu_per_delivery_ratio": {
                "runs": self.cpu_per_delivery,
                **self.spread(self.cpu_per_delivery),
            },
        }


def print_ratios(
    rounds: int, names: list[str], results: list[list[Result]], summaries: list[RatioSummary]
) -> None:
    """The alternating rounds' table: each target's ratios to the guide's server (median and
    spread over the rounds), and its losses over all of them. ``results`` holds one list per
    round, in the order of ``names``."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{rounds} alternating rounds: ratio to the guide's server (median, min-max)"
    )
    for column in (
        "target",
        "p50 ratio",
        "p99 ratio",
        "deliveries/s ratio",
        "POST p50 ratio",
        "CPU/delivery ratio",
        "lost",
        "gaps/dups",
    ):
        table.add_column(column, justify="right")
    for summary in summaries:
        position = names.index(summary.target)
        runs = [r[position] for r in results]
        cells = []
        for values in (
            summary.p50,
            summary.p99,
            summary.deliveries,
            summary.post_p50,
            summary.cpu_per_delivery,
        ):
            spread = RatioSummary.spread(values)
            cells.append(f"{spread['median']:.2f} ({spread['min']:.2f}-{spread['max']:.2f})")
        table.add_row(
            summary.target,
            *cells,
            str(sum(r.lost for r in runs)),
            f"{sum(r.gaps for r in runs)}/{sum(r.duplicates for r in runs)}",
        )
    Console(width=160).print(table)
