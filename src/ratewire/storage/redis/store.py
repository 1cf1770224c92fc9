"""Redis store: ratings, summaries, rankings, offsets and the event history in Redis.

Every write is one Lua script (scripts.WRITE), so the rating, its summary counters,
the rankings, the three topic offsets and the event change together or not at all, and
offsets are gapless in commit order because Redis runs scripts one at a time. The domain
rules stay in Python: a write reads the rating, computes the new one, and the script applies
it only if the rating's version is still the one read (else the write reads again, or
answers 412 when the client named a version). A create needs no read: the script checks the
(game, user) pair.

The event history is the outbox: the relay and ``since`` resume read its streams. They have
the Redis broker's layout (``{prefix}:{epoch}:events`` and ``:t:{topic}``, entry id = offset)
and the write advances ``{prefix}:{epoch}:cursor``, the broker's publish cursor. So with
``broker.backend: redis`` on the same Redis database and ``broker.prefix`` equal to the
store's prefix (the default, ``ratewire``, for both), the write *is* the publish: the broker's
followers read the store's streams, and the relay's publish finds every event already there
and writes nothing. On another server or prefix, the relay copies events as from SQL.

Durability is Redis's: see :func:`persistence_warning`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ratewire.audit import AuditChain, AuditContext, AuditEntry, AuditQuery, AuditRecord
from ratewire.audit.entry import AuditHead
from ratewire.audit.records import rating_audit_record, revocation_audit_record
from ratewire.broker.event_codec import decode_event
from ratewire.domain import (
    GameSummary,
    Rating,
    RatingChanges,
    RatingDraft,
    RatingEvent,
    SummaryDelta,
    Topic,
    TopicKind,
    epoch_ms,
    from_epoch_ms,
)
from ratewire.domain.rating import EventKind
from ratewire.security.revocation import Revocation
from ratewire.storage.base import (
    AlreadyExists,
    NotFound,
    StorageUnavailable,
    VersionMismatch,
    WriteResult,
)
from ratewire.storage.redis.audit import RedisAuditChain, encode_record
from ratewire.storage.redis.consumers import RedisConsumerStore
from ratewire.storage.redis.scripts import LIST, PRUNE, RANK, TOP, WRITE
from ratewire.storage.redis.webhooks import RedisWebhookStore
from ratewire.storage.redis.wire import PipelinedConnection
from ratewire.storage.upsert import PairUpsert

_WRITE_SHA = hashlib.sha1(WRITE.encode()).hexdigest()

log = logging.getLogger("ratewire.storage.redis")

DEFAULT_PREFIX = "ratewire"
#: Events the pruner looks at per script call (each call blocks Redis for its duration).
PRUNE_BATCH = 500
#: Rankings kept current by every write (one per Bayesian prior asked for; normally one).
MAX_RANKINGS = 4
#: How often a write retries after the rating changed under it (no If-Match given).
MAX_RETRIES = 50


def persistence_warning(config: dict[str, str]) -> str | None:
    """What Redis's persistence settings (``CONFIG GET appendonly appendfsync save``) cannot
    keep of the promise that an acknowledged write is never lost, or None when they can."""
    if config.get("appendonly") == "yes":
        fsync = config.get("appendfsync", "everysec")
        if fsync == "always":
            return None
        if fsync == "everysec":
            return (
                "Redis storage with appendfsync everysec: a crash of the Redis host can lose up "
                "to a second of acknowledged writes; set appendfsync always to keep every one"
            )
        return (
            f"Redis storage with appendfsync {fsync}: a crash of the Redis host can lose "
            "acknowledged writes the OS had not flushed; set appendfsync always"
        )
    if config.get("save"):
        return (
            "Redis storage without the append-only file: a Redis crash loses every write since "
            "the last RDB snapshot; set appendonly yes and appendfsync always"
        )
    return (
        "Redis storage with no persistence at all (appendonly no, no snapshots): a Redis "
        "restart loses every rating; set appendonly yes and appendfsync always"
    )


def split_url(url: str) -> tuple[str, str]:
    """(the URL for redis-py, the key prefix): ``?prefix=`` is the store's, not Redis's."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    prefix = query.pop("prefix", [DEFAULT_PREFIX])[0]
    rest = "&".join(f"{key}={value}" for key, values in query.items() for value in values)
    return urlunsplit(parts._replace(query=rest)), prefix


