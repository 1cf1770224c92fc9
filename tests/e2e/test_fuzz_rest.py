"""Schemathesis against ``/openapi.json`` of a real server: for every operation, generated
requests, valid and invalid, never get a 5xx, and every answer matches the documented status
codes, content types and schemas. Derandomized (the same examples on every run) with a bounded
number of examples per operation, so it is repeatable and stays inside the suite's budget."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import load_all_checks, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tests.support.server import SECRET, ServerProcess

from ratewire.api import create_app
from ratewire.broker.announcements import LocalAnnouncements
from ratewire.config import JwtSettings, RatingsSettings, Settings, WebhooksSettings
from ratewire.security.tokens import TokenService
from ratewire.services.ratings import RatingService
from ratewire.services.revocations import RevocationService
from ratewire.storage.memory import MemoryStore
from ratewire.webhooks.admin import WebhookAdmin

pytestmark = pytest.mark.e2e
load_all_checks()

EXAMPLES_PER_OPERATION = 60
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


async def _no_events() -> int:
    return 0


def _operations() -> list[tuple[str, str, schemathesis.GenerationMode]]:
    """Every (method, path) of the OpenAPI document, read from an in-process app so the test
    list is known before any server starts (a new route is fuzzed without editing this)."""
    tokens = TokenService(JwtSettings(secret=SECRET))
    store = MemoryStore()
    app = create_app(
        Settings(),
        RatingService(store, RatingsSettings()),
        tokens,
        revocations=RevocationService(
            tokens, store, LocalAnnouncements(), lambda _: None, poll_seconds=60
        ),
        webhooks=WebhookAdmin(store.webhooks, WebhooksSettings(), global_head=_no_events),
    )
    cases = []
    for path, item in app.openapi()["paths"].items():
        for method, operation in item.items():
            cases.append((method.upper(), path, schemathesis.GenerationMode.POSITIVE))
            # Negative cases need something schemathesis can break: a constrained query or
            # header parameter, or a body (it cannot send an invalid path segment, and any
            # header value is a valid free-form string; with nothing to break, hypothesis
            # reports the case unsatisfiable).
            breakable = [p for p in operation.get("parameters", []) if _breakable(p)]
            if breakable or "requestBody" in operation:
                cases.append((method.upper(), path, schemathesis.GenerationMode.NEGATIVE))
    return cases


def _breakable(parameter: dict[str, Any]) -> bool:
    if parameter["in"] == "path":
        return False
    schema = parameter.get("schema", {})
    options = schema.get("anyOf", [schema])
    constrained = {"pattern", "maxLength", "minLength", "enum", "minimum", "maximum", "format"}
    return any(o.get("type") not in ("string", "null") or constrained & set(o) for o in options)


@pytest.fixture(scope="module")
def fuzzed_server(module_server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return module_server_factory(log_level="WARNING")


@pytest.fixture(scope="module")
def api_schema(fuzzed_server: ServerProcess) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzzed_server.base_url}/openapi.json")


@pytest.mark.parametrize(("method", "path", "mode"), _operations())
def test_no_5xx_and_answers_match_the_schema(
    method: str,
    path: str,
    mode: schemathesis.GenerationMode,
    api_schema: schemathesis.BaseSchema,
    fuzzed_server: ServerProcess,
) -> None:
    operation = api_schema[path][method]
    headers = {"Authorization": f"Bearer {fuzzed_server.token('fuzzer', scope='ratings:admin')}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def answers_well(case: schemathesis.Case) -> None:
        case.call_and_validate(
            base_url=fuzzed_server.base_url, headers=headers, checks=CHECKS, timeout=10
        )

    answers_well()
