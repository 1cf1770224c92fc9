"""bench.consumers in the suite, short: a real server on SQLite, members that are processes of
their own, every offset of the consumer counted from the members' ledgers. The figures are the
benchmark's business (docs/benchmarks.md); what is tested is the count."""

from __future__ import annotations

import pytest
from bench.consumers.run import Settings, run_one

pytestmark = pytest.mark.e2e


def test_every_offset_is_acked_exactly_once_by_the_members() -> None:
    result = run_one(Settings(writes_per_s=100, members=3, seconds=3, kill_at=None))
    counts = result.counts
    assert result.writes_ok > 0 and result.writes_failed == 0
    assert result.drained, f"the consumer did not catch up: {result}"
    assert counts["offsets"] == result.writes_ok + result.warm_up_writes == result.head
    assert counts["lost"] == 0 and counts["acked_twice"] == 0 and counts["unowed"] == 0
    assert counts["redeliveries"] == 0 and counts["delivered_after_ack"] == 0
    assert counts["acked"] == result.writes_ok  # the server answered acked for each
    assert all(share > 0 for share in counts["per_member"]), counts["per_member"]
    assert counts["errors"] == []


def test_a_killed_members_events_go_to_the_others_and_none_is_lost() -> None:
    # It hangs 500 ms first so that it surely dies holding events (read or on their way).
    settings = Settings(writes_per_s=100, members=3, seconds=3, kill_at=1.5, hang_ms=500)
    result = run_one(settings)
    counts = result.counts
    assert result.drained, f"the consumer did not catch up: {result}"
    assert counts["offsets"] == result.writes_ok + result.warm_up_writes == result.head
    assert counts["lost"] == 0 and counts["delivered_after_ack"] == 0 and counts["unowed"] == 0
    assert counts["held_at_kill"] > 0
    assert counts["held_redelivered"] == counts["held_at_kill"]
    assert counts["errors"] == []
