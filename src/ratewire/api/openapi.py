"""The OpenAPI document, completed with the answers every route can give besides its own:
the admission layer's refusals (400 malformed JSON, 413, 415, 429), 401 where a token is read,
422 for bad parameters, 503 when storage is down, all as problem+json (FastAPI documents its
default 422 as plain JSON of another shape). Schemathesis checks the document against the
running server (tests/e2e/test_fuzz_rest.py)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from ratewire.api.problems import _TITLES, PROBLEM_MEDIA_TYPE
from ratewire.api.schemas import ProblemOut

#: Routes outside the rate limit and storage (api.admission, api.ops).
_OPERATIONAL_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def _statuses(path: str, operation: dict[str, Any]) -> set[int]:
    parameters = operation.get("parameters", [])
    statuses: set[int] = set()
    if path not in _OPERATIONAL_PATHS:
        statuses |= {429, 503}
    if parameters or "requestBody" in operation:
        statuses.add(422)
    if "requestBody" in operation:
        statuses |= {400, 413, 415}
    if any(p.get("in") == "header" and p.get("name", "").lower() == "if-match" for p in parameters):
        statuses.add(400)
    if operation.get("security"):
        statuses.add(401)
    return statuses


def complete_problem_responses(app: FastAPI) -> None:
    """Make ``app``'s OpenAPI document list every problem answer its routes can give."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("ProblemOut", ProblemOut.model_json_schema())
        problem = {"schema": {"$ref": "#/components/schemas/ProblemOut"}}
        for path, item in document.get("paths", {}).items():
            for operation in item.values():
                responses = operation.setdefault("responses", {})
                for status in sorted(_statuses(path, operation)):
                    responses.setdefault(str(status), {"description": _TITLES[status]})
                for status, response in responses.items():
                    if status.isdigit() and int(status) >= 400:
                        response["content"] = {PROBLEM_MEDIA_TYPE: problem}
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
