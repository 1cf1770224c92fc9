"""Client -> server messages: decoded and validated in one pass with msgspec."""

from __future__ import annotations

from typing import Any

import msgspec


class ClientMessage(msgspec.Struct, frozen=True):
    """Every field any action uses; unknown fields are ignored (lenient to guide clients)."""

    action: str
    topic: str | None = None
    since: int | None = None
    epoch: str | None = None
    snapshot: bool = False
    token: str | None = None
    id: Any = None


_decoder = msgspec.json.Decoder(ClientMessage)


class BadMessage(ValueError):
    """The frame is not a valid client message; the text says why."""


def decode(payload: bytes) -> ClientMessage:
    """The message in ``payload``, or :class:`BadMessage` saying what is wrong."""
    try:
        message = _decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise BadMessage(f"invalid message: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadMessage(f"not valid JSON: {exc}") from None
    except UnicodeDecodeError:  # msgspec raises it for bad UTF-8 inside a JSON string
        raise BadMessage("not valid JSON: a string is not UTF-8") from None
    if message.since is not None and message.since < 0:
        raise BadMessage("invalid message: since must be >= 0")
    return message
