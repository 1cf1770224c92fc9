"""What CI can check of deploy/ without a container runtime: the compose files are valid
Compose (the Compose Specification's schema, and podman-compose's merge of the NATS override)
and say what the README promises, the Dockerfile too, and the Grafana dashboard and alert rules
query series ratewire exports. (deploy/haproxy.cfg is run for real by
tests/cluster/test_haproxy.py, and the image built from deploy/Dockerfile by
tests/e2e/test_container.py.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from ratewire.observability.metrics import Metrics, MetricSources

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
NATS_OVERRIDE = DEPLOY / "docker-compose.nats.yml"


def _schema_errors(*files: Path) -> str:
    """What the Compose Specification's JSON schema (as docker compose validates with) says of
    ``files``: empty when they are valid."""
    checked = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
    )
    return "" if checked.returncode == 0 else checked.stdout + checked.stderr


def _merged(*files: Path) -> str:
    """``podman-compose config`` of ``files`` (merged, anchors and ``${...}`` resolved)."""
    options = [arg for f in files for arg in ("-f", str(f))]
    merged = subprocess.run(
        [sys.executable, "-m", "podman_compose", "--dry-run", *options, "config"],
        capture_output=True,
        text=True,
        env={**os.environ, "RATEWIRE_JWT__SECRET": "s" * 64},
        cwd=DEPLOY,
    )
    assert merged.returncode == 0, merged.stderr[-2000:]
    return merged.stdout


def test_compose_files_are_valid_compose_alone_and_merged(tmp_path: Path) -> None:
    assert _schema_errors(COMPOSE, NATS_OVERRIDE) == ""
    for files in ((COMPOSE,), (COMPOSE, NATS_OVERRIDE)):
        merged = tmp_path / "merged.yml"
        merged.write_text(_merged(*files))
        assert _schema_errors(merged) == "", files
    merged_nats = yaml.safe_load(_merged(COMPOSE, NATS_OVERRIDE))["services"]
    for name in ("ratewire1", "ratewire2", "ratewire3"):
        env = merged_nats[name]["environment"]
        # The override replaces the broker and keeps the base file's database.
        assert env["RATEWIRE_BROKER__BACKEND"] == "nats"
        assert env["RATEWIRE_STORAGE__BACKEND"] == "postgresql"
        assert set(merged_nats[name]["depends_on"]) == {"postgres", "redis", "nats"}


def test_a_typo_in_a_compose_file_is_caught(tmp_path: Path) -> None:
    typo = tmp_path / "docker-compose.yml"
    typo.write_text(COMPOSE.read_text().replace("    ulimits:", "    ulimit:", 1))
    assert "'ulimit' was unexpected" in _schema_errors(typo)


def test_compose_needs_a_jwt_secret() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RATEWIRE_JWT__SECRET"}
    merged = subprocess.run(
        [sys.executable, "-m", "podman_compose", "--dry-run", "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert merged.returncode != 0
    assert "set a secret of at least 32 random bytes" in merged.stderr


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


def test_the_nats_override_moves_every_instance_to_a_jetstream_server() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    override = yaml.safe_load((DEPLOY / "docker-compose.nats.yml").read_text())
    services = override["services"]
    for name in (n for n in compose["services"] if n.startswith("ratewire")):
        env = services[name]["environment"]
        assert env["RATEWIRE_BROKER__BACKEND"] == "nats"
        assert env["RATEWIRE_BROKER__URL"] == "nats://nats:4222"
        assert services[name]["depends_on"]["nats"] == {"condition": "service_healthy"}
    nats = services["nats"]
    assert "-js" in nats["command"] and "-sd" in nats["command"]
    assert nats["volumes"] and nats["healthcheck"]


def test_dockerfile_is_multi_stage_non_root_with_a_readiness_healthcheck() -> None:
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    assert sum(line.startswith("FROM ${BASE_IMAGE}") for line in lines) == 2
    assert "ARG BASE_IMAGE=python:3.11-slim" in lines
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    healthcheck = next(i for i, line in enumerate(lines) if line.startswith("HEALTHCHECK"))
    assert "ratewire.healthcheck" in " ".join(lines[healthcheck : healthcheck + 2])
    # Built from the wheel into a venv, with the drivers a cluster needs (extras of the package).
    text = "\n".join(lines)
    assert "pip wheel --no-cache-dir --no-deps" in text
    assert '"$(ls /dist/ratewire-*.whl)[postgresql,mysql,redis,nats]"' in text
    assert "VOLUME /data" in lines
    assert "RATEWIRE_STORAGE__URL=sqlite:////data/ratewire.db" in text


def _exported_families() -> dict[str, set[str]]:
    """Metric family -> its label names, as a real ``Metrics`` exposes them."""
    metrics = Metrics(MetricSources())
    metrics.observe_request("/ratings", "POST", 201, 0.001)
    metrics.observe_delivery(0.0)
    families: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        labels = families.setdefault(family.name, set())
        for sample in family.samples:
            labels.update(sample.labels)
    for name, label in (
        ("ratewire_websocket_closed", "code"),
        ("ratewire_subscriptions", "kind"),
        ("ratewire_rate_limited", "limit"),
        ("ratewire_storage_errors", "where"),
    ):
        families[name].add(label)  # labelled series without samples yet
    return families


def _queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "ratewire-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert {rule["alert"] for rule in alerts} >= {
        "RatewireRelayLagging",
        "RatewireSlowConsumersCut",
        "RatewireHigh5xxRatio",
    }
    for rule in alerts:
        assert rule["labels"]["severity"] in ("page", "warning")
        assert rule["annotations"]["summary"]
    return exprs + [rule["expr"] for rule in alerts]


def test_dashboard_and_alerts_query_only_series_and_labels_ratewire_exports() -> None:
    families = _exported_families()
    queries = _queries()
    assert len(queries) >= 15
    for query in queries:
        names = re.findall(r"\bratewire_[a-z0-9_]+", query)
        assert names, query
        for name in names:
            family = re.sub(r"_(total|bucket|count|sum)$", "", name)
            assert family in families or name in families, f"{name} in {query!r}"
            known = families.get(family, families.get(name, set())) | {"le", "instance"}
            for grouping in re.findall(r"by \(([^)]*)\)", query):
                for label in filter(None, (part.strip() for part in grouping.split(","))):
                    assert label in known or label == "instance", f"{label} in {query!r}"
