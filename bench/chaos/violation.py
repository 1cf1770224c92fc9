"""What the chaos checker reports: one place where the promise did not hold."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Violation:
    """``rule`` names the rule broken (bench/chaos/checker.py lists them); ``excerpt`` holds
    the recorded items that show it."""

    rule: str
    detail: str
    excerpt: list[Any] = field(default_factory=list)
