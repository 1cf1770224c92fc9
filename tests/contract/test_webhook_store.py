"""The webhook store on every backend: webhooks, their cursors, leases that fence a
deliverer's writes, admin changes that win over a deliverer's stale copy, capped attempts."""

from __future__ import annotations

from dataclasses import replace

from ratewire.domain.webhooks import DeliveryAttempt, Progress, Webhook, new_secret
from ratewire.storage import RatingStore
from ratewire.storage.webhook_store import ATTEMPTS_KEPT

NOW = 1_764_582_000_000


def webhook(webhook_id: str = "wh_1", created_at: int = NOW) -> Webhook:
    return Webhook(
        id=webhook_id,
        url="https://example.com/hook",
        topics=("rating.game.*", "rating.user.7"),
        description="test",
        secret=new_secret(),
        created_at=created_at,
        updated_at=created_at,
    )


def attempt(number: int) -> DeliveryAttempt:
    return DeliveryAttempt(
        "wh_1", f"msg_{number}", "rating.global", number, 1, "delivered", 204, 1.5, NOW
    )


async def test_webhooks_are_kept_listed_changed_and_removed(store: RatingStore) -> None:
    hooks = store.webhooks
    await hooks.add(webhook("wh_b", NOW + 1))
    await hooks.add(webhook("wh_a", NOW))
    assert [w.id for w in await hooks.all()] == ["wh_a", "wh_b"]
    stored = await hooks.get("wh_a")
    assert stored is not None and stored.topics == ("rating.game.*", "rating.user.7")
    assert stored.secret.startswith("whsec_") and stored.cursor == 0 and stored.status == "active"
    changed = await hooks.update("wh_a", NOW + 5, topics=("rating.global",), status="disabled")
    assert changed is not None
    assert (changed.topics, changed.status, changed.generation, changed.updated_at) == (
        ("rating.global",),
        "disabled",
        2,
        NOW + 5,
    )
    assert await hooks.update("wh_none", NOW, status="active") is None
    assert await hooks.remove("wh_a") is True
    assert await hooks.remove("wh_a") is False
    assert await hooks.get("wh_a") is None
    assert [w.id for w in await hooks.all()] == ["wh_b"]


async def test_one_deliverer_at_a_time_and_only_the_holder_moves_the_cursor(
    store: RatingStore,
) -> None:
    hooks = store.webhooks
    await hooks.add(webhook())
    assert await hooks.acquire("wh_1", "a", NOW, 5000)
    assert not await hooks.acquire("wh_1", "b", NOW + 1000, 5000)  # a holds it
    assert await hooks.acquire("wh_1", "a", NOW + 1000, 5000)  # renewed
    assert not await hooks.save("wh_1", "b", 1, Progress(cursor=9), NOW + 1000)
    assert await hooks.save("wh_1", "a", 1, Progress(cursor=3, attempts=[attempt(1)]), NOW + 1000)
    assert (await hooks.get("wh_1")).cursor == 3  # type: ignore[union-attr]
    # a died: once its lease ran out, b takes over from the stored cursor, and a is fenced.
    assert await hooks.acquire("wh_1", "b", NOW + 7000, 5000)
    assert not await hooks.save("wh_1", "a", 1, Progress(cursor=4), NOW + 7000)
    assert await hooks.save("wh_1", "b", 1, Progress(cursor=5), NOW + 7000)
    # An admin change (a replay) wins over the deliverer's copy of generation 1.
    await hooks.update("wh_1", NOW + 7100, cursor=0, status="active")
    assert not await hooks.save("wh_1", "b", 1, Progress(cursor=6), NOW + 7200)
    assert (await hooks.get("wh_1")).cursor == 0  # type: ignore[union-attr]
    assert await hooks.save(
        "wh_1", "b", 2, Progress(cursor=1, status="failing", last_error="500"), NOW + 7200
    )
    failing = await hooks.get("wh_1")
    assert failing is not None and (failing.status, failing.last_error) == ("failing", "500")
    await hooks.release("wh_1", "b")
    assert await hooks.acquire("wh_1", "c", NOW + 7300, 5000)


async def test_attempts_come_newest_first_and_are_capped(store: RatingStore) -> None:
    hooks = store.webhooks
    await hooks.add(webhook())
    assert await hooks.acquire("wh_1", "a", NOW, 60_000)
    for first in range(0, ATTEMPTS_KEPT + 30, 10):
        batch = [attempt(n) for n in range(first, first + 10)]
        assert await hooks.save("wh_1", "a", 1, Progress(cursor=first + 9, attempts=batch), NOW)
    kept = await hooks.attempts("wh_1", 1000)
    assert len(kept) == ATTEMPTS_KEPT
    assert [a.offset for a in kept[:3]] == [
        ATTEMPTS_KEPT + 29,
        ATTEMPTS_KEPT + 28,
        ATTEMPTS_KEPT + 27,
    ]
    assert kept[0] == attempt(ATTEMPTS_KEPT + 29)
    assert [a.offset for a in await hooks.attempts("wh_1", 2)] == [
        ATTEMPTS_KEPT + 29,
        ATTEMPTS_KEPT + 28,
    ]
    await hooks.remove("wh_1")
    assert await hooks.attempts("wh_1", 10) == []


async def test_a_removed_webhook_has_no_lease_to_take_give_or_save_under(
    store: RatingStore,
) -> None:
    hooks = store.webhooks
    assert await hooks.acquire("wh_gone", "a", NOW, 5000) is False
    await hooks.release("wh_gone", "a")
    assert await hooks.save("wh_gone", "a", 1, Progress(cursor=3), NOW) is False
    assert await hooks.get("wh_gone") is None


async def test_a_webhook_filter_is_kept_changed_and_removed(store: RatingStore) -> None:
    hooks = store.webhooks
    await hooks.add(replace(webhook("wh_f"), filter="data.score <= 2"))
    stored = await hooks.get("wh_f")
    assert stored is not None and stored.filter == "data.score <= 2"
    assert (await hooks.all())[0].filter == "data.score <= 2"
    changed = await hooks.update("wh_f", NOW + 1, filter='event == "deleted"')
    assert changed is not None and changed.filter == 'event == "deleted"'
    cleared = await hooks.update("wh_f", NOW + 2, filter=None)
    assert cleared is not None and cleared.filter is None
    assert (await hooks.get("wh_f")) == cleared
