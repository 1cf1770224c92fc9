"""The configuration table of docs/protocol.md names every key ratewire reads, so a user can
configure it from the docs alone."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from ratewire.config import JwtKeySettings, Settings

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def documented_rows() -> dict[str, str]:
    """The Configuration table's rows, by section name (``modules.websocket``, ``jwt``...)."""
    text = PROTOCOL.read_text()
    table = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in table.splitlines():
        found = re.match(r"\| `([a-z_.]+)`[^|]*\| (.*) \|$", line)
        if found:
            rows[found.group(1)] = found.group(2)
    return rows


def keys_by_section(model: type[BaseModel], prefix: str = "") -> dict[str, list[str]]:
    """Each section's own (non-section) keys, sections named by their dotted path."""
    sections: dict[str, list[str]] = {}
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sections.update(keys_by_section(annotation, f"{path}."))
        else:
            sections.setdefault(prefix.rstrip("."), []).append(name)
    return sections


def test_every_configuration_key_is_in_the_reference() -> None:
    rows = documented_rows()
    missing = [
        f"{section}.{key}"
        for section, keys in keys_by_section(Settings).items()
        for key in keys
        if f"`{key}`" not in rows.get(section, "")
    ]
    missing += [
        f"jwt.keys[].{key}"
        for key in JwtKeySettings.model_fields
        if f"`{key}`" not in rows.get("jwt", "")
    ]
    assert missing == [], f"not in docs/protocol.md's Configuration table: {missing}"


def test_every_close_code_the_metrics_can_count_is_in_the_reference() -> None:
    """The server's close codes (realtime.session), and the two that only reach the metrics
    (1005: the client gave none; 1011: an internal error), each have a row in docs/protocol.md's
    Close codes table; 1000 and 1006 are named under it."""
    from ratewire.realtime import session

    text = PROTOCOL.read_text()
    table = text.split("### Close codes", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| (\d{4}) \|", table, re.MULTILINE))
    sent = {
        str(value)
        for name, value in vars(session).items()
        if name.startswith("CLOSE_") and isinstance(value, int) and value != 1006
    }
    assert sorted((sent | {"1005", "1011"}) - rows) == []
    assert "1000" in table and "1006" in table
