"""How well a supernet ranks its subnets: supernet-estimated vs stand-alone accuracy over a sample.

A one-shot search is only as good as the order in which the supernet's inherited weights put subnets. The
check SPOS (Section 4.2), BossNAS and NAS-Bench-201's one-shot study report: take K random subnets, score
each with inherited weights (after BatchNorm recalibration for that subnet alone, as SPOS does before every
evaluation), train each from scratch with the same short recipe the multi-trial engine uses, and compare the
two rankings: Kendall's tau (pairs ordered alike minus pairs ordered differently, over all pairs) and
Spearman's rho (Pearson correlation of the ranks), both from ``scipy.stats``. A tau near 0 means the
supernet's preferences say nothing about the stand-alone networks.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Callable

from scipy import stats
from torch import nn

from nasforge.search.data import Dataset
from nasforge.search.oneshot.spos import (CALIBRATION_BATCH_SIZE, CALIBRATION_BATCHES, MAX_DRAWS, assignment_key,
                                          calibration_batches, estimate_accuracy)
from nasforge.search.space import Assignment, Space
from nasforge.search.training import Trainer


@dataclass
class RankCorrelation:
    """The sample, both accuracies of each member, and the two rank correlations with their p-values
    (NaN when one of the two lists is constant: no ranking to compare)."""

    assignments: list[Assignment]
    supernet_accuracy: list[float]
    standalone_accuracy: list[float]
    kendall_tau: float
    kendall_p: float
    spearman_rho: float
    spearman_p: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def sample_subnets(space: Space, k: int, seed: int) -> list[Assignment]:
    """``k`` members with distinct decisions, uniform at each choice point (fewer only if the space is
    smaller than ``k`` or mostly repeats)."""
    rng = random.Random(seed)
    chosen: dict[str, Assignment] = {}
    for _ in range(MAX_DRAWS * k):
        if len(chosen) >= k:
            break
        assignment = space.sample(rng)
        chosen.setdefault(assignment_key(assignment), assignment)
    return list(chosen.values())


def correlate(supernet_accuracy: list[float], standalone_accuracy: list[float]) -> tuple[float, ...]:
    """(tau, p, rho, p) of two paired lists; NaN where a list is constant (scipy warns and gives NaN)."""
    if len(set(supernet_accuracy)) < 2 or len(set(standalone_accuracy)) < 2:
        return (math.nan,) * 4
    tau = stats.kendalltau(supernet_accuracy, standalone_accuracy)
    rho = stats.spearmanr(supernet_accuracy, standalone_accuracy)
    return float(tau.statistic), float(tau.pvalue), float(rho.statistic), float(rho.pvalue)


def rank_correlation(space: Space, supernet: nn.Module, dataset: Dataset, trainer: Trainer, k: int = 10,
                     seed: int = 0, batches: int = CALIBRATION_BATCHES, batch_size: int = CALIBRATION_BATCH_SIZE,
                     on_subnet: Callable[[int, Assignment, float, float], None] | None = None) -> RankCorrelation:
    """Score ``k`` random subnets of a trained single-path ``supernet`` and train each alone with
    ``trainer`` (seeded: one number per network); ``on_subnet(i, assignment, estimated, standalone)``
    reports progress."""
    supernet.set_mode("single_path")  # type: ignore[operator]
    calibration = calibration_batches(dataset, batches, batch_size, seed)
    sample = sample_subnets(space, k, seed)
    estimated, standalone = [], []
    for i, assignment in enumerate(sample):
        estimated.append(estimate_accuracy(supernet, assignment, dataset, calibration))
        standalone.append(trainer(space.concrete(assignment))["accuracy"])
        if on_subnet:
            on_subnet(i, assignment, estimated[-1], standalone[-1])
    return RankCorrelation(sample, estimated, standalone, *correlate(estimated, standalone))
