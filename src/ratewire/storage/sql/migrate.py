"""Schema migrations of the SQL stores (Alembic): which schema a database has, and bringing it
to this ratewire's, once, under a lock.

The scripts live in ``migrations/versions`` inside the package. A new, empty database is
created whole from the current schema and stamped with the newest revision (Alembic's advice
for new databases); a database from before migrations existed (0.1.0) has no version table
and is stamped with the baseline first. Every upgrade runs in the caller's write transaction
after taking a lock that instances sharing the database all take: a PostgreSQL advisory lock
held to the commit (PostgreSQL's DDL is transactional, so an upgrade lands whole or not at
all), MariaDB's ``GET_LOCK``, and on SQLite the write lock (``BEGIN IMMEDIATE``) that every
write transaction of the store holds already.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from ratewire.storage.base import StorageError, StorageUnavailable
from ratewire.storage.sql.schema import metadata

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).with_name("migrations")
#: Alembic's version table, named for ratewire: a database may host another app's Alembic.
VERSION_TABLE = "ratewire_alembic_version"
#: The schema of ratewire 0.1.0, the last release without migrations.
BASELINE = "0001"
#: pg_advisory_xact_lock's key: "ratewire" as a big-endian integer.
PG_LOCK_KEY = int.from_bytes(b"ratewire", "big")
#: How long an instance waits for another one's migration before it gives up.
LOCK_WAIT_SECONDS = 300
UPGRADE_COMMAND = "ratewire db upgrade"

log = logging.getLogger("ratewire")


class SchemaBehind(StorageError):
    """The database's schema is older than this ratewire's and migrating was not allowed."""


class SchemaAhead(StorageError):
    """The database was migrated by a newer ratewire."""


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a database's schema stands. ``current`` is None for an empty database;
    ``stamped`` is False for one from before migrations (it has the baseline's tables)."""

    current: str | None
    head: str
    pending: tuple[str, ...]
    stamped: bool = True

    @property
    def up_to_date(self) -> bool:
        return self.current is not None and not self.pending

    def describe(self) -> str:
        """One line for ``ratewire db current``."""
        if self.current is None:
            return f"empty database (this ratewire creates schema revision {self.head})"
        if not self.pending:
            return f"schema revision {self.current} (head: up to date)"
        before = "" if self.stamped else ", from before migrations"
        return (
            f"schema revision {self.current}{before}; {len(self.pending)} migration(s) to "
            f"revision {self.head} pending: run `{UPGRADE_COMMAND}`"
        )


@dataclass(frozen=True, slots=True)
class SchemaChange:
    """What :func:`upgrade` did: ``applied`` is empty when the schema was up to date."""

    before: str | None
    after: str
    applied: tuple[str, ...]

    @property
    def changed(self) -> bool:
        """The schema was created or migrated (not found up to date)."""
        return self.before is None or bool(self.applied)

    def describe(self) -> str:
        if self.before is None:
            return f"created the schema at revision {self.after}"
        if not self.applied:
            return f"schema revision {self.after} is up to date"
        return (
            f"upgraded the schema from revision {self.before} to {self.after} "
            f"({len(self.applied)} migration(s))"
        )


@cache
def _scripts() -> ScriptDirectory:
    # Alembic says at INFO which of its plugins it loads, as it is imported: not news to a
    # user. Its "Running upgrade A -> B" lines (alembic.runtime.migration) stay.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS))


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None, f"no migrations in {MIGRATIONS}"
    return head


def _config(conn: Connection) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    return config


def schema_state(conn: Connection) -> SchemaState:
    """Read where ``conn``'s database stands; :class:`SchemaAhead` for a newer schema."""
    head = head_revision()
    from alembic.runtime.migration import MigrationContext
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    current = MigrationContext.configure(
        conn, opts={"version_table": VERSION_TABLE}
    ).get_current_revision()
    stamped = current is not None
    if current is None and inspect(conn).has_table("ratings"):
        current = BASELINE
    if current is None:
        return SchemaState(None, head, (), stamped=False)
    try:
        between = list(_scripts().iterate_revisions(head, current))
    except (CommandError, RevisionError):  # a revision this ratewire's scripts do not have
        raise SchemaAhead(
            f"schema revision {current} is newer than this ratewire (it knows up to {head}): "
            "upgrade ratewire"
        ) from None
    pending = tuple(script.revision for script in reversed(between))
    return SchemaState(current, head, pending, stamped=stamped)


def upgrade(conn: Connection, dialect: str) -> SchemaChange:
    """Bring the schema to the head, inside ``conn``'s transaction and the migration lock."""
    from alembic import command

    with _migration_lock(conn, dialect):
        state = schema_state(conn)  # under the lock: another instance may have done it
        if state.current is None:
            metadata.create_all(conn)
            command.stamp(_config(conn), state.head)
            change = SchemaChange(None, state.head, ())
        else:
            if not state.stamped:
                command.stamp(_config(conn), BASELINE)
            if state.pending:
                command.upgrade(_config(conn), state.head)
            change = SchemaChange(state.current, state.head, state.pending)
    if change.changed:
        log.info("storage: %s", change.describe())
    return change


def refuse_if_behind(state: SchemaState) -> None:
    """Raise :class:`SchemaBehind`, naming the command to run, unless ``state`` is up to date
    (``serve --no-migrate``, ``storage.migrate: false``)."""
    if state.up_to_date:
        return
    if state.current is None:
        what = f"the database is empty (no schema yet); run `{UPGRADE_COMMAND}` to create it"
    else:
        what = state.describe()
    raise SchemaBehind(f"{what} (migrating at start is off: storage.migrate is false)")


@contextmanager
def _migration_lock(conn: Connection, dialect: str) -> Iterator[None]:
    if dialect == "postgresql":
        conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_WAIT_SECONDS}s'"))
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
        yield  # released by the transaction's end
    elif dialect == "mysql":
        name = "CONCAT('ratewire.schema.', DATABASE())"
        got = conn.scalar(text(f"SELECT GET_LOCK({name}, {LOCK_WAIT_SECONDS})"))
        if got != 1:
            raise StorageUnavailable(
                f"mysql: another instance held the migration lock for {LOCK_WAIT_SECONDS} s"
            )
        # MariaDB warns that it ignores the name of the version table's primary key, and
        # asyncmy logs every server warning: not a user's concern.
        driver_log = logging.getLogger("asyncmy")
        level = driver_log.level
        driver_log.setLevel(logging.ERROR)
        try:
            yield
            # GET_LOCK outlives transactions: commit the new revision before letting the next
            # instance in, or it reads the old one and migrates again (seen in CI: two
            # concurrent `db upgrade`s both ran 0001 -> 0002). SQLAlchemy's own COMMIT at
            # the end then finds nothing to do.
            conn.exec_driver_sql("COMMIT")
        finally:
            driver_log.setLevel(level)
            conn.scalar(text(f"SELECT RELEASE_LOCK({name})"))
    else:
        yield  # SQLite: the store's write transactions begin IMMEDIATE (the write lock)
