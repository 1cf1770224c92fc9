"""The WebSocket message protocol (docs/protocol.md), driven without a socket."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import jwt

from ratewire.config import LimitsSettings
from ratewire.realtime.session import (
    CLOSE_AUTH_FAILED,
    CLOSE_RATE_LIMITED,
    CLOSE_TOKEN_EXPIRED,
    Session,
)
from tests.realtime.harness import SECRET, FakePeer, Harness, send, settle


async def test_token_at_connect_sends_connection_success(harness: Harness) -> None:
    _, peer = harness.connect("7")
    [hello] = peer.messages()
    assert hello["type"] == "connection_success"
    assert hello["userId"] == "7" and hello["protocol"] == 1 and hello["clientId"]


async def test_bad_and_expired_tokens_close_4001(harness: Harness) -> None:
    _, peer = harness.connect(token="not-a-jwt")
    assert peer.closed_with == (CLOSE_AUTH_FAILED, "Invalid token")
    wrong_key = jwt.encode({"sub": "7", "exp": time.time() + 60}, "other-secret-" * 4, "HS256")
    _, peer = harness.connect(token=wrong_key)
    assert peer.closed_with == (CLOSE_AUTH_FAILED, "Invalid token")
    expired = jwt.encode({"sub": "7", "exp": time.time() - 60}, SECRET, "HS256")
    _, peer = harness.connect(token=expired)
    assert peer.closed_with == (CLOSE_AUTH_FAILED, "Token expired")
    assert not peer.frames


async def test_auth_frame_when_no_token_at_connect(harness: Harness) -> None:
    peer = FakePeer()
    session = Session(peer, harness.ctx)
    session.opened(None)
    send(session, action="auth", token=harness.tokens.issue("9"), id="a1")
    [hello] = peer.messages()
    assert hello["type"] == "connection_success" and hello["userId"] == "9" and hello["id"] == "a1"
    await asyncio.sleep(0.3)  # past the auth timeout: nothing happens once authenticated
    assert peer.closed_with is None


async def test_no_auth_frame_in_time_closes_4001(harness: Harness) -> None:
    peer = FakePeer()
    Session(peer, harness.ctx).opened(None)
    await asyncio.sleep(0.3)
    assert peer.closed_with == (CLOSE_AUTH_FAILED, "Invalid token")


async def test_first_frame_other_than_auth_closes_4001(harness: Harness) -> None:
    peer = FakePeer()
    session = Session(peer, harness.ctx)
    session.opened(None)
    send(session, action="subscribe", topic="rating.global")
    assert peer.closed_with is not None and peer.closed_with[0] == CLOSE_AUTH_FAILED


async def test_subscribe_then_live_updates_on_many_topics(harness: Harness) -> None:
    session, peer = harness.connect("7")
    for topic in ("rating.global", "rating.game.42", "rating.user.7"):
        send(session, action="subscribe", topic=topic, id=topic)
    await settle()
    subscribed = peer.of_type("subscribed")
    assert [(m["topic"], m["offset"], m["id"]) for m in subscribed] == [
        ("rating.global", 0, "rating.global"),
        ("rating.game.42", 0, "rating.game.42"),
        ("rating.user.7", 0, "rating.user.7"),
    ]
    assert all(m["epoch"] == harness.store.epoch for m in subscribed)
    await harness.write("42", "7", 5)
    await harness.write("43", "8", 2)
    updates = [(m["topic"], m["offset"], m["event"]) for m in peer.of_type("rating_update")]
    assert updates == [
        ("rating.global", 1, "created"),
        ("rating.game.42", 1, "created"),
        ("rating.user.7", 1, "created"),
        ("rating.global", 2, "created"),
    ]
    data = peer.of_type("rating_update")[0]["data"]
    assert data["gameId"] == "42" and data["userId"] == "7" and data["score"] == 5


async def test_unsubscribe_stops_delivery(harness: Harness) -> None:
    session, peer = harness.connect()
    send(session, action="subscribe", topic="rating.game.42")
    await settle()
    send(session, action="unsubscribe", topic="rating.game.42", id=3)
    assert peer.messages()[-1] == {"type": "unsubscribed", "topic": "rating.game.42", "id": 3}
    await harness.write("42", "7")
    assert not peer.of_type("rating_update")


async def test_errors_keep_the_connection_open(harness: Harness) -> None:
    session, peer = harness.connect("7")
    session.received(b"{not json")
    send(session, action="dance")
    send(session, action="subscribe", topic="rating.bogus.1")
    send(session, action="subscribe", topic="rating.user.8")
    send(session, action="subscribe")
    send(session, action="ping", id=1)
    await settle()
    errors = [(m["code"]) for m in peer.of_type("error")]
    assert errors == ["bad_request", "bad_request", "unknown_topic", "forbidden", "bad_request"]
    assert peer.messages()[-1] == {"type": "pong", "id": 1}
    assert peer.closed_with is None


async def test_user_topic_needs_that_user_or_admin(harness: Harness) -> None:
    session, peer = harness.connect("admin-1", scope="ratings:admin")
    send(session, action="subscribe", topic="rating.user.8")
    await settle()
    assert peer.of_type("subscribed")[0]["topic"] == "rating.user.8"


async def test_topics_claim_limits_subscriptions(harness: Harness) -> None:
    token = harness.tokens.issue("7", topics=["rating.game.*"])
    session, peer = harness.connect(token=token)
    send(session, action="subscribe", topic="rating.game.42")
    send(session, action="subscribe", topic="rating.global")
    await settle()
    assert [m["type"] for m in peer.messages()[1:]] == ["subscribed", "error"]


async def test_resume_replays_missed_events_in_order(harness: Harness) -> None:
    for user in ("1", "2", "3", "4"):
        await harness.write("42", user)
    session, peer = harness.connect()
    send(session, action="subscribe", topic="rating.game.42", since=1, epoch=harness.store.epoch)
    await settle()
    frames = peer.messages()[1:]
    assert [(m["type"], m.get("offset")) for m in frames] == [
        ("rating_update", 2),
        ("rating_update", 3),
        ("rating_update", 4),
        ("subscribed", 4),
    ]
    assert frames[-1]["recovered"] is True
    await harness.write("42", "5")
    assert peer.messages()[-1]["offset"] == 5


async def test_resume_beyond_retained_history_is_not_recovered(harness: Harness) -> None:
    for user in ("1", "2", "3", "4"):
        await harness.write("42", user)
    # Everything is past the age limit; history keeps nothing.
    await harness.store.prune_history(2, older_than=datetime.now(UTC) + timedelta(days=1))
    session, peer = harness.connect()
    send(session, action="subscribe", topic="rating.game.42", since=0)
    await settle()
    frames = peer.messages()[1:]
    assert [m["type"] for m in frames] == ["subscribed"], "no partial replay"
    assert frames[0]["recovered"] is False and frames[0]["offset"] == 4


async def test_resume_with_another_epoch_is_not_recovered(harness: Harness) -> None:
    await harness.write("42", "1")
    session, peer = harness.connect()
    send(session, action="subscribe", topic="rating.game.42", since=0, epoch="old-epoch")
    await settle()
    [reply] = peer.messages()[1:]
    assert reply["type"] == "subscribed" and reply["recovered"] is False


async def test_resume_at_head_is_recovered_with_nothing_to_replay(harness: Harness) -> None:
    await harness.write("42", "1")
    session, peer = harness.connect()
    send(session, action="subscribe", topic="rating.game.42", since=1)
    await settle()
    [reply] = peer.messages()[1:]
    assert reply["recovered"] is True and reply["offset"] == 1


async def test_events_committed_but_not_yet_published_are_not_duplicated(harness: Harness) -> None:
    first = await harness.write("42", "1")
    pending = await harness.commit("42", "2")  # committed; the relay has not published it
    session, peer = harness.connect()
    send(session, action="subscribe", topic="rating.game.42")
    await settle()
    assert peer.of_type("subscribed")[0]["offset"] == 2
    harness.hub.publish(pending)  # the relay catches up
    later = await harness.write("42", "3")
    offsets = [m["offset"] for m in peer.of_type("rating_update")]
    assert offsets == [3], f"expected only the event after the subscribe point, got {offsets}"
    assert first.game_offset == 1 and later.game_offset == 3


async def test_replay_racing_the_relay_has_no_gap_and_no_duplicate(harness: Harness) -> None:
    await harness.write("42", "1")
    unpublished = [await harness.commit("42", u) for u in ("2", "3")]
    session, peer = harness.connect()
    send(session, action="subscribe", topic="rating.game.42", since=0)
    await settle()
    for event in unpublished:
        harness.hub.publish(event)
    await harness.write("42", "4")
    offsets = [m["offset"] for m in peer.of_type("rating_update")]
    assert offsets == [1, 2, 3, 4]


async def test_live_events_during_replay_are_buffered_not_lost(harness: Harness) -> None:
    for user in ("1", "2"):
        await harness.write("42", user)
    session, peer = harness.connect()
    send(session, action="subscribe", topic="rating.game.42", since=0)
    # Before the session's worker runs, more events are published.
    await harness.write("42", "3")
    await harness.write("42", "4")
    await settle()
    offsets = [m["offset"] for m in peer.of_type("rating_update")]
    assert offsets == [1, 2, 3, 4]


async def test_snapshot_for_game_topics(harness: Harness) -> None:
    await harness.write("42", "1", 5)
    await harness.write("42", "2", 3)
    session, peer = harness.connect()
    send(session, action="subscribe", topic="rating.game.42", snapshot=True)
    await settle()
    snapshot, subscribed = peer.messages()[1:]
    assert snapshot["type"] == "snapshot" and snapshot["offset"] == 2
    assert snapshot["data"]["count"] == 2 and snapshot["data"]["mean"] == 4.0
    assert snapshot["data"]["histogram"] == {"1": 0, "2": 0, "3": 1, "4": 0, "5": 1}
    assert subscribed["type"] == "subscribed" and subscribed["offset"] == 2
    await harness.write("42", "3")
    assert peer.messages()[-1]["offset"] == 3


async def test_wildcard_gets_every_game_once(harness: Harness) -> None:
    session, peer = harness.connect()
    send(session, action="subscribe", topic="rating.game.*")
    send(session, action="subscribe", topic="rating.game.42")
    await settle()
    await harness.write("42", "1")
    await harness.write("43", "1")
    updates = [(m["topic"], m["offset"]) for m in peer.of_type("rating_update")]
    assert updates == [("rating.game.42", 1), ("rating.game.43", 1)]


async def test_message_flood_gets_errors_then_4008(harness: Harness) -> None:
    session, peer = harness.connect()
    rate = int(harness.ctx.limits.ws_messages_per_client_per_second)
    for _ in range(rate):
        send(session, action="ping")
    assert len(peer.of_type("pong")) == rate
    send(session, action="ping")
    assert peer.of_type("error")[-1]["code"] == "rate_limited"
    assert peer.closed_with is None
    for _ in range(rate + 1):
        if peer.closed_with is None:
            send(session, action="ping")
    assert peer.closed_with is not None and peer.closed_with[0] == CLOSE_RATE_LIMITED


async def test_token_expiry_closes_4002_unless_refreshed(harness: Harness) -> None:
    # exp is whole seconds (PyJWT truncates it): this token lives for at most 1 s.
    short = jwt.encode({"sub": "7", "exp": int(time.time()) + 1}, SECRET, "HS256")
    _, expiring = harness.connect(token=short)
    session, refreshed = harness.connect(token=short)
    send(session, action="refresh", token=harness.tokens.issue("7", ttl_seconds=60), id="r")
    reply = refreshed.messages()[-1]
    assert reply["type"] == "refreshed" and reply["id"] == "r" and reply["expiresAt"].endswith("Z")
    await asyncio.sleep(1.2)
    assert expiring.closed_with == (CLOSE_TOKEN_EXPIRED, "Token expired")
    assert refreshed.closed_with is None


async def test_refresh_for_another_user_is_refused(harness: Harness) -> None:
    session, peer = harness.connect("7")
    send(session, action="refresh", token=harness.tokens.issue("8"))
    assert peer.messages()[-1]["code"] == "forbidden"


async def test_closing_releases_subscriptions(harness: Harness) -> None:
    session, _ = harness.connect()
    send(session, action="subscribe", topic="rating.global")
    await settle()
    assert harness.hub.subscriber_count("rating.global") == 1
    session.closed_by_peer()
    assert harness.hub.subscriber_count("rating.global") == 0
    assert session not in harness.ctx.sessions


async def test_second_subscriber_starts_where_the_hub_is_without_gap_or_duplicate(
    harness: Harness,
) -> None:
    await harness.write("42", "1")
    first, _ = harness.connect("a")
    send(first, action="subscribe", topic="rating.game.42")
    await settle()
    unpublished = await harness.commit("42", "2")
    second, peer = harness.connect("b")
    send(second, action="subscribe", topic="rating.game.42")
    await settle()
    start = peer.of_type("subscribed")[0]["offset"]
    harness.hub.publish(unpublished)
    await harness.write("42", "3")
    offsets = [m["offset"] for m in peer.of_type("rating_update")]
    assert offsets == list(range(start + 1, 4)), (start, offsets)


async def test_a_connection_holds_a_bounded_number_of_subscriptions(harness: Harness) -> None:
    harness.ctx.limits = LimitsSettings(max_subscriptions_per_connection=5)
    session, peer = harness.connect("7")
    most = 5
    for game in range(most):
        send(session, action="subscribe", topic=f"rating.game.g{game}")
    await settle()
    assert len(peer.of_type("subscribed")) == most
    peer.frames.clear()
    send(session, action="subscribe", topic="rating.game.one-too-many", id="x")
    await settle()
    [refusal] = peer.messages()
    assert refusal["type"] == "error" and refusal["code"] == "too_many_subscriptions"
    assert refusal["id"] == "x" and peer.closed_with is None
    send(session, action="subscribe", topic="rating.game.g0")  # resubscribing stays allowed
    send(session, action="unsubscribe", topic="rating.game.g1")
    send(session, action="subscribe", topic="rating.game.one-too-many")
    await settle()
    assert [m["type"] for m in peer.messages()[1:]] == ["subscribed", "unsubscribed", "subscribed"]


async def test_a_filtered_subscription_replays_and_delivers_only_matching_events(
    harness: Harness,
) -> None:
    for user, score in (("1", 1), ("2", 5), ("3", 2)):
        await harness.write("42", user, score)
    session, peer = harness.connect()
    send(session, action="subscribe", topic="rating.game.42", since=0, filter="data.score <= 2")
    await settle()
    await harness.write("42", "4", 4)
    await harness.write("42", "5", 1)
    frames = peer.messages()[1:]
    assert [(m["type"], m.get("offset")) for m in frames] == [
        ("rating_update", 1),
        ("rating_update", 3),
        ("subscribed", 3),
        ("rating_update", 5),
    ]
    assert frames[2]["filter"] == "data.score <= 2" and frames[2]["recovered"] is True


async def test_a_bad_filter_is_an_error_and_the_connection_stays_open(harness: Harness) -> None:
    session, peer = harness.connect()
    send(session, action="subscribe", topic="rating.global", filter="data.stars > 1", id="f1")
    send(session, action="ping")
    await settle()
    error, pong = peer.messages()[1:]
    assert error["code"] == "bad_filter" and "data.stars" in error["message"]
    assert error["id"] == "f1"
    assert pong["type"] == "pong" and peer.closed_with is None
    assert not session.topics


async def test_a_filter_on_every_game_sees_each_games_own_frames(harness: Harness) -> None:
    session, peer = harness.connect()
    send(session, action="subscribe", topic="rating.game.*", filter="data.score <= 2")
    send(session, action="subscribe", topic="rating.game.9", filter='topic == "rating.game.9"')
    await settle()
    for game, user, score in (("8", "1", 1), ("9", "2", 5), ("9", "3", 2), ("8", "4", 3)):
        await harness.write(game, user, score)
    updates = [(m["topic"], m["offset"], m["data"]["score"]) for m in peer.of_type("rating_update")]
    # rating.game.9 holds its own subscription: its frames come there once, not twice.
    assert updates == [("rating.game.8", 1, 1), ("rating.game.9", 1, 5), ("rating.game.9", 2, 2)]


async def test_a_filter_cannot_widen_what_a_token_may_see(harness: Harness) -> None:
    session, peer = harness.connect("7")
    send(session, action="subscribe", topic="rating.user.8", filter="true")
    send(session, action="subscribe", topic="rating.user.8", filter="data.stars")
    await settle()
    refusals = [m["code"] for m in peer.of_type("error")]
    assert refusals == ["forbidden", "forbidden"], "the topic is checked before the filter"
    await harness.write("42", "8", 1)
    assert not peer.of_type("rating_update")
