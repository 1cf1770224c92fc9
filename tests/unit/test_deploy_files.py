"""What CI can check of deploy/ without Docker: the compose file and the Dockerfile say what
the README promises. (deploy/haproxy.cfg is run for real by tests/cluster/test_haproxy.py.)"""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_compose_runs_three_instances_on_postgresql_and_redis_behind_haproxy() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    instances = [name for name in services if name.startswith("ratewire")]
    assert instances == ["ratewire1", "ratewire2", "ratewire3"]
    for name in instances:
        env = services[name]["environment"]
        assert env["RATEWIRE_STORAGE__BACKEND"] == "postgresql"
        assert env["RATEWIRE_BROKER__BACKEND"] == "redis"
        assert env["RATEWIRE_BROKER__URL"].startswith("redis://redis:")
    balancer = services["haproxy"]
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in balancer["volumes"]
    for number in (1, 2, 3):
        assert balancer["environment"][f"RATEWIRE_{number}_WS"] == f"ratewire{number}:8081"
    assert {"postgres", "redis"} <= set(services)


def test_dockerfile_is_multi_stage_non_root_with_a_readiness_healthcheck() -> None:
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    assert sum(line.startswith("FROM ") for line in lines) == 2
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    healthcheck = next(i for i, line in enumerate(lines) if line.startswith("HEALTHCHECK"))
    assert "/readyz" in " ".join(lines[healthcheck : healthcheck + 2])
