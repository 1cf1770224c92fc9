"""What a run prints and saves: one table row per run, the median over the runs, and the
JSON file (bench/results/consumers-<date>.json unless ``--json-out`` says otherwise)."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench.consumers.run import Result

ROOT = Path(__file__).resolve().parents[2]

#: Figures the median is taken of: (name in the JSON's "median", where it is in a result).
MEDIAN_OF = {
    "acked_per_s": ("acked_per_s",),
    "p50_ms": ("counts", "p50_ms"),
    "p99_ms": ("counts", "p99_ms"),
    "created_p50_ms": ("counts", "created_p50_ms"),
    "created_p99_ms": ("counts", "created_p99_ms"),
    "post_p50_ms": ("post_p50_ms",),
    "spread": ("counts", "spread"),
    "redelivery_last_ms": ("counts", "redelivery_last_ms"),
    "server_cpu_ms_per_event": ("server_cpu_ms_per_event",),
}


def _figure(result: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = result
    for key in path:
        value = value[key]
    return float(value)


def median(results: list[Result]) -> dict[str, float | None]:
    """The median of each figure over the runs (redelivery: over the runs whose killed member
    held events; None when none did)."""
    dicts = [result.as_dict() for result in results]
    found: dict[str, float | None] = {}
    for name, path in MEDIAN_OF.items():
        runs = dicts
        if name.startswith("redelivery"):
            runs = [d for d in dicts if d["counts"]["held_at_kill"]]
        values = [_figure(d, path) for d in runs]
        found[name] = round(statistics.median(values), 3) if values else None
    return found


def print_table(results: list[Result]) -> None:
    from rich.console import Console
    from rich.table import Table

    settings = results[0].settings
    table = Table(
        title=f"durable consumer: {settings.members} members on rating.global, "
        f"{settings.writes_per_s:g} writes/s offered, {settings.backend} "
        "(latency: write sent, or the rating's createdAt, to first delivery)"
    )
    for column in (
        "run", "writes", "acked/s", "p50 ms", "p99 ms", "max ms", "from created p50/p99",
        "POST p50/p99", "per member", "spread",
        "held at kill", "redelivered in ms", "lost", "acked after ack", "redeliveries",
        "CPU ms/event", "load",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    for index, result in enumerate(results, 1):
        c = result.counts
        table.add_row(
            str(index),
            f"{result.writes_ok:,}"
            + (f" ({result.writes_failed} failed)" if result.writes_failed else ""),
            f"{result.acked_per_s:,.0f}",
            f"{c['p50_ms']:.2f}",
            f"{c['p99_ms']:.2f}",
            f"{c['max_ms']:.1f}",
            f"{c['created_p50_ms']:.1f}/{c['created_p99_ms']:.1f}",
            f"{result.post_p50_ms:.1f}/{result.post_p99_ms:.1f}",
            "/".join(map(str, c["per_member"])),
            f"{100 * c['spread']:.1f}%",
            f"{c['held_redelivered']}/{c['held_at_kill']}",
            f"{c['redelivery_first_ms']:.0f}-{c['redelivery_last_ms']:.0f}"
            if c["held_at_kill"]
            else "-",
            str(c["lost"]),
            str(c["delivered_after_ack"]),
            str(c["redeliveries"]),
            f"{result.server_cpu_ms_per_event:.2f}",
            f"{result.load_average:.1f}",
        )
    Console(width=200).print(table)
    if len(results) > 1:
        Console().print(f"median of {len(results)} runs: {median(results)}")


def save(results: list[Result], json_out: Path | None) -> Path:
    """The runs and their median, with the machine's note; returns the file written."""
    path = json_out or ROOT / "bench" / "results" / f"consumers-{time.strftime('%Y-%m-%d')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "benchmark": "bench.consumers",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "median": median(results),
        "runs": [result.as_dict() for result in results],
    }
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path
