"""The SSE adapter without a socket: frames from a session in, events and cursors out."""

from __future__ import annotations

import pytest

from ratewire.realtime import frames
from ratewire.realtime.sse import BadLastEventId, SsePeer, decode_event_id, encode_event_id


async def _send(message: object) -> None:
    raise AssertionError("nothing is written in these tests")


def peer(resumed: dict[str, int] | None = None) -> SsePeer:
    followed = {"rating.game.7", "rating.global"}
    return SsePeer(_send, 1 << 20, 15, "e1", followed, resumed or {})


def events(sse: SsePeer) -> list[bytes]:
    return list(sse._outbox)  # what write_loop would send


def test_a_cursor_round_trips_and_a_foreign_one_is_refused() -> None:
    cursor = encode_event_id("e1", {"rating.game.7": 12, "rating.global": 40})
    assert decode_event_id(cursor.decode()) == ("e1", {"rating.game.7": 12, "rating.global": 40})
    for bad in ("", "garbage!", encode_event_id("e1", {}).decode() + "x", "MnxlMQ"):
        with pytest.raises(BadLastEventId):
            decode_event_id(bad)


def test_updates_carry_the_epoch_and_move_the_cursor_of_their_topic_only() -> None:
    sse = peer({"rating.global": 40})
    sse.send_text(frames.rating_update("rating.game.7", 3, "created", b'{"score":4}'))
    sse.send_text(frames.rating_update("rating.game.8", 5, "created", b'{"score":1}'))  # via *
    first, second = events(sse)
    assert first.startswith(b"id: ")
    cursor = first.split(b"\n")[0][4:].decode()
    assert decode_event_id(cursor) == ("e1", {"rating.global": 40, "rating.game.7": 3})
    assert b"event: rating_update\n" in first
    assert (
        b'data: {"type":"rating_update","epoch":"e1","topic":"rating.game.7","offset":3,'
        b'"event":"created","data":{"score":4}}\n\n'
    ) in first
    assert decode_event_id(second.split(b"\n")[0][4:].decode())[1] == {
        "rating.global": 40,
        "rating.game.7": 3,
    }


def test_a_resume_that_history_cannot_serve_is_a_gap_naming_where_it_goes_on() -> None:
    sse = peer({"rating.game.7": 2})
    sse.send_text(
        b'{"type":"subscribed","topic":"rating.game.7","offset":9,"epoch":"e1","recovered":false}'
    )
    (gap,) = events(sse)
    assert b"event: gap\n" in gap
    assert b'data: {"topic":"rating.game.7","after":2,"offset":9,"next":10,"epoch":"e1"}' in gap
    assert decode_event_id(gap.split(b"\n")[0][4:].decode())[1] == {"rating.game.7": 9}
