"""The ``commit`` stage of each measured server beside its database's floor (bench.commit_floor),
measured in the same run on the same disk, at the run's write rate (back to back when the
run wrote flat out)."""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.commit_floor import floor
from bench.fanout.measure import Result

#: The targets whose writes are durable commits of one database, and that database.
FLOOR_BACKENDS = {
    "ratewire": "sqlite",
    "ratewire-before": "sqlite",
    "ratewire-asgi": "sqlite",
    "ratewire-sse": "sqlite",
    "pg-local": "postgresql",
    "pg-redis": "postgresql",
    "pg-nats": "postgresql",
    "cluster-3": "postgresql",
    "cluster-3-nats": "postgresql",
}
FLOOR_COMMITS = 500


def commit_beside_floor(results: list[Result], rate: float) -> dict[str, dict[str, float]]:
    """Per target with a ``commit`` stage: its mean and p99 (the median over its runs), the
    paced floor's, and the ratio of the means. Prints them as a table."""
    from rich.console import Console
    from rich.table import Table

    stages: dict[str, list[dict[str, float]]] = {}
    for result in results:
        commit = result.budget.get("commit")
        if commit and result.target in FLOOR_BACKENDS:
            stages.setdefault(result.target, []).append(commit)
    floors: dict[str, dict[str, float]] = {}
    for backend in sorted({FLOOR_BACKENDS[target] for target in stages}):
        with Console(stderr=True).status(f"{backend} commit floor: {FLOOR_COMMITS} commits"):
            floors[backend] = floor(backend, FLOOR_COMMITS, rate, Path.cwd())
    compared = {}
    for target, runs in stages.items():
        backend_floor = floors[FLOOR_BACKENDS[target]]
        mean = statistics.median(run["mean_ms"] for run in runs)
        compared[target] = {
            "commit_mean_ms": mean,
            "commit_p99_ms": statistics.median(run["p99_ms"] for run in runs),
            "floor_mean_ms": backend_floor["mean_ms"],
            "floor_p99_ms": backend_floor["p99_ms"],
            "mean_ratio": round(mean / backend_floor["mean_ms"], 2),
        }
    if compared:
        table = Table(title=f"commit stage beside the database's floor ({rate:g} writes/s; ms)")
        for column in ("target", "commit mean", "commit p99", "floor mean", "floor p99", "x"):
            table.add_column(column, justify="right")
        for target, row in compared.items():
            table.add_row(
                target,
                *(f"{row[key]:.2f}" for key in ("commit_mean_ms", "commit_p99_ms")),
                *(f"{row[key]:.2f}" for key in ("floor_mean_ms", "floor_p99_ms")),
                f"{row['mean_ratio']:.2f}",
            )
        Console(width=160).print(table)
    return compared
