"""The SQL stores (SQLite, PostgreSQL, MySQL/MariaDB) on SQLAlchemy Core: ``store`` (the
writes and the store itself), ``reads``, ``batches`` (group commit), ``schema``, ``dialects``,
``execution`` (statements on the drivers), ``pg_writes`` (PostgreSQL's one-statement writes),
``audit`` and ``webhooks``."""

from ratewire.storage.sql.dialects import async_url
from ratewire.storage.sql.schema import SCHEMA_VERSION, metadata
from ratewire.storage.sql.store import SqlStore

__all__ = ["SCHEMA_VERSION", "SqlStore", "async_url", "metadata"]