def _rating(fields: dict[bytes, bytes], rating_id: str) -> Rating:
    comment = fields.get(b"c")
    return Rating(
        id=rating_id,
        game_id=fields[b"g"].decode(),
        user_id=fields[b"u"].decode(),
        score=int(fields[b"s"]),
        comment=None if comment is None else comment.decode(),
        created_at=from_epoch_ms(int(fields[b"ca"])),
        updated_at=from_epoch_ms(int(fields[b"ua"])),
        version=int(fields[b"v"]),
    )


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def _summary(game_id: str, counters: Sequence[bytes | None]) -> GameSummary:
    n, total, h1, h2, h3, h4, h5, offset = (int(value or 0) for value in counters)
    return GameSummary(game_id, n, total, (h1, h2, h3, h4, h5), offset)


def _prior_name(mean: float, weight: float) -> str:
    return f"{mean!r}:{weight!r}"


class RedisStore(PairUpsert):
    """A :class:`~ratewire.storage.base.RatingStore` on a standalone Redis (7 or later)."""

    upsert_attempts = MAX_RETRIES
    upsert_gave_up = "rating {pair} kept changing"

    def __init__(self, url: str) -> None:
        redis_url, self.prefix = split_url(url)
        self._url = url
        # Any: redis-py types every answer bytes | str | None whatever the connection decodes;
        # this client never decodes, so answers are bytes (or None where a key may be missing).
        self._client: Any = aioredis.Redis.from_url(
            redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=10
        )
        self.epoch = ""
        self._wire = PipelinedConnection(redis_url, on_reconnect=self._drop_idle_connections)
        self._list = self._client.register_script(LIST)
        self._rank = self._client.register_script(RANK)
        self._top = self._client.register_script(TOP)
        self._prune = self._client.register_script(PRUNE)
        self.audit = RedisAuditChain(self._client, self.prefix, self._run_script)
        self.webhooks = RedisWebhookStore(self._client, self.prefix, self._reaching_redis)
        self.consumers = RedisConsumerStore(self._client, self.prefix, self._reaching_redis)
        self._rankings: set[str] = set()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def _history(self) -> str:
        return f"{self.prefix}:{self.epoch}"

    @contextlib.asynccontextmanager
    async def _reaching_redis(self) -> AsyncIterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            await self._drop_idle_connections()
            raise StorageUnavailable(f"redis ({self._url.split('@')[-1]}): {exc}") from exc
        except ResponseError as exc:
            if "LOADING" in str(exc) or "BUSY" in str(exc) or "READONLY" in str(exc):
                raise StorageUnavailable(f"redis: {exc}") from exc
            raise

    async def _drop_idle_connections(self) -> None:
        """Redis went away (a command failed, or the write connection had to reconnect): the
        idle connections of redis-py's pool died with it, and each would fail its next
        command with a 503. redis-py does not retry by default, and a retry could run a
        non-idempotent command twice; dropping them makes the next commands connect anew."""
        await self._client.connection_pool.disconnect(inuse_connections=False)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._reaching_redis():
            await self._client.set(f"{self.prefix}:epoch", secrets.token_hex(8), nx=True)
            self.epoch = (await self._client.get(f"{self.prefix}:epoch")).decode()
            await self._client.set(f"{self._history}:cursor", 0, nx=True)
            await self.audit.start()
            if (warning := await self._persistence_warning()) is not None:
                log.warning(warning)

    async def _persistence_warning(self) -> str | None:
        try:
            config = await self._client.config_get("appendonly")
            config.update(await self._client.config_get("appendfsync"))
            config.update(await self._client.config_get("save"))
        except ResponseError:  # CONFIG renamed or refused (managed Redis)
            return (
                "Redis storage: could not read the server's persistence settings (CONFIG GET "
                "refused); acknowledged writes survive a Redis crash only with appendonly yes "
                "and appendfsync always"
            )
        return persistence_warning({str(k): str(v) for k, v in config.items()})

    async def close(self) -> None:
        """Wait for the writes already sent, then disconnect."""
        await self._idle.wait()
        await self.audit.stop()
        self._wire.close()
        await self._client.aclose()

    async def ping(self) -> None:
        async with self._reaching_redis():
            await self._client.ping()

    # -- writes ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[None]:
        self._in_flight += 1
        self._idle.clear()
        try:
            async with self._reaching_redis():
                yield
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _apply(
        self,
        op: str,
        kind: EventKind,
        old: Rating | None,
        new: Rating | None,
        now: datetime,
        audit: AuditContext | None,
    ) -> list[Any]:
        """Run the write script for one change; its raw answer."""
        current = new or old
        assert current is not None
        delta = SummaryDelta.between(
            None if old is None else old.score, None if new is None else new.score
        )
        wire = current.to_wire()
        record = b""
        if self.audit.chain is not None:
            record = encode_record(rating_audit_record(kind, old, new, now, 0, audit, wire))
        fields = new or current
        args: list[Any] = [
            op,
            current.id,
            current.game_id,
            current.user_id,
            "" if old is None else old.version,
            fields.score,
            "0" if fields.comment is None else "1",
            fields.comment or "",
            epoch_ms(fields.created_at),
            epoch_ms(fields.updated_at),
            fields.version,
            delta.count,
            delta.total,
            *delta.histogram,
            kind,
            orjson.dumps(wire),
            epoch_ms(now),
            record,
            self.prefix,
            self.epoch,
        ]
        answer: list[Any] = await self._run_script(WRITE, _WRITE_SHA, [], args)
        answer.append(wire)  # the event's data: formatted once
        return answer

    async def _run_script(self, script: str, sha: str, keys: list[Any], args: list[Any]) -> Any:
        """EVALSHA on the pipelined connection; EVAL when Redis does not know the script (a
        restarted Redis forgets them)."""
        try:
            return await self._wire.call("EVALSHA", sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self._wire.call("EVAL", script, len(keys), *keys, *args)

    @staticmethod
    def _event(kind: EventKind, current: Rating, answer: list[Any], now: datetime) -> RatingEvent:
        _, seq, game_offset, user_offset, wire = answer
        return RatingEvent(
            seq=int(seq),
            kind=kind,
            game_id=current.game_id,
            user_id=current.user_id,
            game_offset=int(game_offset),
            user_offset=int(user_offset),
            data=wire,
            occurred_at=now,
        )

    def _audit_queued(self) -> None:
        if self.audit.chain is not None:
            self.audit.queued()

    async def create(
        self, draft: RatingDraft, now: datetime, audit: AuditContext | None = None
    ) -> WriteResult:
        rating = Rating.new(draft, now)
        async with self._writing():
            answer = await self._apply("create", "created", None, rating, now, audit)
            if answer[0] == b"exists":
                raise AlreadyExists(draft.game_id, draft.user_id, answer[1].decode())
            self._audit_queued()
        return WriteResult(rating, self._event("created", rating, answer, now), created=True)

    async def _pair_id(self, game_id: str, user_id: str) -> str | None:
        async with self._reaching_redis():
            existing = await self._client.hget(f"{self.prefix}:pair", f"{game_id}/{user_id}")
        return None if existing is None else existing.decode()

    async def _read(self, rating_id: str) -> Rating:
        async with self._reaching_redis():
            fields = await self._client.hgetall(f"{self.prefix}:r:{rating_id}")
        if not fields:
            raise NotFound(rating_id)
        return _rating(fields, rating_id)

    async def _change(
        self,
        rating_id: str,
        changes: RatingChanges | None,
        expected_version: int | None,
        now: datetime,
        audit: AuditContext | None,
    ) -> WriteResult:
        """Update (``changes``) or delete (None) with optimistic retries."""
        for _ in range(MAX_RETRIES):
            old = await self._read(rating_id)
            if expected_version is not None and expected_version != old.version:
                raise VersionMismatch(rating_id, expected_version, old.version)
            new = None if changes is None else changes.apply(old, now)
            if changes is not None and new is None:
                return WriteResult(old, None)
            kind: EventKind = "deleted" if new is None else "updated"
            async with self._writing():
                answer = await self._apply(
                    "delete" if new is None else "update", kind, old, new, now, audit
                )
                if answer[0] == b"ok":
                    self._audit_queued()
                    return WriteResult(new or old, self._event(kind, new or old, answer, now))
            if answer[0] == b"missing":
                raise NotFound(rating_id)
            # 'moved': another write changed the rating after we read it
            if expected_version is not None:
                raise VersionMismatch(rating_id, expected_version, int(answer[1]))
        raise StorageUnavailable(f"rating {rating_id!r} kept changing; try again")

    async def update(
        self,
        rating_id: str,
        changes: RatingChanges,
        expected_version: int | None,
        now: datetime,
        audit: AuditContext | None = None,
    ) -> WriteResult:
        return await self._change(rating_id, changes, expected_version, now, audit)

    async def delete(
        self,
        rating_id: str,
        expected_version: int | None,
        now: datetime,
        audit: AuditContext | None = None,
    ) -> WriteResult:
        return await self._change(rating_id, None, expected_version, now, audit)

    # -- reads ----------------------------------------------------------------------------

    async def get(self, rating_id: str) -> Rating:
        return await self._read(rating_id)

    async def list_ratings(
        self, game_id: str | None, user_id: str | None, limit: int, before_id: str | None
    ) -> list[Rating]:
        p = self.prefix
        async with self._reaching_redis():
            if game_id is not None and user_id is not None:
                # At most one rating per pair: O(1).
                found = await self._client.hget(f"{p}:pair", f"{game_id}/{user_id}")
                if found is None or (before_id is not None and found.decode() >= before_id):
                    return []
                with contextlib.suppress(NotFound):
                    return [await self._read(found.decode())]
                return []
            key = f"{p}:ids:g:{game_id}" if game_id else f"{p}:ids:u:{user_id}" if user_id else ""
            rows = await self._list(keys=[key or f"{p}:ids"], args=[limit, before_id or "", p])
        # A rating deleted between the index read and its fields comes back empty: skipped.
        return [_rating(_pairs(flat), rating_id.decode()) for rating_id, flat in rows if flat]

    async def summary(self, game_id: str) -> GameSummary:
        async with self._reaching_redis():
            counters = await self._client.hmget(
                f"{self.prefix}:sum:{game_id}", "n", "t", "h1", "h2", "h3", "h4", "h5", "o"
            )
        return _summary(game_id, counters)

    async def top_games(
        self, limit: int, min_count: int, prior_mean: float, prior_weight: float
    ) -> list[GameSummary]:
        prior = _prior_name(prior_mean, prior_weight)
        async with self._reaching_redis():
            if prior not in self._rankings:
                if await self._client.sismember(f"{self.prefix}:priors", prior):
                    self._rankings.add(prior)
                elif await self._client.scard(f"{self.prefix}:priors") < MAX_RANKINGS:
                    await self._rank(args=[prior, self.prefix])
                    self._rankings.add(prior)
                else:
                    return await self._top_by_scanning(limit, min_count, prior_mean, prior_weight)
            rows = await self._top(
                keys=[f"{self.prefix}:top:{prior}"], args=[self.prefix, limit, max(min_count, 1)]
            )
        return [_summary(game.decode(), counters) for game, counters in rows]

    async def _top_by_scanning(
        self, limit: int, min_count: int, prior_mean: float, prior_weight: float
    ) -> list[GameSummary]:
        """Every game's counters, ranked here: O(games). Only for a fifth distinct prior."""
        games = sorted(g.decode() for g in await self._client.smembers(f"{self.prefix}:games"))
        summaries = [await self.summary(game) for game in games]
        eligible = [s for s in summaries if s.count >= max(min_count, 1)]
        eligible.sort(key=lambda s: (-(s.bayesian_mean(prior_mean, prior_weight) or 0), s.game_id))
        return eligible[:limit]

    # -- event log ------------------------------------------------------------------------

    def _stream(self, topic: Topic) -> str:
        if topic.kind is TopicKind.GLOBAL:
            return f"{self._history}:events"
        return f"{self._history}:t:{topic.name}"

    async def _range(self, stream: str, after: int, limit: int) -> list[RatingEvent]:
        async with self._reaching_redis():
            entries = await self._client.xrange(stream, f"({after}-0", "+", count=limit)
        return [decode_event(fields[b"e"]) for _, fields in entries]

    async def events_after(self, seq: int, limit: int) -> list[RatingEvent]:
        return await self._range(f"{self._history}:events", seq, limit)

    async def topic_events(self, topic: Topic, since: int, limit: int) -> list[RatingEvent]:
        if topic.kind is TopicKind.ALL_GAMES:
            return []
        return await self._range(self._stream(topic), since, limit)

    async def topic_head(self, topic: Topic) -> int:
        return (await self.topic_position(topic))[0]

    async def topic_position(self, topic: Topic) -> tuple[int, int]:
        async with self._reaching_redis(), self._client.pipeline(transaction=True) as pipe:
            pipe.get(f"{self._history}:cursor")
            pipe.hget(f"{self._history}:heads", topic.name)
            cursor, head = await pipe.execute()
        global_head = int(cursor or 0)
        if topic.kind is TopicKind.GLOBAL:
            return global_head, global_head
        if topic.kind is TopicKind.ALL_GAMES:
            return 0, global_head
        return int(head or 0), global_head

    async def prune_history(self, keep_per_topic: int, older_than: datetime) -> int:
        removed, start = 0, "-"
        async with self._reaching_redis():
            while True:
                count, last, done = await self._prune(
                    keys=[self._history],
                    args=[keep_per_topic, epoch_ms(older_than), start, PRUNE_BATCH],
                )
                removed += int(count)
                if int(done):
                    return removed
                start = "(" + last.decode()

    # -- revocations ----------------------------------------------------------------------

    async def add_revocation(
        self, revocation: Revocation, audit: AuditContext | None = None
    ) -> None:
        entry = orjson.dumps(revocation.to_wire())
        async with self._writing():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(f"{self.prefix}:rev", revocation.key, entry)
                if self.audit.chain is not None:
                    record = encode_record(revocation_audit_record(revocation, audit))
                    pipe.rpush(self.audit.pending_key, b"0|" + record)
                await pipe.execute()
            self._audit_queued()
            await self._forget_expired(revocation.revoked_at)

    async def _forget_expired(self, now: float) -> None:
        expired = [r.key for r in await self._revocations() if r.expires_at <= now]
        if expired:
            await self._client.hdel(f"{self.prefix}:rev", *expired)

    async def _revocations(self) -> list[Revocation]:
        raw = await self._client.hvals(f"{self.prefix}:rev")
        return [Revocation.from_wire(orjson.loads(value)) for value in raw]

    async def revocations(self, now: float) -> list[Revocation]:
        async with self._reaching_redis():
            return [r for r in await self._revocations() if r.expires_at > now]

    # -- audit log ------------------------------------------------------------------------

    def use_audit(self, chain: AuditChain | None) -> None:
        self.audit.chain = chain

    def observe_commits(self, observe: Callable[[str, float], None]) -> None:
        """Not reported: a write is one script call, no queue or writer thread of ours."""

    async def append_audit(self, records: Sequence[AuditRecord]) -> None:
        if self.audit.chain is None or not records:
            return
        async with self._writing():
            await self.audit.queue(records)
            await self.audit.seal()

    async def audit_entries(self, query: AuditQuery) -> list[AuditEntry]:
        async with self._reaching_redis():
            return await self.audit.entries(query)

    async def audit_head(self) -> AuditHead:
        async with self._reaching_redis():
            return await self.audit.head()

    async def prune_audit(self, older_than_ms: int, record: AuditRecord) -> int:
        async with self._writing():
            return await self.audit.prune(older_than_ms, record)


__all__ = ["RedisStore", "persistence_warning"]
