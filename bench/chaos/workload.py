"""The clients of a chaos run: writers that keep writing through HAProxy and retry the way
docs/client.md tells a client to, and subscribers (the Python SDK, and raw WebSocket clients
that resume by hand with ``since``/``epoch``) that record every frame."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import websockets

from bench.chaos.history import Frame, Gap, Subscriber, Write
from bench.servers import token

#: A request gets this long for its answer before the client counts it as lost.
REQUEST_TIMEOUT = 5.0
#: A write is retried for this long, then its client gives up (its outcome stays unknown).
WRITE_DEADLINE = 25.0
RETRYABLE = {502, 503, 504}


class Writer:
    """Owns some (game, user) pairs and writes them, one request at a time. Every request is
    recorded with its answer, or with the lack of one."""

    def __init__(
        self,
        number: int,
        base_url: str,
        games: list[str],
        users: list[str],
        rng: random.Random,
        writes: list[Write],
        ids: Iterator[int],
    ) -> None:
        self.base_url = base_url
        self.number = number
        self.games, self.users = games, users
        self.rng = rng
        self.writes = writes
        self._ids = ids  # one numbering for all writers
        #: (game, user) -> (rating id, version) as this writer last knew it; None: absent.
        self.known: dict[tuple[str, str], tuple[str, int] | None] = {
            (game, user): None for game in games for user in users
        }
        self.stopped = asyncio.Event()

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=REQUEST_TIMEOUT) as http:
            while not self.stopped.is_set():
                pair = self.rng.choice(sorted(self.known))
                await self.write(http, pair)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopped.wait(), self.rng.uniform(0.02, 0.12))

    async def write(self, http: httpx.AsyncClient, pair: tuple[str, str]) -> None:
        game, user = pair
        state = self.known[pair]
        if state is None:
            op = self.rng.choice(["post", "put"])
        else:
            op = self.rng.choice(["put", "patch", "patch", "delete"])
        op_id = next(self._ids)
        record = Write(op_id, op, game, user, f"n{op_id}", time.time())  # type: ignore[arg-type]
        self.writes.append(record)
        headers = {"Authorization": f"Bearer {token(user)}"}
        score = self.rng.randint(1, 5)
        deadline = time.monotonic() + WRITE_DEADLINE
        lost = False  # an attempt had no answer: look before trying again
        while time.monotonic() < deadline:
            if lost:
                landed = await self._landed(http, record, state, headers)
                if landed is True:
                    record.outcome, record.inferred = "ok", True
                    break
                if landed is None:  # could not even look: wait and look again
                    await asyncio.sleep(0.3)
                    continue
            record.attempts += 1
            try:
                answer = await self._send(http, op, game, user, state, score, record.nonce, headers)
            except httpx.HTTPError:
                lost = True
                await asyncio.sleep(self.rng.uniform(0.1, 0.4))
                continue
            record.status = answer.status_code
            if answer.status_code in RETRYABLE or answer.status_code == 429:
                # 503 from ratewire means nothing was stored; from HAProxy (or 502/504) the
                # request may have reached an instance that died answering: look first.
                lost = True
                retry_after = float(answer.headers.get("Retry-After", "0") or 0)
                await asyncio.sleep(min(max(retry_after, 0.1), 2.0) + self.rng.uniform(0, 0.2))
                continue
            # An earlier attempt with no answer may have landed after we looked (an instance
            # paused mid-request commits when it wakes): a refusal then means look again.
            if (
                lost
                and answer.status_code in (404, 409, 412)
                and await self._landed(http, record, state, headers)
            ):
                record.outcome, record.inferred = "ok", True
                break
            if answer.is_success:
                record.outcome = "ok"
                if op == "delete":
                    assert state is not None
                    record.rating_id, record.version = state
                else:
                    body = answer.json()
                    record.rating_id, record.version = body["id"], body["version"]
            else:
                record.outcome = "refused"
            break
        record.ended = time.time()
        await self._resync(http, pair, headers)

    async def _send(
        self,
        http: httpx.AsyncClient,
        op: str,
        game: str,
        user: str,
        state: tuple[str, int] | None,
        score: int,
        nonce: str,
        headers: dict[str, str],
    ) -> httpx.Response:
        if op == "post":
            body = {"gameId": game, "userId": user, "score": score, "comment": nonce}
            return await http.post("/ratings", json=body, headers=headers)
        if op == "put":
            guarded = headers if state is None else {**headers, "If-Match": f'"{state[1]}"'}
            return await http.put(
                f"/games/{game}/ratings/{user}",
                json={"score": score, "comment": nonce},
                headers=guarded,
            )
        assert state is not None
        guarded = {**headers, "If-Match": f'"{state[1]}"'}
        if op == "patch":
            return await http.patch(
                f"/ratings/{state[0]}", json={"score": score, "comment": nonce}, headers=guarded
            )
        return await http.delete(f"/ratings/{state[0]}", headers=guarded)

    async def _current(
        self, http: httpx.AsyncClient, game: str, user: str, headers: dict[str, str]
    ) -> dict[str, Any] | bool | None:
        """The pair's rating now; None if absent; False if it could not be read."""
        try:
            answer = await http.get(
                "/ratings", params={"gameId": game, "userId": user}, headers=headers
            )
        except httpx.HTTPError:
            return False
        if answer.status_code != 200:
            return False
        items = answer.json()["items"]
        return items[0] if items else None

    async def _landed(
        self,
        http: httpx.AsyncClient,
        record: Write,
        state: tuple[str, int] | None,
        headers: dict[str, str],
    ) -> bool | None:
        """Whether a write whose answer was lost took effect (None: cannot tell yet)."""
        current = await self._current(http, record.game, record.user, headers)
        if current is False:
            return None
        if record.op == "delete":
            assert state is not None
            gone = current is None or (isinstance(current, dict) and current["id"] != state[0])
            if gone:
                record.rating_id, record.version = state
            return gone
        if isinstance(current, dict) and current.get("comment") == record.nonce:
            record.rating_id, record.version = current["id"], current["version"]
            return True
        return False

    async def _resync(
        self, http: httpx.AsyncClient, pair: tuple[str, str], headers: dict[str, str]
    ) -> None:
        """Learn the pair's state from the server (the next write's If-Match needs it)."""
        for _ in range(100):
            current = await self._current(http, pair[0], pair[1], headers)
            if current is not False:
                self.known[pair] = (
                    None if current is None else (current["id"], int(current["version"]))  # type: ignore[index]
                )
                return
            if self.stopped.is_set():
                return
            await asyncio.sleep(0.3)


