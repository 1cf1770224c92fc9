"""RFC 9457 problem+json responses, and the handlers that turn every error into one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ratewire.services.ratings import BadCursor, Forbidden
from ratewire.storage.base import (
    AlreadyExists,
    NotFound,
    StorageUnavailable,
    VersionMismatch,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    412: "Precondition Failed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class ApiProblem(Exception):
    """Raise to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.slug = status, detail, slug
        self.headers, self.extra = headers or {}, extra


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    """A ``application/problem+json`` response."""
    title = _TITLES.get(status, "Error")
    body = {
        "type": f"urn:ratewire:problem:{slug or title.lower().replace(' ', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    return Response(orjson.dumps(body), status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _validation_problem(exc: RequestValidationError) -> Response:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        error = next(e for e in errors if e.get("type") == "json_invalid")
        reason = error.get("ctx", {}).get("error", "invalid JSON")
        return problem_response(
            400, f"request body is not valid JSON: {reason}", slug="malformed-json"
        )
    described = []
    for error in errors:
        field = _field_name(tuple(error.get("loc", ())))
        message = str(error.get("msg", "invalid"))
        if error.get("type") == "extra_forbidden":
            message = "unknown field"
        elif error.get("type") == "missing":
            message = "required"
        message = message.removeprefix("Value error, ")
        described.append({"field": field, "message": message})
    detail = "; ".join(f"{d['field']}: {d['message']}" for d in described)
    return problem_response(422, detail, slug="validation", errors=described)


def storage_unavailable_response(app: Any, exc: BaseException) -> Response:
    """The 503 for a store that failed (counted for /metrics). Such a write's outcome is
    unknown (its commit may have gone through before the connection died): it is answered,
    never run a second time."""
    app.state.storage_errors = getattr(app.state, "storage_errors", 0) + 1
    return problem_response(503, f"storage unavailable: {exc}", headers={"Retry-After": "1"})


def install_problem_handlers(app: FastAPI) -> None:
    """Map every error the API can meet to a problem document (never a stack trace)."""

    async def on_problem(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiProblem)
        return problem_response(
            exc.status, exc.detail, slug=exc.slug, headers=exc.headers, **exc.extra
        )

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _validation_problem(exc)

    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return problem_response(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    async def on_not_found(_: Request, exc: Exception) -> Response:
        return problem_response(404, str(exc))

    async def on_conflict(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, AlreadyExists)
        return problem_response(409, str(exc), slug="conflict", existingId=exc.existing_id)

    async def on_version(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, VersionMismatch)
        return problem_response(412, str(exc), slug="version-mismatch", currentVersion=exc.current)

    async def on_forbidden(_: Request, exc: Exception) -> Response:
        return problem_response(403, str(exc))

    async def on_bad_cursor(_: Request, exc: Exception) -> Response:
        return problem_response(422, f"cursor: {exc}", slug="validation")

    async def on_unavailable(request: Request, exc: Exception) -> Response:
        return storage_unavailable_response(request.app, exc)

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        # Logged by the server with its traceback; the client gets no internals.
        return problem_response(500, "internal error; the server log has the details")

    app.add_exception_handler(ApiProblem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(NotFound, on_not_found)
    app.add_exception_handler(AlreadyExists, on_conflict)
    app.add_exception_handler(VersionMismatch, on_version)
    app.add_exception_handler(Forbidden, on_forbidden)
    app.add_exception_handler(BadCursor, on_bad_cursor)
    app.add_exception_handler(StorageUnavailable, on_unavailable)
    app.add_exception_handler(Exception, on_unexpected)
