"""What a rate limiter answers for one request."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateDecision:
    """Whether a request may go on, and the numbers for ``RateLimit-*`` / ``Retry-After``."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
