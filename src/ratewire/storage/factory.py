"""Build the configured store."""

from __future__ import annotations

from ratewire import extras
from ratewire.config import StorageSettings
from ratewire.storage.base import RatingStore


class UnsupportedBackend(ValueError):
    """The configured storage or broker backend is not available in this build."""


def open_store(settings: StorageSettings) -> RatingStore:
    """The store ``settings`` describe (not started: call ``await store.start()``)."""
    if settings.backend == "memory":
        from ratewire.storage.memory import MemoryStore

        return MemoryStore()
    if settings.backend in ("postgresql", "mysql", "redis"):
        try:
            extras.require(settings.backend, f"storage.backend: {settings.backend}")
        except extras.MissingExtra as exc:
            raise UnsupportedBackend(str(exc)) from None
    if settings.backend in ("sqlite", "postgresql", "mysql"):
        from ratewire.storage.sql import SqlStore

        return SqlStore(
            settings.resolved_url(),
            sqlite_synchronous=settings.sqlite_synchronous,
            migrate=settings.migrate,
        )
    if settings.backend == "redis":
        from ratewire.storage.redis.store import RedisStore

        return RedisStore(settings.resolved_url())
    raise UnsupportedBackend(
        f"storage.backend: {settings.backend!r} is not available; "
        "use memory, sqlite, postgresql, mysql or redis"
    )
