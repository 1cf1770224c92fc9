"""Logging: JSON lines for machines, a short human line in a terminal; tokens and the
credentials in URLs redacted from every line either way."""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal, TextIO

import orjson

LogFormat = Literal["auto", "json", "human"]

#: The id of the REST request being handled, added to every log line written meanwhile.
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
_TOKEN_IN_QUERY = re.compile(r"(?i)([?&](?:token|access_token)=)[^&\s\"]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
#: A JWT in a WebSocket subprotocol list (``Sec-WebSocket-Protocol: ratewire.v1, token.<JWT>``).
_SUBPROTOCOL_TOKEN = re.compile(r"(?i)(\btoken\.)[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
#: The user-info of a URL (``redis://:password@host``, ``nats://user:password@host``).
_URL_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """``text`` with query-string tokens, bearer tokens, subprotocol tokens and URL
    credentials replaced by ``REDACTED``."""
    text = _URL_CREDENTIALS.sub(r"\1REDACTED@", text)
    text = _SUBPROTOCOL_TOKEN.sub(r"\1REDACTED", text)
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


class ClientFaultFilter(logging.Filter):
    """Turns the WebSocket libraries' error records about a *client's* bad frames (oversized,
    invalid UTF-8) into one INFO line without a traceback: they are the client's fault, the
    connection is closed with the protocol's code, and a hostile client must not be able to
    fill the log with tracebacks or page anyone."""

    _CLIENT_FAULTS = ("WS parser error", "Invalid UTF-8 sequence received from client")

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno >= logging.ERROR
            and isinstance(record.msg, str)
            and record.msg.startswith(self._CLIENT_FAULTS)
        ):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


class LibraryDetailFilter(logging.Filter):
    """Turns the INFO lines of libraries' internals (Alembic's plugins and migration context,
    uvicorn's "Started server process") into DEBUG lines: ratewire says what they mean in its
    own words (the schema revision, where it listens), and ``--log-level DEBUG`` shows them."""

    _LIBRARIES = ("alembic", "uvicorn.error")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.name.startswith(self._LIBRARIES):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["requestId"] = request_id
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


class HumanFormatter(logging.Formatter):
    """``12:00:01.234 WARNING message logger=ratewire.relay requestId=...``: for a person
    at a terminal (``make run``)."""

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        fields = {"logger": record.name, "requestId": request_id_var.get()}
        extra = " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
        line = f"{at} {record.levelname:<7} {redact(record.getMessage())}  {extra}"
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


def formatter_for(log_format: LogFormat, stream: TextIO) -> logging.Formatter:
    """JSON lines, or the human line when asked or (``auto``) when ``stream`` is a terminal."""
    human = log_format == "human" or (log_format == "auto" and stream.isatty())
    return HumanFormatter() if human else JsonLineFormatter()


def configure_logging(level: str = "INFO", log_format: LogFormat = "auto") -> None:
    """Send every logger (ours and uvicorn's) to stderr, tokens redacted: as JSON lines, or as
    a short human line when stderr is a terminal (``log_format`` "auto") or when asked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(log_format, sys.stderr))
    handler.addFilter(ClientFaultFilter())
    handler.addFilter(LibraryDetailFilter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
