"""Optional drivers, shipped as extras of the package.

``pip install ratewire`` runs the embedded default (SQLite, in-process broker); the drivers
for the other backends come with ``ratewire[postgresql]``, ``[mysql]``, ``[redis]``,
``[nats]`` and ``[mcp]``. A start that needs a missing one stops with one line naming the
extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util

#: The modules each extra brings (what must be importable for it to work).
EXTRA_MODULES = {
    "postgresql": ("asyncpg",),
    "mysql": ("asyncmy",),
    "redis": ("redis",),
    "nats": ("nats",),
    "mcp": ("mcp",),
}


class MissingExtra(RuntimeError):
    """A feature was asked for whose driver is not installed; the message names the extra."""


def missing(extra: str) -> str | None:
    """The first module of ``extra`` that cannot be imported, or None if all can."""
    for module in EXTRA_MODULES[extra]:
        if importlib.util.find_spec(module) is None:
            return module
    return None


def require(extra: str, purpose: str) -> None:
    """Raise :class:`MissingExtra` naming ``extra`` if its driver is not installed."""
    module = missing(extra)
    if module is not None:
        raise MissingExtra(
            f"{purpose} needs the {module!r} package, which is not installed: "
            f"pip install 'ratewire[{extra}]'"
        )
