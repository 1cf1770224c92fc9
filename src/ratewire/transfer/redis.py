"""The Redis store as a copy's source and target: its keys (ratewire.storage.redis.scripts
lists them) read into the SQL schema's rows and written back from them.

Redis has no snapshot across keys: a Redis source is read with its servers stopped, and the
copy fails, naming that, if the global offset or the audit chain moved while it was read.
Rankings (``S:top:*``) are not copied: the target builds each one the first time it is asked.
A Redis target is written in pipelined batches; if the load fails, every key under its prefix
is deleted again (the target held no data, or the copy would have refused).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, fields
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy import Table

from ratewire.domain.webhooks import Webhook
from ratewire.security.revocation import Revocation
from ratewire.storage.redis.store import split_url
from ratewire.transfer.tables import (
    BATCH_ROWS,
    BY_NAME,
    Counts,
    Row,
    TargetNotEmpty,
    TransferError,
    columns,
)

GAME, USER = "rating.game.", "rating.user."
_WEBHOOK_FIELDS = [f.name for f in fields(Webhook)]


def _text(value: bytes | None) -> str | None:
    return None if value is None or value == b"" else value.decode()


def _int(value: bytes | None) -> int:
    return 0 if value is None else int(value)


class _Redis:
    def __init__(self, url: str) -> None:
        redis_url, self.prefix = split_url(url)
        self.description = f"{redis_url.split('@')[-1]} (prefix {self.prefix})"
        self.client: Any = aioredis.Redis.from_url(redis_url, socket_connect_timeout=5)
        self.epoch = ""

    @property
    def history(self) -> str:
        return f"{self.prefix}:{self.epoch}"

    async def close(self) -> None:
        await self.client.aclose()

    def failed(self, exc: Exception) -> TransferError:
        return TransferError(f"redis {self.description}: {type(exc).__name__}: {exc}")


class RedisSource(_Redis):
    """Rows of a Redis store whose servers are stopped."""

    consistency = "no snapshot in Redis: stop the source's servers first (checked at the end)"

    async def open(self) -> Counts:
        try:
            epoch = await self.client.get(f"{self.prefix}:epoch")
            if epoch is None:
                raise TransferError(f"redis {self.description}: no ratewire store there")
            self.epoch = epoch.decode()
            pending = await self.client.llen(f"{self.prefix}:audit:pending")
            if pending:
                raise TransferError(
                    f"redis {self.description}: {pending} audit record(s) are not sealed yet: "
                    "start a ratewire server on it once (it seals them), stop it, copy again"
                )
            self._mark = await self._position()
            games = await self.client.scard(f"{self.prefix}:games")
            heads = await self.client.hlen(f"{self.history}:heads")
            counts = {
                "ratewire_meta": 1,
                "ratings": await self.client.zcard(f"{self.prefix}:ids"),
                "game_summaries": games,
                "user_heads": max(0, heads - games),
                "global_head": 1,
                "rating_events": await self.client.xlen(f"{self.history}:events"),
                "token_revocations": await self.client.hlen(f"{self.prefix}:rev"),
                "audit_log": await self.client.xlen(f"{self.prefix}:audit"),
                "audit_head": 1,
                "webhooks": await self.client.zcard(f"{self.prefix}:webhooks"),
            }
        except (RedisError, OSError) as exc:
            raise self.failed(exc) from exc
        return Counts(counts)

    async def _position(self) -> tuple[int, int]:
        cursor = await self.client.get(f"{self.history}:cursor")
        audit = await self.client.hget(f"{self.prefix}:audit:head", "seq")
        return _int(cursor), _int(audit)

    async def rows(self, table: Table) -> AsyncIterator[Sequence[Row]]:
        reader = getattr(self, f"_{table.name}")
        try:
            async for batch in reader():
                yield batch
            if table.name == "webhooks" and await self._position() != self._mark:
                raise TransferError(
                    f"redis {self.description} changed while it was copied: stop its servers "
                    "and copy again"
                )
        except (RedisError, OSError) as exc:
            raise self.failed(exc) from exc

    async def _ratewire_meta(self) -> AsyncIterator[Sequence[Row]]:
        yield [("epoch", self.epoch)]

    async def _ids(self, key: str) -> AsyncIterator[list[bytes]]:
        low = b"-"
        while ids := await self.client.zrangebylex(key, low, b"+", start=0, num=BATCH_ROWS):
            yield ids
            low = b"(" + ids[-1]

    async def _ratings(self) -> AsyncIterator[Sequence[Row]]:
        async for ids in self._ids(f"{self.prefix}:ids"):
            pipe = self.client.pipeline(transaction=False)
            for rating_id in ids:
                pipe.hmget(
                    f"{self.prefix}:r:{rating_id.decode()}", "g", "u", "s", "c", "ca", "ua", "v"
                )
            found = await pipe.execute()
            yield [
                (i.decode(), g.decode(), u.decode(), int(s), None if c is None else c.decode(),
                 int(ca), int(ua), int(v))
                for i, (g, u, s, c, ca, ua, v) in zip(ids, found, strict=True)
            ]  # fmt: skip

    async def _game_summaries(self) -> AsyncIterator[Sequence[Row]]:
        games = sorted(await self.client.smembers(f"{self.prefix}:games"))
        for start in range(0, len(games), BATCH_ROWS):
            chunk = games[start : start + BATCH_ROWS]
            pipe = self.client.pipeline(transaction=False)
            for game in chunk:
                names = ("n", "t", "h1", "h2", "h3", "h4", "h5", "o")
                pipe.hmget(f"{self.prefix}:sum:{game.decode()}", *names)
            found = await pipe.execute()
            yield [
                (game.decode(), *(_int(v) for v in values))
                for game, values in zip(chunk, found, strict=True)
            ]

    async def _user_heads(self) -> AsyncIterator[Sequence[Row]]:
        batch: list[Row] = []
        async for topic, offset in self.client.hscan_iter(f"{self.history}:heads", count=1000):
            if topic.startswith(USER.encode()):
                batch.append((topic[len(USER) :].decode(), int(offset)))
                if len(batch) == BATCH_ROWS:
                    yield sorted(batch)
                    batch = []
        if batch:
            yield sorted(batch)

    async def _global_head(self) -> AsyncIterator[Sequence[Row]]:
        yield [(1, self._mark[0])]

    async def _stream(self, key: str) -> AsyncIterator[list[tuple[bytes, dict[bytes, bytes]]]]:
        low = "-"
        while entries := await self.client.xrange(key, low, "+", count=BATCH_ROWS):
            yield entries
            low = "(" + entries[-1][0].decode()

    async def _rating_events(self) -> AsyncIterator[Sequence[Row]]:
        async for entries in self._stream(f"{self.history}:events"):
            batch = []
            for _, entry in entries:
                event = orjson.loads(entry[b"e"])
                batch.append((
                    event["seq"], event["kind"], event["gameId"], event["userId"],
                    event["gameOffset"], event["userOffset"],
                    orjson.dumps(event["data"]).decode(), int(entry[b"a"]),
                ))  # fmt: skip
            yield batch

    async def _token_revocations(self) -> AsyncIterator[Sequence[Row]]:
        found = [
            Revocation.from_wire(orjson.loads(raw))
            for raw in await self.client.hvals(f"{self.prefix}:rev")
        ]
        yield sorted(
            (r.kind, r.value, round(r.revoked_at * 1000), round(r.expires_at * 1000),
             r.revoked_by, r.reason)
            for r in found
        )  # fmt: skip

    async def _audit_log(self) -> AsyncIterator[Sequence[Row]]:
        async for entries in self._stream(f"{self.prefix}:audit"):
            yield [
                (int(entry_id.split(b"-")[0]), int(f[b"at"]), f[b"act"].decode(), _text(f[b"who"]),
                 f[b"sc"].decode(), _text(f[b"ip"]), _text(f[b"rq"]), _text(f[b"rid"]),
                 f[b"d"].decode(), f[b"mac"].decode())
                for entry_id, f in entries
            ]  # fmt: skip

    async def _audit_head(self) -> AsyncIterator[Sequence[Row]]:
        seq, mac, pseq, pmac = await self.client.hmget(
            f"{self.prefix}:audit:head", "seq", "mac", "pseq", "pmac"
        )
        yield [(1, _int(seq), mac.decode(), _int(pseq), pmac.decode())]

    async def _webhooks(self) -> AsyncIterator[Sequence[Row]]:
        ids = await self.client.zrange(f"{self.prefix}:webhooks", 0, -1)
        raws = (
            await self.client.mget([f"{self.prefix}:webhook:{i.decode()}" for i in ids])
            if ids
            else []
        )
        batch = []
        for raw in raws:
            if raw is None:
                continue
            hook = orjson.loads(raw)
            hook["topics"] = orjson.dumps(hook["topics"]).decode()
            # A webhook stored before filters existed has no "filter": it has none.
            batch.append(tuple(hook.get(field) for field in WEBHOOK_FIELDS))
        yield batch


#: The SQL webhooks table's columns, each a field of the Redis store's JSON value (named
#: alike but for the filter: the column is not named ``filter``, a keyword in SQL).
WEBHOOK_COLUMNS = tuple(columns(BY_NAME["webhooks"]))
_FIELD_OF_COLUMN = {"event_filter": "filter"}
#: The Webhook field each of :data:`WEBHOOK_COLUMNS` holds, in the same order.
WEBHOOK_FIELDS = tuple(_FIELD_OF_COLUMN.get(column, column) for column in WEBHOOK_COLUMNS)
assert set(WEBHOOK_FIELDS) == set(_WEBHOOK_FIELDS)


class RedisTarget(_Redis):
    """An empty Redis store, written from rows."""

    async def open(self) -> None:
        try:
            epoch = await self.client.get(f"{self.prefix}:epoch")
            self.epoch = "" if epoch is None else epoch.decode()
            held = {
                "ratings": await self.client.zcard(f"{self.prefix}:ids"),
                "audit entries": await self.client.xlen(f"{self.prefix}:audit"),
                "revocations": await self.client.hlen(f"{self.prefix}:rev"),
                "webhooks": await self.client.zcard(f"{self.prefix}:webhooks"),
                "events": _int(await self.client.get(f"{self.history}:cursor")) if epoch else 0,
            }
        except (RedisError, OSError) as exc:
            raise self.failed(exc) from exc
        if any(held.values()):
            what = ", ".join(f"{n} {name}" for name, n in held.items() if n)
            raise TargetNotEmpty(
                f"redis {self.description} is not empty ({what}): copies and imports go into "
                "an empty store only; nothing was written"
            )

    async def load(self, batches: AsyncIterator[tuple[Table, Sequence[Row]]]) -> None:
        try:
            await self._delete_all()  # an empty store's seeds (an epoch, zero heads) give way
            async for table, rows in batches:
                pipe = self.client.pipeline(transaction=False)
                getattr(self, f"_{table.name}")(pipe, rows)
                await pipe.execute()
        except BaseException as exc:
            await self._delete_all()
            if isinstance(exc, (RedisError, OSError)):
                raise self.failed(exc) from exc
            raise

    async def _delete_all(self) -> None:
        async for keys in self._keys():
            await self.client.delete(*keys)

    async def _keys(self) -> AsyncIterator[list[bytes]]:
        batch = []
        async for key in self.client.scan_iter(match=f"{self.prefix}:*", count=1000):
            batch.append(key)
            if len(batch) == 1000:
                yield batch
                batch = []
        if batch:
            yield batch

    def _ratewire_meta(self, pipe: Any, rows: Sequence[Row]) -> None:
        for key, value in rows:
            if key == "epoch":
                self.epoch = value
                pipe.set(f"{self.prefix}:epoch", value)

    def _ratings(self, pipe: Any, rows: Sequence[Row]) -> None:
        p = self.prefix
        for rating_id, game, user, score, comment, created, updated, version in rows:
            fields = {"g": game, "u": user, "s": score, "ca": created, "ua": updated, "v": version}
            if comment is not None:
                fields["c"] = comment
            pipe.hset(f"{p}:r:{rating_id}", mapping=fields)
            pipe.hset(f"{p}:pair", f"{game}/{user}", rating_id)
            for key in (f"{p}:ids", f"{p}:ids:g:{game}", f"{p}:ids:u:{user}"):
                pipe.zadd(key, {rating_id: 0})

    def _game_summaries(self, pipe: Any, rows: Sequence[Row]) -> None:
        for game, count, total, h1, h2, h3, h4, h5, offset in rows:
            counters = {"n": count, "t": total, "o": offset}
            counters.update({f"h{s}": h for s, h in enumerate((h1, h2, h3, h4, h5), 1) if h})
            pipe.hset(f"{self.prefix}:sum:{game}", mapping=counters)
            pipe.sadd(f"{self.prefix}:games", game)
            pipe.hset(f"{self.history}:heads", GAME + game, offset)

    def _user_heads(self, pipe: Any, rows: Sequence[Row]) -> None:
        pipe.hset(f"{self.history}:heads", mapping={USER + user: offset for user, offset in rows})

    def _global_head(self, pipe: Any, rows: Sequence[Row]) -> None:
        for _, offset in rows:
            pipe.set(f"{self.history}:cursor", offset)

    def _rating_events(self, pipe: Any, rows: Sequence[Row]) -> None:
        h = self.history
        for seq, kind, game, user, game_offset, user_offset, data, at in rows:
            payload = (
                f'{{"seq":{seq},"kind":"{kind}","gameId":"{game}","userId":"{user}",'
                f'"gameOffset":{game_offset},"userOffset":{user_offset},"data":{data},"at":{at}}}'
            )  # the write script's layout, byte for byte
            gt, ut = GAME + game, USER + user
            entry = {
                "e": payload,
                "a": at,
                "gt": gt,
                "ut": ut,
                "go": game_offset,
                "uo": user_offset,
            }
            pipe.xadd(f"{h}:events", entry, id=f"{seq}-0")
            pipe.xadd(f"{h}:t:{gt}", {"e": payload, "a": at}, id=f"{game_offset}-0")
            pipe.xadd(f"{h}:t:{ut}", {"e": payload, "a": at}, id=f"{user_offset}-0")

    def _token_revocations(self, pipe: Any, rows: Sequence[Row]) -> None:
        for kind, value, revoked_at, expires_at, revoked_by, reason in rows:
            entry = Revocation(
                kind, value, revoked_at / 1000, expires_at / 1000, revoked_by, reason
            )
            pipe.hset(f"{self.prefix}:rev", entry.key, orjson.dumps(entry.to_wire()))

    def _audit_log(self, pipe: Any, rows: Sequence[Row]) -> None:
        for seq, at, action, actor, scopes, ip, request, rating_id, detail, mac in rows:
            pipe.xadd(f"{self.prefix}:audit", {
                "mac": mac, "at": at, "act": action, "who": actor or "", "sc": scopes,
                "ip": ip or "", "rq": request or "", "rid": rating_id or "", "d": detail,
            }, id=f"{seq}-0")  # fmt: skip

    def _audit_head(self, pipe: Any, rows: Sequence[Row]) -> None:
        for _, seq, mac, pruned_seq, pruned_mac in rows:
            head = {"seq": seq, "mac": mac, "pseq": pruned_seq, "pmac": pruned_mac}
            pipe.hset(f"{self.prefix}:audit:head", mapping=head)

    def _webhooks(self, pipe: Any, rows: Sequence[Row]) -> None:
        for row in rows:
            hook = dict(zip(WEBHOOK_FIELDS, row, strict=True))
            hook["topics"] = tuple(orjson.loads(hook["topics"]))
            webhook = Webhook(**hook)
            pipe.set(f"{self.prefix}:webhook:{webhook.id}", orjson.dumps(asdict(webhook)))
            pipe.zadd(f"{self.prefix}:webhooks", {webhook.id: webhook.created_at})
