"""``ratewire bench fanout | consumers | rest``: the benchmarks of bench/, from a source checkout.

bench/ is not in the wheel (pyproject packages src/ only): it is development tooling that
needs the checkout around it (bench/peers' Node server, bench/results, the wrk scripts). So
these commands run ``python -m bench.<name>`` as a child process in the checkout this
ratewire was installed from (``pip install -e .``), where ``bench`` imports as the package it
is; the installed package never imports it. From a wheel they say so and stop.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
@click.option(
    "--filter",
    "expression",
    default=None,
    metavar="EXPR",
    help='every ratewire subscriber shares this CEL filter, e.g. "data.score == 1"',
)
def bench_fanout(
    subs: int,
    rate: float,
    seconds: float,
    procs: int,
    target: str,
    json_out: Path | None,
    expression: str | None,
) -> None:
    """N subscribers of one game topic, R writes/s over REST: deliveries/s, losses, latency."""
    argv = ["--subs", str(subs), "--rate", str(rate), "--seconds", str(seconds)]
    argv += ["--procs", str(procs), "--target", target]
    if expression is not None:
        argv += ["--filter", expression]
    _run_in_checkout("fanout", argv + (["--json-out", str(json_out)] if json_out else []))


@bench.command("consumers")
@click.option("--writes-per-s", type=click.FloatRange(min=1), default=500, show_default=True)
@click.option("--members", type=click.IntRange(min=2), default=4, show_default=True)
@click.option("--seconds", type=click.FloatRange(min=1), default=20, show_default=True)
@click.option("--ack-wait-ms", type=click.IntRange(min=100), default=30_000, show_default=True)
@click.option(
    "--backend",
    type=click.Choice(["sqlite", "postgresql"]),
    default="sqlite",
    show_default=True,
)
@click.option("--runs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--json-out", type=click.Path(path_type=Path), default=None)
def bench_consumers(
    writes_per_s: float,
    members: int,
    seconds: float,
    ack_wait_ms: int,
    backend: str,
    runs: int,
    json_out: Path | None,
) -> None:
    """M members of one durable consumer on rating.global: acked/s, latency, redelivery after
    a member is SIGKILLed, every offset counted (more options: python -m bench.consumers -h)."""
    argv = ["--writes-per-s", str(writes_per_s), "--members", str(members)]
    argv += ["--seconds", str(seconds), "--ack-wait-ms", str(ack_wait_ms)]
    argv += ["--backend", backend, "--runs", str(runs)]
    _run_in_checkout("consumers", argv + (["--json-out", str(json_out)] if json_out else []))


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
    argv = ["--backend", backend, "--seconds", str(seconds), "--connections", str(connections)]
    _run_in_checkout("rest", argv)


def _run_in_checkout(name: str, argv: list[str]) -> None:
    """``python -m bench.<name> ARGV`` in this ratewire's source checkout; exits with its
    status."""
    checkout = Path(__file__).resolve().parents[3]
    bench = checkout / "bench"
    if not ((bench / name / "__main__.py").is_file() or (bench / f"{name}.py").is_file()):
        click.echo(
            "ratewire bench: the benchmarks are in bench/ of the source checkout, not in the "
            f"installed package: run python -m bench.{name} in a checkout, or install ratewire "
            "from one (pip install -e .)",
            err=True,
        )
        sys.exit(2)
    sys.exit(subprocess.call([sys.executable, "-m", f"bench.{name}", *argv], cwd=checkout))
