"""Structured JSON-line logging, with tokens redacted from every line."""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime

import orjson

_TOKEN_IN_QUERY = re.compile(r"(?i)([?&](?:token|access_token)=)[^&\s\"]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")


def redact(text: str) -> str:
    """``text`` with query-string tokens and bearer tokens replaced by ``REDACTED``."""
    return _BEARER.sub(r"\1REDACTED", _TOKEN_IN_QUERY.sub(r"\1REDACTED", text))


class RedactingFilter(logging.Filter):
    """Rewrites a record's message and arguments so no token reaches a handler
    (uvicorn logs the request path with its query string)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


def configure_logging(level: str = "INFO") -> None:
    """Send every logger (ours and uvicorn's) as JSON lines to stderr, tokens redacted."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
