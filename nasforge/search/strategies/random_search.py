"""Random search: every choice point uniform, in discovery order (the baseline every strategy must beat)."""

from __future__ import annotations

from nasforge.search.space import Assignment
from nasforge.search.strategies.base import Strategy


class RandomSearch(Strategy):
    name = "random"

    def ask(self) -> Assignment:
        return self.space.sample(self.rng)
