"""Client -> server messages: decoded and validated in one pass with msgspec."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import orjson

#: Offsets are 64-bit signed integers in every store: larger ones are refused here, not by
#: the database halfway through a subscribe.
Offset = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class ClientMessage(msgspec.Struct, frozen=True):
    """Every field any action uses; unknown fields are ignored (lenient to guide clients)."""

    action: str
    topic: str | None = None
    since: Offset | None = None
    epoch: str | None = None
    snapshot: bool = False
    #: A CEL expression (domain.filters): only events it passes are sent.
    filter: str | None = None
    token: str | None = None
    id: Any = None
    #: Summary topics' options (ratewire.services.summary_streams checks their ranges).
    interval_ms: int | None = msgspec.field(default=None, name="intervalMs")
    limit: int | None = None
    min_count: int | None = msgspec.field(default=None, name="minCount")
    #: Durable consumers (docs/protocol.md): the consumer's name, its settings at creation,
    #: and an ack's offsets (many per frame, so acks stay within the message rate).
    consumer: str | None = None
    ack_wait_ms: int | None = msgspec.field(default=None, name="ackWaitMs")
    max_in_flight: int | None = msgspec.field(default=None, name="maxInFlight")
    offsets: list[Offset] | None = None


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
    except RecursionError:
        raise BadMessage("not valid JSON here: nested too deeply") from None
    if message.id is not None and not isinstance(message.id, str | float | bool):
        # The id is echoed back: it must be something the reply can carry (orjson refuses
        # integers beyond 64 bits and nesting past 254 levels).
        try:
            orjson.dumps(message.id)
        except TypeError:
            raise BadMessage(
                "invalid message: id must be a string, a 64-bit integer or small JSON"
            ) from None
    return message
