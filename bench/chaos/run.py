"""One chaos run: start the topology, run writers, subscribers, a durable consumer's members and
the nemesis for a while, heal everything, let the subscribers and the consumer catch up, read
the final state, and check the history."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.chaos.checker import Verdict, check
from bench.chaos.consumer_members import ConsumerMember
from bench.chaos.history import ConsumerGroup, FinalState, History, HistoryEvent, Subscriber
from bench.chaos.nemesis import Nemesis
from bench.chaos.topology import Topology
from bench.chaos.workload import RawSubscriber, SdkSubscriber, Writer
from bench.servers import token
from bench.tcp_proxy import TcpProxy

WRITERS = 4
USERS_PER_WRITER = 3
GAMES = ["g0", "g1", "g2", "g3"]
QUIET_SECONDS = 40
#: The durable consumer on rating.global, its members, and the token sub they share.
CONSUMER = "chaos-workers"
CONSUMER_MEMBERS = 3
CONSUMER_OWNER = "agent-fleet"


async def run(
    seconds: float,
    seed: int,
    workdir: Path,
    *,
    progress: Callable[[str], None] = lambda line: None,
    interval: tuple[float, float] = (0.5, 2.5),
    wipe_every: int = 40,
    broker: str = "redis",
) -> tuple[History, Verdict, dict[str, Any]]:
    """Run for ``seconds`` with faults drawn from ``seed``, the instances sharing ``broker``
    (redis or nats); the history, its verdict and the report."""
    rng = random.Random(seed)
    users = [f"w{w}u{u}" for w in range(WRITERS) for u in range(USERS_PER_WRITER)]
    history = History(seed=seed, seconds=seconds, games=GAMES, users=users)
    topology = Topology(workdir, broker)
    tasks: list[asyncio.Task[Any]] = []
    nemesis: Nemesis | None = None
    try:
        await topology.start()
        assert topology.haproxy is not None
        progress(f"topology up in {workdir}")
        proxies, followers = await _subscribers(topology, history, users)
        tasks += [asyncio.create_task(f.run()) for f in followers]
        await asyncio.wait_for(asyncio.gather(*(f.subscribed.wait() for f in followers)), 30)
        members = await _consumer_members(topology, history, proxies, rng, tasks)
        ids = itertools.count(1)
        writers = [
            Writer(
                number,
                topology.haproxy.base_url,
                GAMES,
                users[number * USERS_PER_WRITER : (number + 1) * USERS_PER_WRITER],
                random.Random(rng.random()),
                history.writes,
                ids,
            )
            for number in range(WRITERS)
        ]
        writer_tasks = [asyncio.create_task(w.run()) for w in writers]
        nemesis = Nemesis(
            topology,
            proxies,
            random.Random(rng.random()),
            history.faults,
            interval=interval,
            wipe_every=wipe_every,
        )
        nemesis_task = asyncio.create_task(nemesis.run())
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            await asyncio.sleep(min(5.0, seconds - elapsed))
            progress(_progress_line(history, time.monotonic() - started, seconds))
        nemesis.stopped.set()
        await nemesis_task
        for writer in writers:
            writer.stopped.set()
        await asyncio.gather(*writer_tasks)
        for member in members:
            member.calm.set()  # no more crashes; everything given is acked
        await _heal(topology, proxies)
        progress("healed; waiting for the subscribers and the consumer to catch up")
        await _quiet(topology, history)
        history.final = await _final_state(topology, history)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await topology.stop()
    verdict = check(history)
    return history, verdict, report(history, verdict, nemesis)


async def _subscribers(
    topology: Topology, history: History, users: list[str]
) -> tuple[list[TcpProxy], list[RawSubscriber | SdkSubscriber]]:
    """Eight followers, each behind a TCP proxy of its own in front of HAProxy, spread over
    both endpoints, both client kinds and the three kinds of topic."""
    haproxy = topology.haproxy
    assert haproxy is not None
    plan = [
        ("rating.global", "sdk", "main"),
        ("rating.global", "raw", "guide"),
        ("rating.game.g0", "raw", "main"),
        ("rating.game.g0", "sdk", "guide"),
        ("rating.game.g1", "raw", "guide"),
        ("rating.game.g2", "sdk", "main"),
        (f"rating.user.{users[0]}", "sdk", "guide"),
        (f"rating.user.{users[1]}", "raw", "main"),
    ]
    proxies, followers = [], []
    for number, (topic, kind, endpoint) in enumerate(plan):
        proxy = TcpProxy(haproxy.http_port if endpoint == "main" else haproxy.ws_port)
        await proxy.restore()
        proxies.append(proxy)
        url = f"ws://127.0.0.1:{proxy.port}" + ("/ws" if endpoint == "main" else "/")
        record = Subscriber(f"s{number}-{kind}-{endpoint}", kind, endpoint, topic)  # type: ignore[arg-type]
        history.subscribers.append(record)
        follower_type = SdkSubscriber if kind == "sdk" else RawSubscriber
        followers.append(follower_type(record, url, f"watcher{number}"))
    return proxies, followers


async def _consumer_members(
    topology: Topology,
    history: History,
    proxies: list[TcpProxy],
    rng: random.Random,
    tasks: list[asyncio.Task[Any]],
) -> list[ConsumerMember]:
    """The consumer's members, each behind a TCP proxy of its own (the nemesis cuts them as
    it cuts subscribers) in front of HAProxy's ``/ws``: the ``all`` instances, which have the
    database consumers need. The first creates the consumer before the others join, and
    before any write, so every event of the run is owed to it."""
    assert topology.haproxy is not None
    group = ConsumerGroup(CONSUMER, "rating.global", [f"m{n}" for n in range(CONSUMER_MEMBERS)])
    history.consumers.append(group)
    members = []
    for name in group.members:
        proxy = TcpProxy(topology.haproxy.http_port)
        await proxy.restore()
        proxies.append(proxy)
        url = f"ws://127.0.0.1:{proxy.port}/ws"
        members.append(
            ConsumerMember(group, name, url, CONSUMER_OWNER, random.Random(rng.random()))
        )
    for member in members:
        tasks.append(asyncio.create_task(member.run()))
        await asyncio.wait_for(member.joined.wait(), 30)
    return members


async def _consumer_status(http: httpx.AsyncClient, group: ConsumerGroup) -> dict[str, Any] | None:
    """``GET /consumers/{name}?topic=`` as its owner (None: no answer)."""
    headers = {"Authorization": f"Bearer {token(CONSUMER_OWNER)}"}
    try:
        answer = await http.get(
            f"/consumers/{group.name}", params={"topic": group.topic}, headers=headers
        )
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    status: dict[str, Any] = answer.json()
    return status


async def _heal(topology: Topology, proxies: list[TcpProxy]) -> None:
    """Everything up again: the run ends on a healthy cluster."""
    assert topology.database_proxy is not None and topology.haproxy is not None
    await topology.database_proxy.restore()
    for proxy in proxies:
        await proxy.restore()
    for managed in (topology.broker, *topology.instances, topology.haproxy):
        managed.signal(signal.SIGCONT)  # nothing stays paused
        if managed.process is None or managed.process.poll() is not None:
            await managed.start()
    for managed in (topology.broker, *topology.instances, topology.haproxy):
        if not await managed.wait_ready():
            raise RuntimeError(f"{managed.name} did not come back: see {topology.workdir}")


async def _read_topic(http: httpx.AsyncClient, topic: str) -> list[HistoryEvent]:
    events: list[HistoryEvent] = []
    since = 0
    while True:
        answer = await http.get(f"/topics/{topic}/events", params={"since": since, "limit": 500})
        answer.raise_for_status()
        page = answer.json()["events"]
        if not page:
            return events
        for frame in page:
            data = frame["data"]
            events.append(
                HistoryEvent(
                    int(frame["offset"]),
                    frame["event"],
                    data["id"],
                    str(data["gameId"]),
                    str(data["userId"]),
                    int(data["version"]),
                    int(data["score"]),
                    data.get("comment"),
                )
            )
        since = events[-1].offset


async def _quiet(topology: Topology, history: History) -> None:
    """Wait (at most QUIET_SECONDS) until every subscriber has the head of its topic."""
    assert topology.haproxy is not None
    headers = {"Authorization": f"Bearer {token('checker', 'ratings:admin')}"}
    deadline = time.monotonic() + QUIET_SECONDS
    async with httpx.AsyncClient(
        base_url=topology.haproxy.base_url, headers=headers, timeout=10
    ) as http:
        while time.monotonic() < deadline:
            behind = 0
            for sub in history.subscribers:
                answer = await http.get(
                    f"/topics/{sub.topic}/events", params={"since": 0, "limit": 1}
                )
                if answer.status_code != 200:
                    behind += 1
                    continue
                head = int(answer.json()["head"])
                last = max((f.offset for f in sub.frames), default=0)
                last = max([last, *(g.offset for g in sub.gaps)])
                behind += last < head
            for group in history.consumers:
                status = await _consumer_status(http, group)
                behind += status is None or status["lag"] > 0 or status["pending"] > 0
            if not behind:
                return
            await asyncio.sleep(0.5)


async def _final_state(topology: Topology, history: History) -> FinalState:
    assert topology.haproxy is not None
    final = FinalState()
    headers = {"Authorization": f"Bearer {token('checker', 'ratings:admin')}"}
    async with httpx.AsyncClient(
        base_url=topology.haproxy.base_url, headers=headers, timeout=30
    ) as http:
        topics = ["rating.global"]
        topics += [f"rating.game.{game}" for game in history.games]
        topics += [f"rating.user.{user}" for user in history.users]
        for topic in topics:
            final.topics[topic] = await _read_topic(http, topic)
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 500}
            if cursor:
                params["cursor"] = cursor
            page = (await http.get("/ratings", params=params)).json()
            for item in page["items"]:
                final.ratings[item["id"]] = (
                    str(item["gameId"]),
                    str(item["userId"]),
                    int(item["score"]),
                    int(item["version"]),
                    item.get("comment"),
                )
            cursor = page.get("nextCursor")
            if not cursor:
                break
        for group in history.consumers:
            status = await _consumer_status(http, group)
            if status is not None:
                group.final_ack_floor, group.final_pending = status["ackFloor"], status["pending"]
        for game in history.games:
            summary = (await http.get(f"/games/{game}/summary")).json()
            histogram = [int(summary["histogram"][str(score)]) for score in range(1, 6)]
            final.summaries[game] = (int(summary["count"]), histogram)
    connection = await asyncpg.connect(topology.direct_database_url)
    try:
        final.audit_change_entries = int(
            await connection.fetchval(
                "SELECT count(*) FROM audit_log WHERE action IN "
                "('rating.create', 'rating.update', 'rating.delete')"
            )
        )
    finally:
        await connection.close()
    verified = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ratewire", "audit", "verify"],
        env=topology.admin_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    final.audit_verify_exit = verified.returncode
    final.audit_verify_output = (verified.stdout + verified.stderr).strip()[-2000:]
    return final


def report(history: History, verdict: Verdict, nemesis: Nemesis | None) -> dict[str, Any]:
    """The run in one JSON-able dict: what was done, what was injected, what was found."""
    frame_times = sorted(f.at for s in history.subscribers for f in s.frames)
    recoveries: dict[str, float] = {}
    for fault in history.faults:
        index = bisect.bisect_right(frame_times, fault.ended)
        if index < len(frame_times):
            fault.recovery = round(frame_times[index] - fault.ended, 3)
            recoveries[fault.kind] = max(recoveries.get(fault.kind, 0.0), fault.recovery)
    return {
        "seed": history.seed,
        "seconds": history.seconds,
        **verdict.summary(),
        "writes": len(history.writes),
        "writes_refused": sum(w.outcome == "refused" for w in history.writes),
        "writes_inferred": sum(w.inferred for w in history.writes),
        "faults": dict(Counter(f.kind for f in history.faults)),
        "longest_recovery_seconds": recoveries,
        "burst_broken_handshakes": 0 if nemesis is None else nemesis.broken_handshakes,
        "subscriber_connections": {s.name: s.connections for s in history.subscribers},
        "consumer_member_connections": dict(
            Counter(m.member for c in history.consumers for m in c.memberships)
        ),
        "violation_details": [
            {"seed": history.seed, "rule": v.rule, "detail": v.detail, "excerpt": v.excerpt}
            for v in verdict.violations
        ],
    }


def _progress_line(history: History, elapsed: float, seconds: float) -> str:
    writes = Counter(w.outcome for w in history.writes)
    frames = sum(len(s.frames) for s in history.subscribers)
    return (
        f"{elapsed:5.0f}/{seconds:.0f} s  writes ok {writes['ok']} unknown {writes['unknown']} "
        f"refused {writes['refused']}  faults {len(history.faults)}  frames {frames}"
    )


def human_summary(result: dict[str, Any]) -> str:
    lines = [
        f"chaos run, seed {result['seed']}, {result['seconds']:.0f} s",
        f"  writes: {result['writes']} ({result['writes_acknowledged']} acknowledged, "
        f"{result['writes_unknown']} without an answer, {result['writes_refused']} refused, "
        f"{result['writes_inferred']} found landed after a lost answer)",
        f"  events: {result['events']}; frames checked: {result['frames_checked']}; "
        f"gaps reported: {result['gaps_reported']}",
        "  faults: " + ", ".join(f"{k} {v}" for k, v in sorted(result["faults"].items())),
        "  longest recovery (fault end to next delivery): "
        + ", ".join(
            f"{k} {v:.2f} s" for k, v in sorted(result["longest_recovery_seconds"].items())
        ),
        f"  broken handshakes in connection bursts: {result['burst_broken_handshakes']}",
        f"  consumer: {result['consumer_deliveries']} deliveries "
        f"({result['consumer_redeliveries']} redeliveries) over "
        f"{result['consumer_memberships']} memberships ({result['consumer_crashes']} crashed); "
        f"{result['consumer_offsets_acked']} of {result['consumer_offsets_owed']} owed offsets "
        f"acked in {result['consumer_ack_answers']} answers ({result['consumer_acks_unanswered']} "
        f"acks unanswered); {result['consumer_in_flight_at_ack']} deliveries in flight when "
        f"acked; {result['consumer_violations']} consumer violations",
        f"  violations: {result['violations']}",
    ]
    for violation in result["violation_details"][:20]:
        lines.append(f"    [{violation['rule']}] {violation['detail']} (seed {violation['seed']})")
    return "\n".join(lines)


def save(history: History, path: Path) -> None:
    import json

    path.write_text(json.dumps(history.to_json()))
