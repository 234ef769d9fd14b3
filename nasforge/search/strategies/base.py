"""The ask/tell interface every search strategy implements.

A strategy proposes decisions (``ask``) and learns from results (``tell``); the study runner owns
evaluation, storage and resumption. Optuna-driven strategies propose nothing themselves: their sampler
decides each choice point through the trial (``ask`` returns None), and ``sampler()`` gives it to the study.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nasforge.search.space import Assignment, Space


@dataclass
class Result:
    """One evaluated candidate as a strategy sees it."""

    assignment: Assignment
    values: list[float] | None   # None: the candidate failed (does not build, does not train)
    feasible: bool = True


class Strategy:
    """Base class: ``directions`` are "minimize"/"maximize" per objective."""

    name: ClassVar[str] = ""
    multi_objective: ClassVar[bool] = True

    def __init__(self, space: Space, directions: list[str], seed: int = 0, **options: Any) -> None:
        self.space = space
        self.directions = directions
        self.rng = random.Random(seed)
        self.seed = seed
        self.history: list[Result] = []

    def reseed(self, seed: int) -> None:
        """Start a new random stream (a resumed search must not repeat the first run's proposals)."""
        self.seed = seed
        self.rng = random.Random(seed)

    def ask(self) -> Assignment | None:
        raise NotImplementedError

    def tell(self, result: Result) -> None:
        self.history.append(result)

    def sampler(self) -> Any:
        """The Optuna sampler to record (and, for Optuna strategies, to decide) trials with."""
        import optuna

        return optuna.samplers.RandomSampler(seed=self.seed)

    # -- helpers shared by population-based strategies ------------------------------------------------
    def signed(self, values: list[float]) -> list[float]:
        """Values turned so that smaller is better for every objective."""
        return [v if d == "minimize" else -v for v, d in zip(values, self.directions)]


def dominates(a: list[float], b: list[float]) -> bool:
    """Pareto dominance on minimized values."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def nondominated_ranks(points: list[list[float]]) -> list[int]:
    """Front index of each point (0 = Pareto front), by repeated peeling."""
    ranks = [-1] * len(points)
    remaining = set(range(len(points)))
    rank = 0
    while remaining:
        front = {i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining if j != i)}
        for i in front:
            ranks[i] = rank
        remaining -= front
        rank += 1
    return ranks


def crowding(points: list[list[float]], members: list[int]) -> dict[int, float]:
    """NSGA-II crowding distance of ``members`` within their front."""
    dist = {i: 0.0 for i in members}
    if len(members) <= 2:
        return {i: float("inf") for i in members}
    for k in range(len(points[members[0]])):
        ordered = sorted(members, key=lambda i: points[i][k])
        lo, hi = points[ordered[0]][k], points[ordered[-1]][k]
        dist[ordered[0]] = dist[ordered[-1]] = float("inf")
        if hi == lo:
            continue
        for a, b, c in zip(ordered, ordered[1:], ordered[2:]):
            dist[b] += (points[c][k] - points[a][k]) / (hi - lo)
    return dist


def fitness_key(points: list[list[float]], feasible: list[bool]) -> list[tuple[int, int, float]]:
    """Sort keys (lower is better): infeasible last, then Pareto rank, then less crowded first."""
    ranks = nondominated_ranks(points)
    keys = []
    for rank in set(ranks):
        members = [i for i, r in enumerate(ranks) if r == rank]
        for i, d in crowding(points, members).items():
            keys.append((i, (0 if feasible[i] else 1, rank, -d)))
    keys.sort()
    return [k for _, k in keys]


@dataclass
class Population:
    """Evaluated candidates usable as parents (failed ones are not)."""

    members: list[Result] = field(default_factory=list)

    def points(self, strategy: Strategy) -> list[list[float]]:
        return [strategy.signed(m.values or []) for m in self.members]
