"""``ratewire bench fanout | rest``: the benchmarks of bench/, from a source checkout."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click


@click.group()
def bench() -> None:
    """The benchmarks of bench/ (run from a source checkout)."""


@bench.command("fanout")
@click.option("--subs", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=50,
    show_default=True,
    help="writes/s; 0 = as fast as they go",
)
@click.option("--seconds", type=click.FloatRange(min=1), default=10, show_default=True)
@click.option(
    "--procs", type=click.IntRange(min=1), default=2, show_default=True, help="subscriber processes"
)
@click.option(
    "--target",
    default="both",
    show_default=True,
    help="ratewire, ratewire-asgi, node-guide, both, all; cluster targets: pg-local, pg-redis, "
    "cluster-3, workers-2, cluster (PostgreSQL + Redis); see python -m bench.fanout --help",
)
@click.option("--json-out", type=click.Path(path_type=Path), default=None)
def bench_fanout(
    subs: int, rate: float, seconds: float, procs: int, target: str, json_out: Path | None
) -> None:
    """N subscribers of one game topic, R writes/s over REST: deliveries/s, losses, latency."""
    fanout = _bench_module("fanout")
    argv = ["--subs", str(subs), "--rate", str(rate), "--seconds", str(seconds)]
    argv += ["--procs", str(procs), "--target", target]
    fanout.main(argv + (["--json-out", str(json_out)] if json_out else []))


@bench.command("rest")
@click.option(
    "--backend",
    type=click.Choice(["sqlite", "postgresql", "cluster", "both", "all"]),
    default="both",
    show_default=True,
)
@click.option("--seconds", type=click.FloatRange(min=1), default=10, show_default=True)
@click.option("--connections", type=click.IntRange(min=1), default=32, show_default=True)
def bench_rest(backend: str, seconds: float, connections: int) -> None:
    """/healthz, summary, rating, POST and PUT under wrk load (sqlite, postgresql, cluster)."""
    rest = _bench_module("rest")
    rest.main(["--backend", backend, "--seconds", str(seconds), "--connections", str(connections)])


def _bench_module(name: str) -> Any:
    import importlib

    checkout = Path(__file__).resolve().parents[3]
    if not (checkout / "bench" / f"{name}.py").is_file():
        click.echo(
            "ratewire bench: bench/ is part of the source checkout; run it from there", err=True
        )
        sys.exit(2)
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    return importlib.import_module(f"bench.{name}")
