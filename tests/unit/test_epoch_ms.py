"""Epoch milliseconds: the one exact conversion every store, codec and query uses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from ratewire.domain import epoch_ms, from_epoch_ms

#: Millisecond-exact moments that float seconds put one millisecond early.
FLOAT_TRIPS_ON = [
    (datetime(2004, 3, 15, 7, 55, 47, 472000, tzinfo=UTC), 1_079_337_347_472),
    (datetime(2039, 3, 8, 19, 46, 13, 411000, tzinfo=UTC), 2_183_226_373_411),
]


@pytest.mark.parametrize(("moment", "ms"), FLOAT_TRIPS_ON)
def test_a_moment_the_float_form_gets_wrong_is_exact(moment: datetime, ms: int) -> None:
    assert int(moment.timestamp() * 1000) == ms - 1  # the form the SQL store used
    assert epoch_ms(moment) == ms
    assert from_epoch_ms(ms) == moment


def test_millisecond_times_round_trip_exactly() -> None:
    moment = datetime(2026, 11, 25, 12, 0, 1, 123000, tzinfo=UTC)
    assert from_epoch_ms(epoch_ms(moment)) == moment
    assert all(
        from_epoch_ms(epoch_ms(from_epoch_ms(ms))) == from_epoch_ms(ms)
        for ms in range(1_764_000_000_000, 1_764_000_001_000)
    )
    start = FLOAT_TRIPS_ON[0][1]
    assert all(epoch_ms(from_epoch_ms(ms)) == ms for ms in range(start - 5000, start + 5000))


def test_sub_millisecond_parts_round_down_and_zones_count() -> None:
    moment = datetime(2026, 1, 1, 0, 0, 0, 999, tzinfo=UTC)
    assert epoch_ms(moment) == epoch_ms(moment.replace(microsecond=0))
    assert epoch_ms(datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC)) == -1
    an_hour_east = datetime(2026, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=1)))
    assert epoch_ms(an_hour_east) == epoch_ms(datetime(2026, 1, 1, 1, 0, tzinfo=UTC))
    assert from_epoch_ms(0).tzinfo is UTC


def test_a_naive_moment_is_refused_not_read_as_local_time() -> None:
    with pytest.raises(TypeError):
        epoch_ms(datetime(2026, 1, 1))


@pytest.mark.parametrize(("moment", "ms"), FLOAT_TRIPS_ON)
def test_an_event_crosses_processes_at_its_exact_millisecond(moment: datetime, ms: int) -> None:
    import orjson

    from ratewire.broker.event_codec import decode_event, encode_event
    from ratewire.domain import RatingEvent

    event = RatingEvent(1, "created", "g", "u", 1, 1, {"score": 3}, moment)
    payload = encode_event(event)
    assert orjson.loads(payload)["at"] == ms
    assert decode_event(payload) == event
