"""Per-game summary: count, mean, histogram 1..5 and a Bayesian mean."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class GameSummary:
    """Counters kept incrementally by storage in the same transaction as each write.

    ``offset`` is the game topic's last offset, so a snapshot names the point it reflects.
    """

    game_id: str
    count: int
    total: int
    histogram: tuple[int, int, int, int, int]
    offset: int = 0

    @classmethod
    def empty(cls, game_id: str) -> GameSummary:
        return cls(game_id, 0, 0, (0, 0, 0, 0, 0))

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def bayesian_mean(self, prior_mean: float, prior_weight: float) -> float | None:
        """``(C*m + sum) / (C + n)``: a mean pulled toward the prior while ``n`` is small."""
        denominator = prior_weight + self.count
        if denominator == 0:
            return None
        return (prior_weight * prior_mean + self.total) / denominator

    def to_wire(self, prior_mean: float, prior_weight: float) -> dict[str, Any]:
        mean = self.mean
        bayesian = self.bayesian_mean(prior_mean, prior_weight)
        return {
            "gameId": self.game_id,
            "count": self.count,
            "mean": None if mean is None else round(mean, 6),
            "histogram": {str(score): n for score, n in enumerate(self.histogram, start=1)},
            "bayesianMean": None if bayesian is None else round(bayesian, 6),
        }


@dataclass(frozen=True, slots=True)
class SummaryDelta:
    """How one change moves a game's counters: what every storage backend adds in its write."""

    count: int
    total: int
    histogram: tuple[int, int, int, int, int]

    @classmethod
    def between(cls, old_score: int | None, new_score: int | None) -> SummaryDelta:
        """The delta from a rating with ``old_score`` (None: absent) to ``new_score``."""
        histogram = [0, 0, 0, 0, 0]
        count = total = 0
        if old_score is not None:
            histogram[old_score - 1] -= 1
            count -= 1
            total -= old_score
        if new_score is not None:
            histogram[new_score - 1] += 1
            count += 1
            total += new_score
        return cls(
            count, total, (histogram[0], histogram[1], histogram[2], histogram[3], histogram[4])
        )

    def applied_to(self, summary: GameSummary, offset: int) -> GameSummary:
        """``summary`` after this delta, at game-topic ``offset``."""
        histogram = tuple(a + b for a, b in zip(summary.histogram, self.histogram, strict=True))
        return GameSummary(
            summary.game_id,
            summary.count + self.count,
            summary.total + self.total,
            (histogram[0], histogram[1], histogram[2], histogram[3], histogram[4]),
            offset,
        )
