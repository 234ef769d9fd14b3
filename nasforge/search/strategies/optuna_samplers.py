"""Optuna's samplers driving the same space: each choice point becomes a trial suggestion, in discovery
order (define-by-run), so conditional spaces work as they are. Constraint violations reach samplers that
support them (TPE, GP, NSGA-II) through ``Trial.set_constraint``, which the study runner calls (Optuna 5
deprecates the samplers' ``constraints_func``)."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

from nasforge.search.space import Assignment
from nasforge.search.strategies.base import Strategy


class OptunaStrategy(Strategy):
    """Decisions come from the Optuna sampler through the trial (``ask`` proposes nothing)."""

    sampler_name: ClassVar[str] = ""

    def ask(self) -> Assignment | None:
        return None

    def sampler(self) -> Any:
        import optuna

        s = optuna.samplers
        with warnings.catch_warnings():  # TPE's ``group`` (needed for conditional spaces) is "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if self.sampler_name == "tpe":
                return s.TPESampler(seed=self.seed, multivariate=True, group=True, n_startup_trials=10)
            if self.sampler_name == "cmaes":
                # CMA-ES handles the numeric choices; categorical ones fall back to independent sampling
                return s.CmaEsSampler(seed=self.seed, warn_independent_sampling=False, n_startup_trials=10)
            if self.sampler_name == "gp":
                return s.GPSampler(seed=self.seed, n_startup_trials=10)
            return s.NSGAIISampler(seed=self.seed, population_size=20)


class TPE(OptunaStrategy):
    name = "tpe"
    sampler_name = "tpe"


class CmaEs(OptunaStrategy):
    name = "cmaes"
    sampler_name = "cmaes"
    multi_objective = False


class GP(OptunaStrategy):
    name = "gp"
    sampler_name = "gp"


class OptunaNSGA2(OptunaStrategy):
    name = "optuna-nsga2"
    sampler_name = "nsga2"
