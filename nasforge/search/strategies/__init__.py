"""Search strategies behind one ask/tell interface (see ``base.py``); ``STRATEGIES`` maps CLI names."""

from nasforge.search.strategies.base import Result, Strategy
from nasforge.search.strategies.evolution import RegularizedEvolution
from nasforge.search.strategies.nsga2 import NSGA2
from nasforge.search.strategies.optuna_samplers import GP, TPE, CmaEs, OptunaNSGA2
from nasforge.search.strategies.random_search import RandomSearch

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (RandomSearch, RegularizedEvolution, NSGA2, TPE, CmaEs, GP, OptunaNSGA2)
}

__all__ = ["STRATEGIES", "Result", "Strategy"]
