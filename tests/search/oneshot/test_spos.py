"""SPOS: BatchNorm recalibration, the paper's evolution under constraints, and the search on real supernets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

import nasforge
from nasforge.compiler.fx_builder import example_inputs
from nasforge.errors import SpecError
from nasforge.search.data import load_dataset
from nasforge.search.objectives import Constraint
from nasforge.search.oneshot.spos import (Evolution, SposHParams, SubnetConstraints, assignment_key,
                                          recalibrate_batch_norm, run_spos)
from nasforge.search.space import Space

ROOT = Path(__file__).resolve().parents[3]
NB201 = ROOT / "specs" / "spaces" / "nas_bench_201.yaml"
EDGES = ("edge_1_0", "edge_2_0", "edge_2_1", "edge_3_0", "edge_3_1", "edge_3_2")
WORTH = {"none": 0, "skip_connect": 1, "avg_pool_3x3": 1, "nor_conv_1x1": 2, "nor_conv_3x3": 3}


def tiny_nb201() -> Space:
    return Space(nasforge.load(NB201, C=4, N=1, resolution=8))


def cell(*ops: str) -> dict[str, str]:
    return {f"params.{e}": op for e, op in zip(EDGES, ops)}


def count(assignment: dict, op: str) -> int:
    return sum(v == op for v in assignment.values())


# -- BatchNorm recalibration ------------------------------------------------------------------------------

def test_recalibration_averages_the_statistics_of_the_given_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.fill_(5.0)
            bn.running_var.fill_(9.0)
    batches = [torch.randn(8, 3, 6, 6) * (i + 1) + i for i in range(3)]
    recalibrate_batch_norm(model, batches)
    assert not model.training
    assert model[1].momentum == model[4].momentum == 0.1  # restored after the cumulative average
    assert int(model[1].num_batches_tracked) == 3
    with torch.no_grad():
        features = [model[0](b) for b in batches]
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in features]).mean(0)
    variances = torch.stack([f.transpose(0, 1).flatten(1).var(dim=1) for f in features]).mean(0)
    torch.testing.assert_close(model[1].running_mean, means)
    torch.testing.assert_close(model[1].running_var, variances)


# -- constraints ------------------------------------------------------------------------------------------

def test_subnet_constraints_judge_the_concrete_spec():
    space = tiny_nb201()
    rule = SubnetConstraints(space, [Constraint.parse("params<=6000")])
    big, small = cell(*["nor_conv_3x3"] * 6), cell(*["none"] * 6)
    totals = space.concrete(big).check().totals
    assert rule.metrics(big) == {"params": totals.params, "macs": totals.macs}
    assert totals.params > 6000 and not rule.feasible(big)
    assert space.concrete(small).check().totals.params <= 6000 and rule.feasible(small)
    assert SubnetConstraints(space).feasible(big)


# -- the evolution ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_evolution_reaches_the_best_feasible_cell_and_never_scores_an_infeasible_one():
    """A known landscape: a cell's worth is the sum of its ops' worths; at most four 3x3 convs are allowed,
    so the best feasible cells (score 16) have four 3x3 and two 1x1 convs."""
    space = tiny_nb201()
    scored: list[dict] = []

    def score(assignment: dict) -> float:
        scored.append(assignment)
        return float(sum(WORTH[v] for v in assignment.values()))

    settings = SposHParams(population=16, generations=8, parents=4, mutations=6, crossovers=6, mutation_prob=0.2)
    tops: list[float] = []
    evolution = Evolution(space, score, lambda a: count(a, "nor_conv_3x3") <= 4, settings, seed=0)
    ranked = evolution.run(lambda g, top: tops.append(top[0].score))
    assert ranked[0].score == 16
    assert count(ranked[0].assignment, "nor_conv_3x3") == 4 and count(ranked[0].assignment, "nor_conv_1x1") == 2
    assert all(count(a, "nor_conv_3x3") <= 4 for a in scored)
    assert len({assignment_key(a) for a in scored}) == len(scored)  # nothing is scored twice
    assert len(tops) == 8 and tops == sorted(tops)
    assert [c.score for c in ranked] == sorted((c.score for c in ranked), reverse=True)


def test_mutation_redraws_each_decision_with_its_probability():
    space = tiny_nb201()
    parent = cell(*["nor_conv_3x3"] * 6)
    keep = Evolution(space, len, bool, SposHParams(mutation_prob=0.0))
    assert keep.mutate(parent) == parent
    redraw = Evolution(space, len, bool, SposHParams(mutation_prob=1.0), seed=3)
    children = [redraw.mutate(parent) for _ in range(20)]
    assert all(set(c) == set(parent) for c in children)
    changed = sum(c[k] != parent[k] for c in children for k in parent)
    assert changed > 0.6 * 20 * 6  # a redraw keeps the value with probability 1/5


def test_a_space_without_feasible_members_is_a_spec_error():
    evolution = Evolution(tiny_nb201(), len, lambda a: False, SposHParams(population=4, generations=1, parents=2,
                                                                            mutations=1, crossovers=1))
    with pytest.raises(SpecError, match="no member of the space meets the constraints"):
        evolution.run()


def test_a_small_space_is_evaluated_whole_and_the_evolution_goes_on():
    decided = {edge: "nor_conv_3x3" for edge in EDGES[:5]}  # only edge_3_2 is left: 5 members
    fixed = Space(nasforge.load(NB201, C=4, N=1, resolution=8, **decided))
    seen: list[int] = []
    evolution = Evolution(fixed, lambda a: WORTH[a["params.edge_3_2"]], bool,
                          SposHParams(population=4, generations=4, parents=2, mutations=1, crossovers=1))
    ranked = evolution.run(lambda g, top: seen.append(len(evolution.evaluated)))
    assert len(seen) == 4 and seen[-1] == 5
    assert ranked[0].assignment["params.edge_3_2"] == "nor_conv_3x3"


@pytest.mark.parametrize("options, message", [
    ({"population": 10, "mutations": 6, "crossovers": 6}, "'mutations' is out of range"),
    ({"generations": 0}, "'generations' is out of range"),
    ({"mutation_prob": 1.5}, "'mutation_prob' is out of range"),
    ({"generation": 3}, "unknown SPOS hyperparameter 'generation'"),
    ({"epochs": 1.5}, "'epochs' takes a number"),
    ({"lr": "fast"}, "'lr' takes a number"),
])
def test_hyperparameters_are_checked(options: dict, message: str):
    with pytest.raises(SpecError, match=message) as caught:
        SposHParams.make(options)
    if "generation" in options:
        assert caught.value.hint and "generations" in caught.value.hint


def test_the_evolution_is_seeded():
    space = tiny_nb201()

    def run(seed: int) -> list:
        worth = random.Random(1)
        table = {op: worth.random() for op in WORTH}
        evolution = Evolution(space, lambda a: sum(table[v] for v in a.values()), bool,
                              SposHParams(population=6, generations=2, parents=2, mutations=2, crossovers=2), seed)
        return [c.assignment for c in evolution.run()]

    assert run(0) == run(0)
    assert run(0) != run(1)


# -- the search on real supernets -------------------------------------------------------------------------

TINY = {"epochs": 2, "batch_size": 32, "lr": 0.05, "max_steps": 3, "population": 4, "generations": 2, "parents": 2,
        "mutations": 1, "crossovers": 1, "calibration_batches": 1, "calibration_batch_size": 32}
"""A few steps and generations: the plumbing, not a converged search."""


def tiny_search(tmp_path: Path, space: nasforge.api.Spec, **options):
    tmp_path.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset("digits", next(iter(space.expanded.inputs.values())), seed=0, limit=300)
    return run_spos(space, dataset, hparams={**TINY, **options.pop("hparams", {})},
                    storage=f"sqlite:///{tmp_path / 'studies.db'}", run_dir=tmp_path / "run", **options)


def test_spos_on_nas_bench_201_writes_a_member_under_the_constraint(tmp_path: Path):
    space = nasforge.load(NB201, C=4, N=1, resolution=8)
    bound = 12000
    result = tiny_search(tmp_path, space, constraints=[Constraint.parse(f"params<={bound}")])
    member = nasforge.loads(result.member.to_yaml())  # the concrete spec the search writes
    assert not member.graph.choices and member.check().totals.params <= bound
    assert result.assignment == Space(space).complete(result.assignment)
    with torch.no_grad():
        assert member.build()(*example_inputs(member.graph, batch=2)).shape == (2, 10)
    stages = [r["stage"] for r in result.records]
    assert stages == ["supernet"] * 2 + ["evolution"] * 2
    generations = [r for r in result.records if r["stage"] == "evolution"]
    assert all(r["metrics"]["params"] <= bound for r in generations)
    assert generations[-1]["val_accuracy"] >= generations[0]["val_accuracy"]
    study = optuna.load_study(study_name=result.study_name, storage=f"sqlite:///{tmp_path / 'studies.db'}")
    assert len(study.trials) == 2 and study.user_attrs["strategy"] == "spos"
    final = study.trials[study.user_attrs["final_trial"]]
    assert json.loads(final.user_attrs["assignment"]) == result.assignment
    assert final.value == generations[-1]["val_accuracy"]
    assert final.user_attrs["spec"] == result.member.to_yaml()
    assert json.loads((tmp_path / "run" / "log.json").read_text())["records"] == result.records


class Killed(Exception):
    """Stands for the process dying after a checkpoint."""


@pytest.mark.slow
def test_a_killed_spos_search_resumes_from_its_last_epoch(tmp_path: Path):
    space = nasforge.load(NB201, C=4, N=1, resolution=8)
    whole = tiny_search(tmp_path / "whole", space)

    def die(record: dict) -> None:
        if record["stage"] == "supernet" and record["epoch"] == 0:
            raise Killed

    with pytest.raises(Killed):
        tiny_search(tmp_path / "split", space, on_epoch=die)
    resumed = tiny_search(tmp_path / "split", space)
    assert resumed.resumed_epochs == 1
    assert resumed.assignment == whole.assignment
    drop = ("seconds",)
    assert ([{k: v for k, v in r.items() if k not in drop} for r in resumed.records]
            == [{k: v for k, v in r.items() if k not in drop} for r in whole.records])


@pytest.mark.slow
def test_spos_on_the_darts_space(tmp_path: Path):
    space = nasforge.load(ROOT / "specs" / "spaces" / "darts.yaml", C=4, layers=3)
    result = tiny_search(tmp_path, space, hparams={"epochs": 1})
    member = result.member
    assert {c.label for c in Space(space).choices} == set(result.assignment)
    with torch.no_grad():
        assert member.build()(*example_inputs(member.graph, batch=2)).shape == (2, 10)
