"""Every search strategy on a small conditional space, and a statistical check that the model-based and
evolutionary strategies find better networks than random search does on a problem with a known optimum."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from scipy.stats import mannwhitneyu

import nasforge
from nasforge.api import Spec
from nasforge.errors import SpecError
from nasforge.search.hashing import graph_hash
from nasforge.search.objectives import Evaluator, Objective
from nasforge.search.space import Space
from nasforge.search.strategies import STRATEGIES
from nasforge.search.strategies.base import dominates
from nasforge.search.study import Search, best_trials

# elastic depth (a structural choice) and per-layer choices: the strategies must handle a conditional space
SPACE = """
params: {width: {choice: [4, 8, 16]}}
inputs: {x: [B, 3, 8, 8]}
blocks:
  layer:
    args: [dim]
    nodes:
      - {id: conv, op: conv2d, out: $dim, kernel: {choice: [1, 3]}, padding: {choice: [0, 1]}}
      - {id: act, op: {op_choice: [relu, gelu, identity]}}
graph:
  - {id: stem, op: conv2d, out: $width, kernel: 3, padding: 1}
  - {id: body, repeat: {int: [1, 3]}, block: layer, dim: $width}
  - {id: pool, op: global_avg_pool, keepdim: false}
  - {id: head, op: linear, out: 10}
"""
BUDGET = 10
SINGLE = [Objective.parse("params:min")]
# fewer parameters but more compute: wide 3x3 convolutions that keep the resolution cost MACs per parameter
TWO = [Objective.parse("params:min"), Objective.parse("macs:max")]
MULTI = [name for name, cls in STRATEGIES.items() if cls.multi_objective]


@pytest.fixture(scope="module")
def spec() -> Spec:
    return nasforge.loads(SPACE, "small_space.yaml")


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite file for the module's studies (each has its own name): its schema is made once."""
    return f"sqlite:///{tmp_path_factory.mktemp('studies') / 'studies.db'}"


def run_search(spec: Spec, strategy: str, objectives: list[Objective], storage: str) -> optuna.Study:
    name = f"{strategy}-{len(objectives)}"
    return Search(spec, strategy, objectives, budget=BUDGET, storage=storage, study_name=name, seed=1).run()


def assert_trials_recorded(study: optuna.Study, spec: Spec, objectives: list[Objective]) -> None:
    """Each trial stores its decisions, the concrete spec they make, that network's hash and its metrics."""
    space = Space(spec)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * BUDGET
    for t in trials:
        assignment = json.loads(t.user_attrs["assignment"])
        network = space.concrete(assignment)
        assert sorted(c.label for c in network.choices) == sorted(assignment)
        assert t.user_attrs["graph_hash"] == graph_hash(network.graph)
        totals = network.check().totals
        assert t.user_attrs["metrics"] == {"params": totals.params, "macs": totals.macs}   # always recorded
        assert t.values == [t.user_attrs["metrics"][o.metric] for o in objectives]
        source = study.trials[t.user_attrs.get("duplicate_of", t.number)]
        stored = nasforge.loads(source.user_attrs["spec"])
        assert stored.choices == [] and stored.check().totals.params == totals.params


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_strategy_completes_its_budget_and_records_every_trial(strategy, spec, storage):
    study = run_search(spec, strategy, SINGLE, storage)
    assert_trials_recorded(study, spec, SINGLE)
    leaders = best_trials(study, 3)
    assert leaders and [t.values[0] for t in leaders] == sorted(t.values[0] for t in leaders)
    assert leaders[0].values[0] == min(t.values[0] for t in study.trials)


@pytest.mark.parametrize("strategy", MULTI)
def test_a_multi_objective_search_gives_the_pareto_front(strategy, spec, storage):
    study = run_search(spec, strategy, TWO, storage)
    assert_trials_recorded(study, spec, TWO)
    front = best_trials(study, top=len(study.trials))
    signed = {t.number: [t.values[0], -t.values[1]] for t in study.trials}   # both minimized
    members = {t.number for t in front}
    assert members, "an empty front"
    distinct = [t.number for t in study.trials if "duplicate_of" not in t.user_attrs]
    for n in distinct:
        dominated = any(dominates(signed[m], signed[n]) for m in distinct)
        assert (n in members) == (not dominated), f"trial {n}: dominated={dominated}"
    assert [t.values[0] for t in front] == sorted(t.values[0] for t in front)   # a trade-off curve
    assert best_trials(study, 2) == front[:2]
    # Optuna's own front (it keeps duplicates) covers the same points
    assert {tuple(t.values) for t in study.best_trials} == {tuple(t.values) for t in front}


def test_a_single_objective_strategy_refuses_two_objectives(spec, storage):
    single = [name for name, cls in STRATEGIES.items() if not cls.multi_objective]
    assert single == ["cmaes"]
    with pytest.raises(SpecError, match="strategy 'cmaes' optimizes one objective") as err:
        Search(spec, "cmaes", TWO, budget=BUDGET, storage=storage)
    assert err.value.found == "2 objectives" and "nsga2" in (err.value.expected or "")


# -- a problem with a known optimum ------------------------------------------------------------------
# 8 positions, 4 activations each: 4^8 = 65,536 networks. The hidden score of a network is the mean over
# positions of a per-position score of its activation (one of 0, 1/3, 2/3, 1, shuffled per position), so
# the optimum is 1 and the problem is separable: a strategy that learns from results should climb it.
OPS = ["relu", "tanh", "sigmoid", "gelu"]
POSITIONS = 8
HIDDEN = np.random.default_rng(0).permuted(np.tile(np.linspace(0.0, 1.0, len(OPS)), (POSITIONS, 1)), axis=1)
SYNTHETIC = "inputs: {x: [B, 4]}\ngraph:\n" + "".join(
    f"  - {{id: c{i}, op: {{op_choice: [{', '.join(OPS)}]}}}}\n" for i in range(POSITIONS))
TRIALS = 40
SEEDS = range(8)


def hidden_score(spec: Spec) -> dict[str, float]:
    """The 'accuracy' of a network, read from its graph (which activation stands at each position)."""
    op_at = {node.path: node.op for node in spec.graph}
    return {"accuracy": float(np.mean([HIDDEN[i][OPS.index(op_at[f"c{i}"])] for i in range(POSITIONS)]))}


def best_found(strategy: str, seed: int) -> float:
    # a 40-trial budget: a population of 10 with tournaments of 5 leaves 30 trials to evolve (the defaults,
    # 20 and 5, are for budgets of hundreds)
    options = {"population": 10, "sample": 5} if strategy == "evolution" else {}
    search = Search(nasforge.loads(SYNTHETIC, "synthetic.yaml"), strategy, [Objective.parse("accuracy:max")],
                    budget=TRIALS, storage=":memory:", seed=seed, evaluator=Evaluator(trainer=hidden_score),
                    strategy_options=options)
    study = search.run()
    assert len(study.trials) == TRIALS
    return study.best_value


def test_evolution_and_tpe_beat_random_search_on_a_known_problem():
    best = {s: [best_found(s, seed) for seed in SEEDS] for s in ("random", "evolution", "tpe")}
    assert max(max(v) for v in best.values()) <= 1.0
    for strategy in ("evolution", "tpe"):
        # one-sided Mann-Whitney U over 8 seeds: is the strategy's best value stochastically larger?
        p = mannwhitneyu(best[strategy], best["random"], alternative="greater").pvalue
        assert p < 0.05, (strategy, best[strategy], best["random"], p)
        assert np.mean(best[strategy]) > np.mean(best["random"]) + 0.05, best
