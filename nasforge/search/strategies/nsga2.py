"""NSGA-II (Deb et al. 2002) over a space: generations of ``population`` children by binary tournament on
(rank, crowding), crossover and mutation through the space; survivors chosen from parents and children."""

from __future__ import annotations

from typing import Any

from nasforge.search.space import Assignment, Space
from nasforge.search.strategies.base import Result, Strategy, fitness_key


class NSGA2(Strategy):
    name = "nsga2"

    def __init__(self, space: Space, directions: list[str], seed: int = 0, population: int = 20,
                 crossover: float = 0.9, **options: Any) -> None:
        super().__init__(space, directions, seed)
        self.size = population
        self.crossover_rate = crossover
        self.parents: list[Result] = []
        self.pending: list[Result] = []

    def tell(self, result: Result) -> None:
        super().tell(result)
        if result.values is not None:
            self.pending.append(result)
        if len(self.pending) >= self.size:  # a generation is complete: keep the best of both
            pool = self.parents + self.pending
            keys = fitness_key([self.signed(r.values or []) for r in pool], [r.feasible for r in pool])
            order = sorted(range(len(pool)), key=keys.__getitem__)
            self.parents = [pool[i] for i in order[: self.size]]
            self.pending = []

    def pick(self) -> Result:
        a, b = self.rng.sample(self.parents, 2) if len(self.parents) > 1 else (self.parents[0],) * 2
        keys = fitness_key([self.signed(r.values or []) for r in (a, b)], [a.feasible, b.feasible])
        return a if keys[0] <= keys[1] else b

    def ask(self) -> Assignment:
        if not self.parents:
            return self.space.sample(self.rng)
        child = self.pick().assignment
        if self.rng.random() < self.crossover_rate:
            child = self.space.crossover(child, self.pick().assignment, self.rng)
        return self.space.mutate(child, self.rng)
