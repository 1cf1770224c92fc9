"""When SQLite's write-ahead log is copied back into the database file.

By default SQLite checkpoints inside a ``COMMIT``: the write that takes the log past 1,000
pages copies them all into the database file and fsyncs it before it returns. A rating write
touches about 20 pages, so one write in 50 waited for a checkpoint, several milliseconds (the
tail of the ``commit`` stage). Here a commit checkpoints only as a safety net
(:data:`SAFETY_NET_PAGES`); the writer thread checkpoints instead when it has nothing else to
do: after a batch, if no write is queued and a few transactions were committed since the last
one. No write is waiting for it then, and no commit can append to the log while it copies, so
the copy completes and the next write starts the log from its beginning (a checkpoint on a
connection of its own, concurrent with the commits, never caught up with them and let the log
grow to the safety net: measured).

Under a load that never leaves the writer idle, it checkpoints between two batches every
:attr:`IdleCheckpoints.BUSY_AFTER` transactions: the batch queued then waits for that copy.
"""

from __future__ import annotations

import sqlite3

#: The connections' ``wal_autocheckpoint``: a commit checkpoints only if the writer thread's
#: own checkpoints fell this far behind (about 40 MB of log).
SAFETY_NET_PAGES = 10_000


class IdleCheckpoints:
    """The writer thread's checkpoint policy (see the module's docstring)."""

    #: Transactions since the last checkpoint that make one due when the writer is idle
    #: (about 270 pages of log for rating writes). Fewer copy the same hot pages (the heads,
    #: the summaries) into the database file more often: at 8, 2.8 page writes to the file
    #: per rating instead of SQLite's 0.8, and two more fsyncs every 8 writes.
    IDLE_AFTER = 16
    #: ... and when it is not (the log stays far below the safety net).
    BUSY_AFTER = 200

    def __init__(self) -> None:
        self.since_last = 0
        #: Checkpoints run, and those that readers kept from copying the whole log.
        self.passes = 0
        self.incomplete = 0

    def committed(self) -> None:
        """A write transaction committed."""
        self.since_last += 1

    def due(self, *, idle: bool) -> bool:
        """Whether the writer should checkpoint now (``idle``: no write is queued)."""
        return self.since_last >= (self.IDLE_AFTER if idle else self.BUSY_AFTER)

    def run(self, db: sqlite3.Connection) -> None:
        """One ``PASSIVE`` checkpoint on the writer's connection (blocking: the writer thread
        runs it)."""
        self.since_last = 0
        busy, in_log, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.passes += 1
        if busy or copied < in_log:
            self.incomplete += 1
