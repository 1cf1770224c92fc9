"""The RatingStore contract: the same tests, unchanged, on every backend."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from ratewire.domain import RatingChanges, RatingDraft, Topic, TopicKind, parse_topic, utc_now
from ratewire.storage.base import (
    AlreadyExists,
    NotFound,
    RatingStore,
    VersionMismatch,
)
from ratewire.storage.memory import MemoryStore

GLOBAL = Topic(TopicKind.GLOBAL)


def game(key: str) -> Topic:
    topic = parse_topic(f"rating.game.{key}")
    assert topic is not None
    return topic


def user(key: str) -> Topic:
    topic = parse_topic(f"rating.user.{key}")
    assert topic is not None
    return topic


async def create(
    store: RatingStore, game_id: str, user_id: str, score: int = 3, comment: str | None = None
):  # type: ignore[no-untyped-def]
    return await store.create(RatingDraft(game_id, user_id, score, comment), utc_now())


# -- single writes --------------------------------------------------------------------------


async def test_create_then_get(store: RatingStore) -> None:
    result = await create(store, "42", "7", 4, "fun")
    assert result.created and result.event is not None
    rating = await store.get(result.rating.id)
    assert rating == result.rating
    assert (rating.game_id, rating.user_id, rating.score, rating.comment, rating.version) == (
        "42",
        "7",
        4,
        "fun",
        1,
    )
    assert result.event.kind == "created" and result.event.data == rating.to_wire()


async def test_one_rating_per_game_and_user(store: RatingStore) -> None:
    first = await create(store, "42", "7")
    with pytest.raises(AlreadyExists) as raised:
        await create(store, "42", "7", 5)
    assert raised.value.existing_id == first.rating.id
    assert (await create(store, "42", "8")).created  # another user: fine
    assert (await create(store, "43", "7")).created  # another game: fine


async def test_missing_rating(store: RatingStore) -> None:
    with pytest.raises(NotFound):
        await store.get("r_missing")
    with pytest.raises(NotFound):
        await store.update("r_missing", RatingChanges(score=2), None, utc_now())
    with pytest.raises(NotFound):
        await store.delete("r_missing", None, utc_now())


async def test_update_changes_fields_and_bumps_version(store: RatingStore) -> None:
    created = await create(store, "42", "7", 2, "meh")
    updated = await store.update(created.rating.id, RatingChanges(score=5), 1, utc_now())
    assert updated.rating.score == 5 and updated.rating.comment == "meh"
    assert updated.rating.version == 2 and updated.event is not None
    assert updated.event.kind == "updated" and updated.event.data["score"] == 5
    cleared = await store.update(
        created.rating.id, RatingChanges(clear_comment=True), None, utc_now()
    )
    assert cleared.rating.comment is None and cleared.rating.version == 3
    assert await store.get(created.rating.id) == cleared.rating


async def test_update_that_changes_nothing_is_not_an_event(store: RatingStore) -> None:
    created = await create(store, "42", "7", 4)
    same = await store.update(created.rating.id, RatingChanges(score=4), None, utc_now())
    assert same.event is None and same.rating.version == 1
    assert await store.topic_head(GLOBAL) == 1


async def test_version_mismatch(store: RatingStore) -> None:
    created = await create(store, "42", "7")
    with pytest.raises(VersionMismatch) as raised:
        await store.update(created.rating.id, RatingChanges(score=1), 7, utc_now())
    assert raised.value.current == 1
    with pytest.raises(VersionMismatch):
        await store.delete(created.rating.id, 2, utc_now())
    assert (await store.get(created.rating.id)).score == 3, "nothing changed"


async def test_delete_returns_the_rating_as_it_was(store: RatingStore) -> None:
    created = await create(store, "42", "7", 5, "great")
    deleted = await store.delete(created.rating.id, 1, utc_now())
    assert deleted.event is not None and deleted.event.kind == "deleted"
    assert deleted.event.data["score"] == 5 and deleted.event.data["comment"] == "great"
    with pytest.raises(NotFound):
        await store.get(created.rating.id)
    again = await create(store, "42", "7", 1)
    assert again.rating.id != created.rating.id


async def test_upsert_creates_then_replaces_and_repeats_are_quiet(store: RatingStore) -> None:
    draft = RatingDraft("42", "7", 4, "ok")
    first = await store.upsert(draft, None, utc_now())
    assert first.created and first.rating.version == 1
    replaced = await store.upsert(RatingDraft("42", "7", 2, None), 1, utc_now())
    assert not replaced.created and replaced.rating.version == 2
    assert replaced.rating.comment is None and replaced.rating.id == first.rating.id
    repeat = await store.upsert(RatingDraft("42", "7", 2, None), None, utc_now())
    assert repeat.event is None and repeat.rating.version == 2
    with pytest.raises(VersionMismatch):
        await store.upsert(RatingDraft("42", "7", 3, None), 1, utc_now())
    with pytest.raises(VersionMismatch):
        await store.upsert(RatingDraft("42", "new", 3, None), 1, utc_now())


async def test_every_backend_keeps_a_moment_to_the_exact_millisecond(store: RatingStore) -> None:
    from ratewire.audit import AuditChain, AuditQuery

    # Float seconds, int(moment.timestamp() * 1000), put both a millisecond early (...471, ...474).
    created_at = datetime(2004, 3, 15, 7, 55, 47, 472000, tzinfo=UTC)
    updated_at = datetime(2004, 3, 15, 7, 55, 47, 475000, tzinfo=UTC)
    store.use_audit(AuditChain("contract-audit-key-0123456789abcdef"))
    created = await store.create(RatingDraft("g", "7", 3, None), created_at)
    await store.update(created.rating.id, RatingChanges(score=4), None, updated_at)
    rating = await store.get(created.rating.id)
    assert (rating.created_at, rating.updated_at) == (created_at, updated_at)
    assert [r.updated_at for r in await store.list_ratings("g", None, 10, None)] == [updated_at]
    history = await store.topic_events(game("g"), 0, 10)
    assert [e.occurred_at for e in history] == [created_at, updated_at]
    assert [e.occurred_at for e in await store.events_after(0, 10)] == [created_at, updated_at]
    entries = await store.audit_entries(AuditQuery(limit=10, oldest_first=True))
    assert [e.at_ms for e in entries] == [1_079_337_347_472, 1_079_337_347_475]
    assert entries[0].to_wire()["at"] == "2004-03-15T07:55:47.472Z"


# -- reads ------------------------------------------------------------------------------------


async def test_list_newest_first_with_filters_and_cursor(store: RatingStore) -> None:
    ids = [(await create(store, f"g{i % 3}", f"u{i}")).rating.id for i in range(12)]
    everything = await store.list_ratings(None, None, 100, None)
    assert [r.id for r in everything] == sorted(ids, reverse=True)
    pages, before = [], None
    while True:
        page = await store.list_ratings(None, None, 5, before)
        if not page:
            break
        pages.append([r.id for r in page])
        before = page[-1].id
    assert [len(p) for p in pages] == [5, 5, 2]
    assert [rating_id for page in pages for rating_id in page] == [r.id for r in everything]
    by_game = await store.list_ratings("g1", None, 100, None)
    assert {r.game_id for r in by_game} == {"g1"} and len(by_game) == 4
    by_user = await store.list_ratings(None, "u4", 100, None)
    assert [r.user_id for r in by_user] == ["u4"]
    assert await store.list_ratings("g1", "u4", 100, None) == by_user


async def test_summary_is_exact_after_mixed_writes(store: RatingStore) -> None:
    assert (await store.summary("42")).count == 0
    a = await create(store, "42", "a", 5)
    b = await create(store, "42", "b", 1)
    await create(store, "42", "c", 3)
    await store.update(a.rating.id, RatingChanges(score=4), None, utc_now())
    await store.delete(b.rating.id, None, utc_now())
    await create(store, "43", "a", 2)
    summary = await store.summary("42")
    assert (summary.count, summary.total, summary.histogram) == (2, 7, (0, 0, 1, 1, 0))
    assert summary.mean == 3.5 and summary.offset == 5


async def test_top_games_by_bayesian_mean(store: RatingStore) -> None:
    for index, score in enumerate([5, 5, 5, 5, 5, 5]):
        await create(store, "popular", f"p{index}", score)
    await create(store, "lucky", "x", 5)  # one 5: pulled toward the prior
    for index, score in enumerate([2, 1, 2]):
        await create(store, "bad", f"b{index}", score)
    ranking = await store.top_games(10, 1, 3.0, 2.0)
    assert [s.game_id for s in ranking] == ["popular", "lucky", "bad"]
    assert [s.game_id for s in await store.top_games(10, 3, 3.0, 2.0)] == ["popular", "bad"]
    assert len(await store.top_games(1, 1, 3.0, 2.0)) == 1


# -- the event log ------------------------------------------------------------------------------


async def test_offsets_are_gapless_per_topic(store: RatingStore) -> None:
    writes = [("g1", "u1"), ("g2", "u1"), ("g1", "u2"), ("g1", "u3"), ("g2", "u2")]
    events = [(await create(store, g, u)).event for g, u in writes]
    assert [e.seq for e in events if e] == [1, 2, 3, 4, 5]
    assert [e.game_offset for e in events if e and e.game_id == "g1"] == [1, 2, 3]
    assert [e.game_offset for e in events if e and e.game_id == "g2"] == [1, 2]
    assert [e.user_offset for e in events if e and e.user_id == "u1"] == [1, 2]
    assert await store.topic_head(game("g1")) == 3 and await store.topic_head(user("u2")) == 2
    assert await store.topic_head(game("never")) == 0
    assert await store.topic_position(game("g2")) == (2, 5)
    assert [e.game_offset for e in await store.topic_events(game("g1"), 1, 10)] == [2, 3]
    assert [e.user_offset for e in await store.topic_events(user("u2"), 0, 1)] == [1]
    assert [e.seq for e in await store.topic_events(GLOBAL, 3, 10)] == [4, 5]
    assert [e.seq for e in await store.events_after(2, 2)] == [3, 4]
    replayed = (await store.topic_events(game("g2"), 0, 10))[1]
    assert events[4] is not None and replayed.data == events[4].data


async def test_prune_keeps_the_last_n_of_every_topic_and_drops_by_age(store: RatingStore) -> None:
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    rating = (await create(store, "g", "a", 1)).rating
    for score in (2, 3, 4, 5, 1):  # six events, all on rating.game.g and rating.user.a
        await store.update(rating.id, RatingChanges(score=score), None, utc_now())
    await create(store, "other", "b")  # seq 7: its own game and user topics
    assert await store.prune_history(2, long_ago) == 4
    assert [e.game_offset for e in await store.topic_events(game("g"), 0, 10)] == [5, 6]
    assert [e.user_offset for e in await store.topic_events(user("a"), 0, 10)] == [5, 6]
    assert [e.seq for e in await store.topic_events(GLOBAL, 0, 10)] == [5, 6, 7]
    assert await store.prune_history(2, long_ago) == 0, "pruning is idempotent"
    removed = await store.prune_history(1000, datetime.now(UTC) + timedelta(days=1))
    assert removed == 3 and await store.topic_events(GLOBAL, 0, 100) == []
    assert await store.topic_head(GLOBAL) == 7, "offsets go on after pruning"
    assert (await create(store, "g", "c")).event.game_offset == 7  # type: ignore[union-attr]


async def test_state_and_epoch_survive_a_restart(
    store: RatingStore, open_store: Callable[[], RatingStore]
) -> None:
    created = await create(store, "42", "7", 4)
    epoch = store.epoch
    await store.close()
    reopened = open_store()
    await reopened.start()
    try:
        if isinstance(store, MemoryStore):
            # Nothing survives, so the history is new: clients must see a new epoch.
            assert reopened.epoch != epoch and await reopened.topic_head(GLOBAL) == 0
            return
        assert reopened.epoch == epoch
        assert await reopened.get(created.rating.id) == created.rating
        assert (await reopened.summary("42")).count == 1
        next_event = (await create(reopened, "42", "8")).event
        assert next_event is not None and next_event.seq == 2 and next_event.game_offset == 2
    finally:
        await reopened.close()


# -- concurrency ---------------------------------------------------------------------------------


async def test_racing_creates_of_one_pair_exactly_one_wins(store: RatingStore) -> None:
    results = await asyncio.gather(
        *(create(store, "42", "7", 1 + i % 5) for i in range(20)), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1 and all(isinstance(r, AlreadyExists) for r in losers)
    assert (await store.summary("42")).count == 1
    assert await store.topic_head(GLOBAL) == 1


async def test_racing_updates_with_one_version_exactly_one_wins(store: RatingStore) -> None:
    created = await create(store, "42", "7", 1)
    results = await asyncio.gather(
        *(
            store.update(
                created.rating.id, RatingChanges(score=2 + i % 4, comment=f"c{i}"), 1, utc_now()
            )
            for i in range(12)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, VersionMismatch) for r in results if isinstance(r, BaseException))
    assert (await store.get(created.rating.id)).version == 2


async def test_racing_upserts_of_a_new_pair_create_it_once_and_replace_it(
    store: RatingStore,
) -> None:
    drafts = [RatingDraft("42", "7", 1 + i % 5, f"c{i}") for i in range(12)]
    results = await asyncio.gather(*(store.upsert(d, None, utc_now()) for d in drafts))
    assert sum(r.created for r in results) == 1
    assert len({r.rating.id for r in results}) == 1
    assert (await store.get(results[0].rating.id)).version == 12
    assert (await store.summary("42")).count == 1
    assert await store.topic_head(GLOBAL) == 12


async def test_concurrent_writers_keep_summaries_and_offsets_exact(store: RatingStore) -> None:
    async def life(index: int) -> None:
        rating = (await create(store, "hot", f"u{index}", 1 + index % 5)).rating
        if index % 3 == 0:
            await store.update(rating.id, RatingChanges(score=5 - index % 5), None, utc_now())
        if index % 4 == 0:
            await store.delete(rating.id, None, utc_now())

    await asyncio.gather(*(life(i) for i in range(40)))
    remaining = await store.list_ratings("hot", None, 1000, None)
    summary = await store.summary("hot")
    histogram = Counter(r.score for r in remaining)
    assert summary.count == len(remaining)
    assert summary.total == sum(r.score for r in remaining)
    assert summary.histogram == tuple(histogram.get(s, 0) for s in range(1, 6))
    log = await store.topic_events(game("hot"), 0, 1000)
    assert [e.game_offset for e in log] == list(range(1, len(log) + 1))
    assert [e.seq for e in log] == sorted(e.seq for e in log)
    assert [e.seq for e in await store.events_after(0, 1000)] == list(range(1, len(log) + 1))
    assert summary.offset == len(log)


async def test_close_commits_the_writes_already_queued(
    store: RatingStore, open_store: Callable[[], RatingStore]
) -> None:
    if isinstance(store, MemoryStore):
        return  # the memory store commits synchronously; nothing can be queued
    writes = [asyncio.ensure_future(create(store, "queued", f"u{i}")) for i in range(30)]
    await asyncio.sleep(0)  # queued, not yet committed
    await store.close()
    results = await asyncio.gather(*writes)
    assert all(result.created for result in results)
    reopened = open_store()
    await reopened.start()
    try:
        assert (await reopened.summary("queued")).count == 30
    finally:
        await reopened.close()


async def test_revocations_are_kept_replaced_and_expire(store: RatingStore) -> None:
    from ratewire.security.revocation import Revocation

    now = 1_800_000_000.0
    by_jti = Revocation("jti", "j1", now, now + 910, "root", "stolen")
    by_sub = Revocation("sub", "7", now, now + 10)
    for entry in (by_jti, by_sub):
        await store.add_revocation(entry)
    assert sorted(await store.revocations(now), key=lambda r: r.kind) == [by_jti, by_sub]
    # The same target again replaces the entry (a later revocation of the same user).
    later = Revocation("sub", "7", now + 5, now + 915, "admin", None)
    await store.add_revocation(later)
    assert sorted(await store.revocations(now + 5), key=lambda r: r.kind) == [by_jti, later]
    # Entries are gone once no token they cover could still verify.
    assert await store.revocations(now + 911) == [later]
    assert await store.revocations(now + 916) == []


async def test_the_audit_chain_records_changes_and_survives_pruning(store: RatingStore) -> None:
    from ratewire.audit import AuditChain, AuditContext, AuditQuery, AuditRecord
    from ratewire.audit.verify import verify_chain

    chain = AuditChain("contract-audit-key-0123456789abcdef")
    store.use_audit(chain)
    who = AuditContext(actor="7", scopes="", ip="192.0.2.1", request_id="req-1")
    created = await store.create(RatingDraft("g", "7", 3, None), utc_now(), who)
    await store.update(created.rating.id, RatingChanges(score=5), None, utc_now(), who)
    await store.delete(created.rating.id, None, utc_now(), who)
    old = AuditRecord(
        "ws.connect", int((utc_now() - timedelta(days=30)).timestamp() * 1000), who, None, {}
    )
    await store.append_audit([old, old])
    entries = await store.audit_entries(AuditQuery(limit=10, oldest_first=True))
    assert [e.action for e in entries] == [
        "rating.create",
        "rating.update",
        "rating.delete",
        "ws.connect",
        "ws.connect",
    ]
    update = entries[1].to_wire()
    assert (update["detail"]["before"]["score"], update["detail"]["after"]["score"]) == (3, 5)
    assert (update["actor"], update["ip"], update["requestId"]) == ("7", "192.0.2.1", "req-1")
    assert [e.seq for e in await store.audit_entries(AuditQuery(actor="7", limit=2))] == [5, 4]
    assert (await verify_chain(store, chain)).problem is None
    # Retention drops the two old entries; what is left still verifies from the checkpoint.
    cutoff = int((utc_now() - timedelta(days=1)).timestamp() * 1000)
    pruned = AuditRecord.now("audit.pruned", AuditContext(actor="ratewire"))
    assert await store.prune_audit(cutoff, pruned) == 5  # everything up to the last old one
    head = await store.audit_head()
    assert (head.seq, head.pruned_seq) == (6, 5)
    remaining = await store.audit_entries(AuditQuery(limit=10, oldest_first=True))
    assert [e.action for e in remaining] == ["audit.pruned"]
    verdict = await verify_chain(store, chain)
    assert verdict.problem is None and verdict.checked == 1
    # The same entries checked with another key do not verify.
    forged = await verify_chain(store, AuditChain("another-key-0123456789abcdef012345"))
    assert forged.problem is not None and "#6" in forged.problem
