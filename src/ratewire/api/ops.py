"""Operations endpoints every role serves: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import orjson
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from ratewire import __version__
from ratewire.observability.metrics import Metrics

router = APIRouter()

#: A readiness probe may not hold /readyz longer than this: an unreachable peer is not ready.
PROBE_TIMEOUT_SECONDS = 2.0

ReadinessProbe = Callable[[], Awaitable[object]]


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    metrics: Metrics | None = getattr(request.app.state, "metrics", None)
    body = metrics.exposition() if metrics is not None else b""
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Response:
    return _json({"status": "ok", "version": __version__})


async def _check(probe: ReadinessProbe) -> str:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            await probe()
    except TimeoutError:
        return f"unavailable: no answer in {PROBE_TIMEOUT_SECONDS:g} s"
    except Exception as exc:  # any failure means not ready; the reason goes to the caller
        return f"unavailable: {exc}"
    return "ok"


@router.get("/readyz", summary="Readiness: storage and broker reachable")
async def readyz(request: Request) -> Response:
    probes: Mapping[str, ReadinessProbe] = getattr(request.app.state, "readiness_probes", {})
    results = await asyncio.gather(*(_check(probe) for probe in probes.values()))
    checks = dict(zip(probes, results, strict=True))
    ready = all(v == "ok" for v in checks.values())
    return _json(
        {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503
    )