class RawSubscriber:
    """A WebSocket client written against the protocol alone: it resumes by hand, sending
    ``since`` (its last offset) and ``epoch`` when it reconnects."""

    def __init__(self, record: Subscriber, url: str, user: str) -> None:
        self.record = record
        self.url = url
        self.user = user
        self.last = 0
        self.epoch: str | None = None
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        self.record.start_offset = 0
        backoff = 0.1
        while True:
            try:
                async with websockets.connect(
                    f"{self.url}?token={token(self.user, 'ratings:admin')}",
                    open_timeout=5,
                    close_timeout=1,
                ) as socket:
                    self.record.connections += 1
                    backoff = 0.1
                    await self._follow(socket)
            except (OSError, websockets.WebSocketException, TimeoutError, KeyError):
                pass
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _follow(self, socket: Any) -> None:
        hello = json.loads(await asyncio.wait_for(socket.recv(), 10))
        if hello.get("type") != "connection_success":
            return
        request: dict[str, Any] = {
            "action": "subscribe",
            "topic": self.record.topic,
            "since": self.last,
        }
        if self.epoch is not None:
            request["epoch"] = self.epoch
        await socket.send(json.dumps(request))
        async for message in socket:
            frame = json.loads(message)
            kind = frame.get("type")
            if kind == "rating_update" and frame.get("topic") == self.record.topic:
                offset = int(frame["offset"])
                data = frame["data"]
                # Recorded even when it repeats an offset: the checker is to see duplicates.
                self.record.frames.append(
                    Frame(
                        offset,
                        frame["event"],
                        data["id"],
                        int(data["version"]),
                        data.get("comment"),
                        time.time(),
                    )
                )
                self.last = max(self.last, offset)
            elif kind == "subscribed":
                if frame.get("recovered") is False and int(frame["offset"]) > self.last:
                    self.record.gaps.append(Gap(self.last, int(frame["offset"]), time.time()))
                    self.last = int(frame["offset"])
                self.epoch = frame.get("epoch", self.epoch)
                self.subscribed.set()


class SdkSubscriber:
    """The Python SDK's subscription: it reconnects, resumes and reports gaps by itself."""

    def __init__(self, record: Subscriber, url: str, user: str) -> None:
        self.record = record
        self.url = url
        self.user = user
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        from ratewire.client import Client
        from ratewire.client import Gap as SdkGap

        self.record.start_offset = 0
        async with Client(
            self.url, token_provider=lambda: token(self.user, "ratings:admin"), max_backoff=2.0
        ) as client:
            self.subscribed.set()
            async for item in client.subscribe(self.record.topic, since=0):
                self.record.connections = client.stream.connections
                if isinstance(item, SdkGap):
                    self.record.gaps.append(Gap(item.after, item.offset, time.time()))
                    continue
                rating = item.rating  # type: ignore[union-attr]
                self.record.frames.append(
                    Frame(
                        item.offset,
                        item.event,
                        rating.id,
                        rating.version,
                        rating.comment,
                        time.time(),
                    )  # type: ignore[union-attr]
                )
