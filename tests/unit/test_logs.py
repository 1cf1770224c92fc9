"""Log lines: JSON for machines, a short human line at a terminal, tokens redacted in both."""

from __future__ import annotations

import io
import json
import logging

from ratewire.logs import HumanFormatter, JsonLineFormatter, formatter_for, redact


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("ratewire.relay", logging.WARNING, __file__, 1, message, (), None)


def test_a_terminal_gets_the_human_line_and_a_pipe_gets_json() -> None:
    assert isinstance(formatter_for("auto", Terminal()), HumanFormatter)
    assert isinstance(formatter_for("auto", io.StringIO()), JsonLineFormatter)
    assert isinstance(formatter_for("json", Terminal()), JsonLineFormatter), "log.format: json"
    assert isinstance(formatter_for("human", io.StringIO()), HumanFormatter)


def test_the_human_line_has_time_level_message_and_fields_and_no_token() -> None:
    line = HumanFormatter().format(_record("GET /ws?token=eyJhbGciOi.secret.sig 101"))
    clock, level, *_ = line.split()
    assert len(clock) == 12 and clock[2] == ":" and level == "WARNING"
    assert "GET /ws?token=REDACTED 101" in line and "secret" not in line
    assert line.endswith("logger=ratewire.relay")


def test_the_json_line_is_one_object_with_the_token_redacted() -> None:
    entry = json.loads(JsonLineFormatter().format(_record("Authorization: Bearer abc.def.ghi")))
    assert entry["level"] == "warning" and entry["msg"] == "Authorization: Bearer REDACTED"


def test_credentials_in_a_broker_url_are_redacted() -> None:
    line = redact("broker unreachable at tls://ratewire:s3cret@nats-1:4222,nats://tok@nats-2:4222")
    assert line == "broker unreachable at tls://REDACTED@nats-1:4222,nats://REDACTED@nats-2:4222"
    assert redact("redis://:pw@127.0.0.1:6379/0 and mail me at a@b.example") == (
        "redis://REDACTED@127.0.0.1:6379/0 and mail me at a@b.example"
    )


def test_a_token_in_a_websocket_subprotocol_list_is_redacted() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI3In0.c2lnbmF0dXJl-_x"
    header = f"Sec-WebSocket-Protocol: ratewire.v1, token.{jwt}"
    assert redact(header) == "Sec-WebSocket-Protocol: ratewire.v1, token.REDACTED"
    scope = repr({"headers": [(b"sec-websocket-protocol", f"token.{jwt}".encode())]})
    assert jwt not in redact(scope) and "c2lnbmF0dXJl" not in redact(scope)
    assert redact("ratewire/security/tokens.py token.py") == "ratewire/security/tokens.py token.py"
