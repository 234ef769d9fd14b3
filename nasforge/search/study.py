"""Studies: a search recorded in Optuna storage, resumable, with every trial's concrete spec.

Every strategy runs through ``optuna.Study.optimize``: Optuna's own samplers decide choice points through
the trial (define-by-run, in discovery order), and nasforge's strategies become samplers
(:class:`StrategySampler`) that answer each suggestion from the strategy's proposal. So one storage, one
resume story and one dashboard serve them all:

* SQLite by default, any SQLAlchemy URL otherwise (``:memory:`` for a throwaway search that nothing
  resumes); ``study_name`` resumes where it stopped, with a fresh random stream so that the resumed run
  does not propose the first run's candidates again;
* a heartbeat marks a trial whose process died; once it is ``grace_s`` stale the next trial to start fails
  it and retries its decisions (``RetryHeartbeatStaleTrialCallback``);
* each trial stores its decisions, its concrete spec, graph hash, metrics, seed and time, and the study the
  space's hash, so a study is never continued on a different space by mistake;
* a network already evaluated (same graph hash) is not evaluated again: its values are reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import sqlite3
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from nasforge import __version__
from nasforge.api import Spec
from nasforge.compiler.ir import ChoicePoint
from nasforge.dsl.serialize import document_to_yaml, structured_document
from nasforge.errors import Location, SpecError
from nasforge.search.hashing import graph_hash
from nasforge.search.objectives import Constraint, Evaluator, Objective
from nasforge.search.space import Assignment, Space
from nasforge.search.strategies import STRATEGIES, Result, Strategy
from nasforge.search.strategies.base import dominates
from nasforge.search.strategies.optuna_samplers import OptunaStrategy

DEFAULT_STORAGE = "sqlite:///nasforge-studies.db"
MEMORY_STORAGE = ":memory:"
HEARTBEAT_S = 10
GRACE_S = 30
MAX_RETRY = 2
PRIMITIVES = (str, int, float, bool, type(None))


def space_hash(spec: Spec) -> str:
    """Identifies a space: its document with imports inlined and parameter overrides applied."""
    text = document_to_yaml(structured_document(spec.document, spec.expanded.meta["params"]))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class WalConnection(sqlite3.Connection):
    """A SQLite connection in write-ahead-log mode with ``synchronous=NORMAL``. A trial makes some 25 small
    transactions (each suggestion and attribute is one); in SQLite's default rollback-journal mode each
    commit waits for the disk, which measured 3 to 30 ms a commit on a busy disk, up to 0.7 s a trial. In
    WAL mode a commit is an append, and a killed process loses nothing (only a power cut can undo the last
    commits, never corrupt the file)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.execute("PRAGMA journal_mode=WAL")
        self.execute("PRAGMA synchronous=NORMAL")


def resumed_seed(seed: int, done: int) -> int:
    """The seed of a search that continues after ``done`` trials: a fresh run keeps ``seed`` (reproducible);
    a resumed one needs another stream, or its strategy would propose the first run's candidates again."""
    if done == 0:
        return seed
    return int(hashlib.sha256(f"{seed}:{done}".encode()).hexdigest()[:8], 16)


