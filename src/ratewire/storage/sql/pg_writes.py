"""PostgreSQL's rating writes, one statement each (data-modifying CTEs).

The portable write (``sql_statements``) is five statements: the rating row, the game's
counters, the user's head, the global head and the event. On SQLite they run in-process; on
PostgreSQL each is a round trip to the server while the batch holds the global head row, and
the round trips were the time of a write (py-spy: ratewire 90% idle under POST load). Here
the five are one statement, so a write is one round trip, and the audit log's head move and
its entries are one more per batch.

Every step after the rating row reads from the ``rating`` CTE: when the row is not written
(a create whose game/user pair exists: ``ON CONFLICT DO NOTHING``), nothing else is, and the
statement returns no row instead of failing. A failed statement would abort the whole
group-commit transaction; a row that is not there leaves the batch's other writes standing,
so batches need no savepoint per write (two round trips each).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ratewire.domain import SummaryDelta
from ratewire.storage.sql.execution import PgWriteConnection, StatementRunner

# $1..$10: the counters' deltas, the event's kind, payload and time; the rating CTE's
# parameters follow from $11. The global head is bumped last in the join.
_AFTER_RATING = """,
game AS (
    INSERT INTO game_summaries AS s
        (game_id, "count", total, h1, h2, h3, h4, h5, last_offset)
    SELECT game_id, $1::integer, $2::bigint, $3::integer, $4::integer, $5::integer,
           $6::integer, $7::integer, 1
    FROM rating
    ON CONFLICT (game_id) DO UPDATE SET
        "count" = s."count" + excluded."count", total = s.total + excluded.total,
        h1 = s.h1 + excluded.h1, h2 = s.h2 + excluded.h2, h3 = s.h3 + excluded.h3,
        h4 = s.h4 + excluded.h4, h5 = s.h5 + excluded.h5, last_offset = s.last_offset + 1
    RETURNING s.last_offset
),
author AS (
    INSERT INTO user_heads AS u (user_id, last_offset)
    SELECT user_id, 1 FROM rating
    ON CONFLICT (user_id) DO UPDATE SET last_offset = u.last_offset + 1
    RETURNING u.last_offset
),
head AS (
    UPDATE global_head SET last_offset = last_offset + 1
    WHERE id = 1 AND EXISTS (SELECT FROM rating)
    RETURNING last_offset
)
INSERT INTO rating_events
    (seq, kind, game_id, user_id, game_offset, user_offset, payload, occurred_at)
SELECT head.last_offset, $8::varchar, rating.game_id, rating.user_id, game.last_offset,
       author.last_offset, $9::text, $10::bigint
FROM rating, game, author, head
RETURNING seq, game_offset, user_offset
"""

CREATE = (
    """WITH rating AS (
    INSERT INTO ratings
        (id, game_id, user_id, score, comment, created_at, updated_at, version)
    VALUES ($11, $12, $13, $14, $15, $16, $17, $18)
    ON CONFLICT DO NOTHING
    RETURNING game_id, user_id
)"""
    + _AFTER_RATING
)

UPDATE = (
    """WITH rating AS (
    UPDATE ratings SET score = $12, comment = $13, updated_at = $14, version = $15
    WHERE id = $11
    RETURNING game_id, user_id
)"""
    + _AFTER_RATING
)

DELETE = (
    """WITH rating AS (
    DELETE FROM ratings WHERE id = $11
    RETURNING game_id, user_id
)"""
    + _AFTER_RATING
)

#: Moves the audit head from ($3, $4) to ($1, $2) and inserts the entries (one array per
#: column) only if it moved: "INSERT 0 0" when another instance extended the chain first.
AUDIT_FLUSH = """WITH moved AS (
    UPDATE audit_head SET seq = $1, mac = $2
    WHERE id = 1 AND seq = $3 AND mac = $4
    RETURNING id
)
INSERT INTO audit_log
    (seq, at_ms, action, actor, scopes, ip, request_id, rating_id, detail, mac)
SELECT * FROM unnest(
    $5::bigint[], $6::bigint[], $7::varchar[], $8::varchar[], $9::varchar[], $10::varchar[],
    $11::varchar[], $12::varchar[], $13::text[], $14::varchar[]
)
WHERE EXISTS (SELECT FROM moved)
"""


def write_rating(
    conn: PgWriteConnection,
    statement: str,
    delta: SummaryDelta,
    kind: str,
    payload: str,
    occurred_at_ms: int,
    rating_values: Sequence[Any],
) -> tuple[int, int, int] | None:
    """Run one of :data:`CREATE`, :data:`UPDATE`, :data:`DELETE` (``rating_values``: the
    rating CTE's parameters, from ``$11``). The event's global, game and user offsets, or
    None when the rating row was not written (nothing was)."""
    row = StatementRunner.pg_fetchrow(
        conn,
        statement,
        (delta.count, delta.total, *delta.histogram, kind, payload, occurred_at_ms, *rating_values),
    )
    if row is None:
        return None
    return int(row[0]), int(row[1]), int(row[2])
