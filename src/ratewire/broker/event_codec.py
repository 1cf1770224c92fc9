"""One rating event as bytes: the form events take between processes (Redis stream entries,
and the commit notices workers on one host send each other)."""

from __future__ import annotations

import orjson

from ratewire.domain import RatingEvent, epoch_ms, from_epoch_ms


def encode_event(event: RatingEvent) -> bytes:
    """One event as stored in a stream entry."""
    return orjson.dumps(
        {
            "seq": event.seq,
            "kind": event.kind,
            "gameId": event.game_id,
            "userId": event.user_id,
            "gameOffset": event.game_offset,
            "userOffset": event.user_offset,
            "data": event.data,
            "at": epoch_ms(event.occurred_at),
        }
    )


def decode_event(payload: bytes) -> RatingEvent:
    """The inverse of :func:`encode_event`."""
    fields = orjson.loads(payload)
    return RatingEvent(
        seq=fields["seq"],
        kind=fields["kind"],
        game_id=fields["gameId"],
        user_id=fields["userId"],
        game_offset=fields["gameOffset"],
        user_offset=fields["userOffset"],
        data=fields["data"],
        occurred_at=from_epoch_ms(fields["at"]),
    )
