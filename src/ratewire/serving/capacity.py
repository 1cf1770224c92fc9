"""Connection capacity: how many connections this process can hold.

A streaming server is mostly open sockets, one descriptor each. At start the soft open-files
limit is raised to the hard one (the soft default of 1024 would otherwise cap a server that
the machine allows to hold tens of thousands), and the WebSocket side is given
``limits.max_connections``: by default the descriptors left after a reserve. The reserve
keeps ``/healthz``, ``/readyz``, ``/metrics``, REST, the database pool and Redis working while
the WebSocket side is full (the policy at the limit: ratewire.realtime.slots; running out
anyway: ratewire.serving.watchdogs).
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

log = logging.getLogger("ratewire.capacity")

#: Measured per idle WebSocket connection on the module port (README, fan-out table).
IDLE_CONNECTION_KIB = 13.2


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, hard, exc)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def reserve_for(descriptors: int) -> int:
    """Descriptors kept back from WebSockets: REST clients, pools, files, listeners."""
    return max(64, descriptors // 10)


@dataclass(frozen=True, slots=True)
class Capacity:
    """What this process can hold."""

    descriptors: int
    hard_limit: int
    reserve: int
    max_connections: int
    configured: bool

    def summary(self) -> str:
        memory_mib = self.max_connections * IDLE_CONNECTION_KIB / 1024
        return (
            f"capacity: {self.descriptors} open files allowed (hard limit {self.hard_limit}); "
            f"{self.max_connections} WebSocket connections "
            f"({'limits.max_connections' if self.configured else 'derived'}, "
            f"{self.reserve} descriptors kept for REST and backends), "
            f"about {memory_mib:,.0f} MiB when all are idle"
        )

    def shortfall(self) -> str | None:
        """Why the configured maximum cannot be reached, and how to fix it, or None."""
        needed = self.max_connections + self.reserve
        if needed <= self.descriptors:
            return None
        return (
            f"limits.max_connections {self.max_connections} needs about {needed} open files but "
            f"only {self.descriptors} are allowed: raise the hard limit (ulimit -n {needed}, "
            f"systemd LimitNOFILE={needed}, docker run --ulimit nofile={needed}:{needed})"
        )


def plan(max_connections: int | None) -> Capacity:
    """Raise the descriptor limit and work out the WebSocket connection budget."""
    soft, hard = raise_descriptor_limit()
    reserve = reserve_for(soft)
    if max_connections is None:
        return Capacity(soft, hard, reserve, max(1, soft - reserve), configured=False)
    return Capacity(soft, hard, reserve, max_connections, configured=True)
