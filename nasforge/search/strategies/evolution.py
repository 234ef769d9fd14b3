"""Regularized (aging) evolution (Real et al. 2019), extended to several objectives by Pareto rank.

The population is the ``population`` most recent successful candidates; a child is the best of a random
``sample`` of them, crossed over with another tournament winner with probability ``crossover`` and then
mutated in one decision. Mutation and crossover go through the space, so they respect its structure.
"""

from __future__ import annotations

from typing import Any

from nasforge.search.space import Assignment, Space
from nasforge.search.strategies.base import Result, Strategy, fitness_key


class RegularizedEvolution(Strategy):
    name = "evolution"

    def __init__(self, space: Space, directions: list[str], seed: int = 0, population: int = 20,
                 sample: int = 5, crossover: float = 0.2, **options: Any) -> None:
        super().__init__(space, directions, seed)
        self.population_size = population
        self.sample_size = sample
        self.crossover_rate = crossover

    def population(self) -> list[Result]:
        alive = [r for r in self.history if r.values is not None]
        return alive[-self.population_size:]

    def tournament(self, population: list[Result]) -> Result:
        contestants = self.rng.sample(population, min(self.sample_size, len(population)))
        keys = fitness_key([self.signed(c.values or []) for c in contestants], [c.feasible for c in contestants])
        return contestants[min(range(len(contestants)), key=keys.__getitem__)]

    def ask(self) -> Assignment:
        population = self.population()
        if len(population) < self.population_size:
            return self.space.sample(self.rng)
        parent = self.tournament(population).assignment
        if self.rng.random() < self.crossover_rate:
            parent = self.space.crossover(parent, self.tournament(population).assignment, self.rng)
        return self.space.mutate(parent, self.rng)
