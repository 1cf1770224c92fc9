"""Pluggable storage: the protocol, its errors and :func:`open_store`."""

from ratewire.storage.base import (
    AlreadyExists,
    NotFound,
    RatingStore,
    StorageError,
    StorageUnavailable,
    VersionMismatch,
    WriteResult,
)
from ratewire.storage.factory import open_store

__all__ = [
    "AlreadyExists",
    "NotFound",
    "RatingStore",
    "StorageError",
    "StorageUnavailable",
    "VersionMismatch",
    "WriteResult",
    "open_store",
]
