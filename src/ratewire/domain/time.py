"""Epoch milliseconds, the one form in which ratewire stores and sends a moment.

Exact integer arithmetic on ``timedelta``: float seconds (``int(moment.timestamp() * 1000)``)
put some millisecond-exact moments one millisecond early (2004-03-15 07:55:47.472 UTC gives
...471), because ``timestamp()`` is a binary float and ``int`` truncates.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the Unix epoch, exactly (rounded down to the millisecond).
    ``moment`` must carry a zone: a naive one raises ``TypeError``."""
    return (moment - EPOCH) // _MS


def from_epoch_ms(ms: int) -> datetime:
    """The UTC moment ``ms`` milliseconds after the Unix epoch: the inverse of
    :func:`epoch_ms` for every millisecond-exact moment."""
    return EPOCH + ms * _MS