def trials_so_far(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


def encodable(choice: ChoicePoint) -> bool:
    return all(isinstance(o, PRIMITIVES) for o in choice.options)


def distribution(choice: ChoicePoint) -> Any:
    """The Optuna distribution a choice point is recorded with (index-coded for structured options)."""
    if choice.kind == "int":
        lo, hi = choice.options
        return IntDistribution(lo, hi, step=int(choice.step or 1))
    if choice.kind == "float":
        lo, hi = choice.options
        return FloatDistribution(lo, hi, log=choice.log)
    if encodable(choice):
        return CategoricalDistribution(list(choice.options))
    return CategoricalDistribution(list(range(len(choice.options))))


def suggest(trial: optuna.Trial, choice: ChoicePoint) -> Any:
    """Decide one choice point through the trial's sampler (structured options are index-coded)."""
    dist = distribution(choice)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(choice.label, dist.low, dist.high, step=dist.step)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(choice.label, dist.low, dist.high, log=dist.log)
    value = trial.suggest_categorical(choice.label, dist.choices)
    return value if encodable(choice) else choice.options[value]


def encode(space: Space, assignment: Assignment) -> dict[str, Any]:
    """Decisions as Optuna records them: structured options (op_choice fragments) by their index."""
    out = dict(assignment)
    for choice in space.concrete(assignment).choices:
        if choice.label in out and choice.kind in ("choice", "op_choice") and not encodable(choice):
            out[choice.label] = list(choice.options).index(out[choice.label])
    return out


class StrategySampler(optuna.samplers.BaseSampler):
    """Makes a nasforge strategy an Optuna sampler: each trial's decisions come from ``strategy.ask()``;
    labels the proposal does not cover (a mutation revealed new choices) fall back to random."""

    def __init__(self, strategy: Strategy, seed: int) -> None:
        self.strategy = strategy
        self.fallback = optuna.samplers.RandomSampler(seed=seed)
        self.proposals: dict[int, Assignment] = {}

    def infer_relative_search_space(self, study: optuna.Study, trial: Any) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        return {}

    def before_trial(self, study: optuna.Study, trial: Any) -> None:
        if trial.number not in self.proposals:
            self.proposals[trial.number] = encode(self.strategy.space, self.strategy.ask() or {})

    def sample_independent(self, study: optuna.Study, trial: Any, name: str, dist: Any) -> Any:
        proposal = self.proposals.get(trial.number, {})
        if name in proposal and dist._contains(dist.to_internal_repr(proposal[name])):  # noqa: SLF001
            return proposal[name]
        return self.fallback.sample_independent(study, trial, name, dist)

    def after_trial(self, study: optuna.Study, trial: Any, state: Any, values: Any) -> None:
        self.proposals.pop(trial.number, None)


@dataclass
class SearchSummary:
    """What a finished (or interrupted) search reports."""

    study_name: str
    storage: str
    completed: int
    failed: int
    duplicates: int
    best: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Search:
    """A search of ``space`` with ``strategy`` toward ``objectives``, recorded in ``storage``."""

    spec: Spec
    strategy: str
    objectives: list[Objective]
    constraints: list[Constraint] = field(default_factory=list)
    budget: int = 20
    storage: str = DEFAULT_STORAGE
    study_name: str | None = None
    seed: int = 0
    evaluator: Evaluator = field(default_factory=Evaluator)
    strategy_options: dict[str, Any] = field(default_factory=dict)
    heartbeat_s: int = HEARTBEAT_S
    """How often a running trial records that its process is alive."""
    grace_s: int = GRACE_S
    """How long a trial's heartbeat may be silent before another process takes the trial for dead."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            from nasforge.errors import did_you_mean

            raise SpecError(f"unknown strategy {self.strategy!r}", location=Location("--strategy"),
                            expected="one of " + ", ".join(STRATEGIES), found=repr(self.strategy),
                            hint=did_you_mean(self.strategy, list(STRATEGIES)))
        if not self.objectives:
            raise SpecError("a search needs an objective", location=Location("--objective"),
                            expected="e.g. --objective accuracy:max", found="none")
        if self.budget < 1:
            raise SpecError("the budget must be positive", location=Location("--budget"),
                            expected="an integer >= 1", found=str(self.budget))
        if not 0 < self.heartbeat_s < self.grace_s:
            raise SpecError("a heartbeat must come more often than the grace period", location=Location("Search"),
                            expected="0 < heartbeat_s < grace_s",
                            found=f"heartbeat_s={self.heartbeat_s}, grace_s={self.grace_s}")
        self.space = Space(self.spec)
        self.space_hash = space_hash(self.spec)
        self.study_name = self.study_name or f"{self.spec.name}-{self.strategy}-{self.space_hash[:6]}"
        cls = STRATEGIES[self.strategy]
        if len(self.objectives) > 1 and not cls.multi_objective:
            raise SpecError(f"strategy {self.strategy!r} optimizes one objective", location=Location("--strategy"),
                            expected="one --objective, or a multi-objective strategy (evolution, nsga2, tpe, ...)",
                            found=f"{len(self.objectives)} objectives")
        self.strategy_impl = cls(self.space, [o.direction for o in self.objectives], self.seed,
                                 **self.strategy_options)
        # params and MACs are free (static analysis) and every leaderboard wants them
        self.metrics = list(dict.fromkeys([o.metric for o in self.objectives] + [c.metric for c in self.constraints]
                                          + ["params", "macs"]))

    # -- storage ------------------------------------------------------------------------------------
    def open_study(self) -> optuna.Study:
        storage = self.make_storage()
        assert self.study_name is not None  # set by __post_init__
        self.strategy_impl.reseed(resumed_seed(self.seed, trials_so_far(storage, self.study_name)))
        sampler = (self.strategy_impl.sampler() if isinstance(self.strategy_impl, OptunaStrategy)
                   else StrategySampler(self.strategy_impl, self.strategy_impl.seed))
        directions = [o.direction for o in self.objectives]
        study = optuna.create_study(storage=storage, study_name=self.study_name, directions=directions,
                                    sampler=sampler, load_if_exists=True)
        recorded = study.user_attrs.get("space_hash")
        if recorded and recorded != self.space_hash:
            raise SpecError(f"study {self.study_name!r} belongs to another space", location=Location("--study"),
                            expected=f"space hash {recorded}", found=f"{self.space_hash} (this space and overrides)",
                            hint="pick a new --study name, or search the space the study was made for")
        previous = study.user_attrs.get("objectives")
        if previous and previous != [str(o) for o in self.objectives]:
            raise SpecError(f"study {self.study_name!r} optimizes other objectives", location=Location("--study"),
                            expected=" ".join(previous), found=" ".join(map(str, self.objectives)))
        if not recorded:
            for key, value in self.study_attrs().items():
                study.set_user_attr(key, value)
            with warnings.catch_warnings():  # "experimental" since Optuna 3.2; plots and dashboards read it
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([o.metric for o in self.objectives])
        self.replay(study)
        return study

    def make_storage(self) -> optuna.storages.BaseStorage:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if self.storage == MEMORY_STORAGE:  # one process, nothing to resume: no heartbeat either
            return optuna.storages.InMemoryStorage()
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5; we rely on them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                sqlite = self.storage.startswith("sqlite:")
                return optuna.storages.RDBStorage(
                    self.storage, engine_kwargs={"connect_args": {"factory": WalConnection}} if sqlite else None,
                    heartbeat_interval=self.heartbeat_s, grace_period=self.grace_s,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRY))
        except Exception as err:  # SQLAlchemy raises many kinds for a bad URL or an unreachable server
            raise SpecError(f"cannot open study storage: {err}", location=Location("--storage"),
                            expected=f"sqlite:///PATH.db, another SQLAlchemy URL or {MEMORY_STORAGE}",
                            found=self.storage) from None

    def study_attrs(self) -> dict[str, Any]:
        return {"space_hash": self.space_hash, "space": self.spec.name, "strategy": self.strategy,
                "objectives": [str(o) for o in self.objectives],
                "constraints": [str(c) for c in self.constraints], "seed": self.seed,
                "nasforge": __version__, "optuna": optuna.__version__, "python": platform.python_version()}

    def replay(self, study: optuna.Study) -> None:
        """Tell the strategy every finished trial, so a resumed search continues where it stopped."""
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            self.strategy_impl.tell(Result(json.loads(trial.user_attrs.get("assignment", "{}")), list(trial.values),
                                           trial.user_attrs.get("feasible", True)))

    # -- one trial ----------------------------------------------------------------------------------
    def objective(self, trial: optuna.Trial, seen: dict[str, int]) -> list[float]:
        start = time.perf_counter()
        assignment = self.space.complete({}, choose=lambda c: suggest(trial, c))
        concrete = self.space.concrete(assignment)
        key = graph_hash(concrete.graph)  # inference happens here: a misfit member fails the trial
        trial.set_user_attr("assignment", json.dumps(assignment, sort_keys=True, default=str))
        trial.set_user_attr("graph_hash", key)
        trial.set_user_attr("seed", self.seed)
        if key in seen:
            source = trial.study.trials[seen[key]]
            metrics = dict(source.user_attrs.get("metrics", {}))
            trial.set_user_attr("duplicate_of", source.number)
        else:
            trial.set_user_attr("spec", concrete.to_yaml())
            metrics = self.evaluator.evaluate(concrete, self.metrics, key)
        violations = [c.violation(metrics[c.metric]) for c in self.constraints]
        feasible = not any(v > 0 for v in violations)
        for constraint, violation in zip(self.constraints, violations):  # read by TPE, GP and NSGA-II
            trial.set_constraint(str(constraint), violation)
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("constraints", violations or [0.0])
        trial.set_user_attr("feasible", feasible)
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
        values = [metrics[o.metric] for o in self.objectives]
        if not all(math.isfinite(v) for v in values):
            raise SpecError("an objective is not finite", expected="finite metrics", found=str(metrics))
        self.strategy_impl.tell(Result(assignment, values, feasible))
        seen.setdefault(key, trial.number)
        return values

    # -- the loop -------------------------------------------------------------------------------------
    def run(self, on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None) -> optuna.Study:
        """Run until ``budget`` trials are complete (resuming a stored study); failed trials are retried
        by new ones and do not count."""
        study = self.open_study()
        seen = {t.user_attrs["graph_hash"]: t.number
                for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if "graph_hash" in t.user_attrs and "duplicate_of" not in t.user_attrs}
        attempts = 0
        while (remaining := self.budget - completed(study)) > 0:
            attempts += remaining
            if attempts > 10 * self.budget + 10:
                raise SpecError("too many candidates fail", location=Location("--budget"),
                                expected="a space whose members build and evaluate",
                                found=f"{failed(study)} failed trials")
            callbacks = [lambda s, t: on_trial(s, t)] if on_trial else []
            study.optimize(lambda t: self.objective(t, seen), n_trials=remaining, callbacks=callbacks,
                           catch=(SpecError, RuntimeError, ValueError), gc_after_trial=False)
        return study


def completed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def failed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))


def best_trials(study: optuna.Study, top: int = 5) -> list[optuna.trial.FrozenTrial]:
    """The ``top`` best feasible networks: for one objective in its order; for several, members of the
    feasible Pareto front, best first objective first (so the front reads as a trade-off curve). A
    duplicate trial (a network met again) is left out: its first evaluation stands for it."""
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("feasible", True) and "duplicate_of" not in t.user_attrs]
    signs = [1 if d == optuna.study.StudyDirection.MINIMIZE else -1 for d in study.directions]
    points = {t.number: [s * v for s, v in zip(signs, t.values)] for t in done}
    if len(signs) > 1:
        done = [t for t in done if not any(dominates(q, points[t.number]) for q in points.values())]
    return sorted(done, key=lambda t: (points[t.number], t.number))[:top]
