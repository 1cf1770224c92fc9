"""The servers a run can be pointed at (``--target``), by name, and the presets that name
several of them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from bench.servers import (
    Target,
    start_cluster,
    start_node_guide,
    start_ratewire,
    start_ratewire_asgi,
    start_redis_storage,
)
from bench.ws_broadcast import start


def _floor() -> Target:
    target = start("picows")
    target.name = "floor"
    return target


STARTERS: dict[str, Callable[[], Target]] = {
    "ratewire": start_ratewire,
    "ratewire-normal": lambda: start_ratewire(
        env_extra={"RATEWIRE_STORAGE__SQLITE_SYNCHRONOUS": "normal"}, name="ratewire-normal"
    ),
    # No durable store at all (memory): what the pipeline costs without the commit.
    "ratewire-memory": lambda: start_ratewire("memory", "memory://", name="ratewire-memory"),
    "ratewire-2w": lambda: start_ratewire(args=("--workers", "2"), name="ratewire-2w"),
    # Past one process's open-files limit (20,000 here): 50,000 subscribers on one host.
    "ratewire-3w": lambda: start_ratewire(args=("--workers", "3"), name="ratewire-3w"),
    # An earlier checkout's server (RATEWIRE_BENCH_BEFORE_SRC: its src/ directory), for
    # before/after runs in the same rounds.
    "ratewire-before": lambda: start_ratewire(
        name="ratewire-before", source=Path(os.environ["RATEWIRE_BENCH_BEFORE_SRC"])
    ),
    "ratewire-asgi": start_ratewire_asgi,
    # The same server, its subscribers on Server-Sent Events (GET /stream) instead.
    "ratewire-sse": lambda: start_ratewire(name="ratewire-sse").following_streams(),
    "node-guide": start_node_guide,
    # The floor: a bare picows server that fans out each POST at once, with no storage,
    # history or auth beyond the token (bench/ws_broadcast.py).
    "floor": _floor,
    "pg-local": lambda: start_cluster("pg-local", broker="local"),
    "pg-redis": lambda: start_cluster("pg-redis"),
    "pg-nats": lambda: start_cluster("pg-nats", broker="nats"),
    "cluster-3": lambda: start_cluster("cluster-3", instances=3),
    "cluster-3-nats": lambda: start_cluster("cluster-3-nats", instances=3, broker="nats"),
    "workers-2": lambda: start_cluster("workers-2", workers=2),
    "redis-store": lambda: start_redis_storage("redis-store"),
}

#: ``--target`` names these as well as single targets.
PRESETS: dict[str, tuple[str, ...]] = {
    "both": ("ratewire", "node-guide"),
    "all": ("ratewire", "ratewire-asgi", "node-guide"),
    # The embedded default three ways (synchronous full and normal, two workers) and the
    # guide's server.
    "embedded": ("ratewire", "ratewire-normal", "ratewire-2w", "node-guide"),
    # Cluster mode against its single-node baselines, on PostgreSQL, in one run.
    "cluster": ("pg-local", "pg-redis", "cluster-3", "workers-2"),
    # The two cluster brokers side by side, one instance and three.
    "brokers": ("pg-redis", "pg-nats", "cluster-3", "cluster-3-nats"),
    # WebSockets and Server-Sent Events on one server build, in one run.
    "transports": ("ratewire", "ratewire-sse"),
    # The storage backends, single node: SQLite (the default) and Redis.
    "storage": ("ratewire", "redis-store"),
}
