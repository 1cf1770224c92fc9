"""The development secret: ``ratewire serve --dev`` (and ``make run``) sign tokens with a random
secret generated once and kept in ``./.ratewire-dev-secret``, which ``ratewire token`` reads
too, so a local trial never runs on a guessable example secret."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

DEV_SECRET_FILE = Path(".ratewire-dev-secret")


def read_dev_secret(path: Path = DEV_SECRET_FILE) -> str | None:
    """The kept development secret, if there is one."""
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return secret or None


def dev_secret(path: Path = DEV_SECRET_FILE) -> tuple[str, bool]:
    """The development secret, created (readable by this user only) if missing; and whether it
    was created now."""
    existing = read_dev_secret(path)
    if existing is not None:
        return existing, False
    secret = secrets.token_urlsafe(48)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(secret + "\n")
    return secret, True
