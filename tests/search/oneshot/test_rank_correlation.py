"""Rank correlation between supernet-estimated and stand-alone accuracy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import nasforge
from nasforge.search.data import load_dataset
from nasforge.search.oneshot.rank_correlation import correlate, rank_correlation, sample_subnets
from nasforge.search.oneshot.spos import assignment_key
from nasforge.search.oneshot.supernet import build_supernet
from nasforge.search.space import Space
from nasforge.search.training import Trainer

ROOT = Path(__file__).resolve().parents[3]
NB201 = ROOT / "specs" / "spaces" / "nas_bench_201.yaml"


def test_correlations_of_known_rankings():
    # one swapped pair of 4: 5 concordant, 1 discordant pair -> tau 4/6; rank differences 0,0,1,1 -> rho 0.8
    tau, _, rho, _ = correlate([0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.8, 0.7])
    assert tau == pytest.approx(4 / 6)
    assert rho == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert correlate([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])[0] == pytest.approx(-1.0)


def test_a_constant_list_has_no_ranking():
    assert all(math.isnan(v) for v in correlate([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]))


def test_the_sample_is_distinct_and_seeded():
    space = Space(nasforge.load(NB201, C=4, N=1, resolution=8))
    sample = sample_subnets(space, 12, seed=0)
    assert len(sample) == 12 == len({assignment_key(a) for a in sample})
    assert sample == sample_subnets(space, 12, seed=0) != sample_subnets(space, 12, seed=1)


def test_rank_correlation_of_a_supernet_on_digits():
    """The plumbing on tiny settings: every sampled subnet gets an inherited-weights accuracy (after BN
    recalibration) and a stand-alone one from the seeded trainer, and the statistics are those of the lists."""
    space_spec = nasforge.load(NB201, C=4, N=1, resolution=8)
    space = Space(space_spec)
    dataset = load_dataset("digits", next(iter(space_spec.expanded.inputs.values())), seed=0, limit=300)
    torch.manual_seed(0)
    supernet = build_supernet(space_spec)
    trainer = Trainer(dataset, epochs=1, batch_size=32, max_batches_per_epoch=3)
    seen: list[int] = []
    result = rank_correlation(space, supernet, dataset, trainer, k=3, batches=1, batch_size=32,
                              on_subnet=lambda i, a, est, alone: seen.append(i))
    assert seen == [0, 1, 2] and result.assignments == sample_subnets(space, 3, seed=0)
    assert all(0 <= a <= 1 for a in result.supernet_accuracy + result.standalone_accuracy)
    assert result.standalone_accuracy[1] == trainer(space.concrete(result.assignments[1]))["accuracy"]
    expected = correlate(result.supernet_accuracy, result.standalone_accuracy)
    got = (result.kendall_tau, result.kendall_p, result.spearman_rho, result.spearman_p)
    assert all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(got, expected))
    assert json.loads(json.dumps(result.as_dict()))["assignments"] == result.assignments
