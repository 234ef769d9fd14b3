"""Studies: a search recorded in Optuna storage, resumable, with every trial's concrete spec.

Every strategy runs through one ask-and-tell loop over an Optuna study (:func:`nasforge.search.worker.work`,
which several processes, on several machines, can run on one study): Optuna's own samplers decide choice
points through the trial (define-by-run, in discovery order), and nasforge's strategies become samplers
(:class:`StrategySampler`) that answer each suggestion from the strategy's proposal. So one storage, one
resume story and one dashboard serve them all:

* SQLite by default, any SQLAlchemy URL otherwise (``:memory:`` for a throwaway search that nothing
  resumes); ``study_name`` resumes where it stopped, with a fresh random stream so that the resumed run
  does not propose the first run's candidates again;
* a heartbeat marks a trial whose process died; once it is ``grace_s`` stale the next trial to start fails
  it and retries its decisions (``RetryHeartbeatStaleTrialCallback``);
* each trial stores its decisions, its concrete spec, graph hash, metrics, seed and time, how it was
  measured (training options, latency backend and target), and the study the space's hash and the
  evaluation settings, so a study is never continued on a different space or training by mistake;
* Ctrl-C (SIGINT) mid-trial fails the running trial as ``interrupted`` and queues its decisions again, so the
  next run with the same ``study_name`` evaluates them first; finished trials are kept;
* a network already evaluated (same graph hash) is not evaluated again: its values are reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import signal
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

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
from nasforge.search.storage import MEMORY_STORAGE, open_storage, set_user_attrs  # noqa: F401 (re-exported)
from nasforge.search.strategies import STRATEGIES, Result, Strategy
from nasforge.search.strategies.base import dominates
from nasforge.search.strategies.optuna_samplers import OptunaStrategy

DEFAULT_STORAGE = "sqlite:///nasforge-studies.db"
HEARTBEAT_S = 10
GRACE_S = 30
MAX_RETRY = 2
PRIMITIVES = (str, int, float, bool, type(None))


def space_text(spec: Spec) -> str:
    """A space as one self-contained YAML text: its document with imports inlined and parameter overrides
    applied (what a study records, and what :func:`space_hash` hashes)."""
    return document_to_yaml(structured_document(spec.document, spec.expanded.meta["params"]))


def space_hash(spec: Spec) -> str:
    """Identifies a space: the hash of :func:`space_text`."""
    return hashlib.sha256(space_text(spec).encode()).hexdigest()[:16]


def resumed_seed(seed: int, done: int, worker: str = "") -> int:
    """The seed of a search that continues after ``done`` trials: a fresh run keeps ``seed`` (reproducible);
    a resumed one needs another stream, or its strategy would propose the first run's candidates again, and
    so does each of several workers on one study (``worker`` names it), or they would propose the same."""
    if done == 0 and not worker:
        return seed
    return int(hashlib.sha256((f"{seed}:{done}" + (f":{worker}" if worker else "")).encode()).hexdigest()[:8], 16)


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
    settings: dict[str, Any] = field(default_factory=dict)
    """How candidates are evaluated (dataset, epochs, ...: the command line's), recorded in the study so that
    a worker on another machine evaluates them the same way (``nasforge.search.worker``)."""
    worker: str = ""
    """This process's name among several working on one study (its random stream depends on it)."""

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
        self.told: set[int] = set()
        """Numbers of the finished trials the strategy has been told."""
        self.seen: dict[str, tuple[int, dict[str, float]]] = {}
        """Graph hash -> (trial number, metrics) of the first evaluation of each network met so far."""
        self.stopped: int | None = None
        """The trial Ctrl-C stopped in this process, its decisions queued again (see :meth:`objective`)."""

    # -- storage ------------------------------------------------------------------------------------
    def open_study(self) -> optuna.Study:
        storage = self.make_storage()
        assert self.study_name is not None  # set by __post_init__
        self.strategy_impl.reseed(resumed_seed(self.seed, trials_so_far(storage, self.study_name), self.worker))
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
        evaluation = json.loads(json.dumps(self.evaluator.settings(self.metrics)))  # as the storage returns it
        if recorded and study.user_attrs.get("evaluation", evaluation) != evaluation:
            before, now = flat(study.user_attrs["evaluation"]), flat(evaluation)
            changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
            raise SpecError(f"study {self.study_name!r} measured its trials differently", location=Location("--study"),
                            expected=", ".join(f"{k}={before.get(k)!r}" for k in changed),
                            found=", ".join(f"{k}={now.get(k)!r}" for k in changed),
                            hint="metrics measured differently do not compare: use the study's options "
                                 "(training, dataset, latency backend), or pick a new --study name")
        if not recorded:
            for key, value in self.study_attrs().items():
                study.set_user_attr(key, value)
        if study.user_attrs.get("budget") != self.budget:  # the latest search's budget is the study's
            study.set_user_attr("budget", self.budget)
            with warnings.catch_warnings():  # "experimental" since Optuna 3.2; plots and dashboards read it
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([o.metric for o in self.objectives])
        self.replay(study)
        return study

    def make_storage(self) -> optuna.storages.BaseStorage:
        return open_storage(self.storage, self.heartbeat_s, self.grace_s, MAX_RETRY)

    def study_attrs(self) -> dict[str, Any]:
        """What the study records of its search: enough for a worker that has only the storage URL and the
        study name to rebuild it (the space's text, checked against its hash when read back)."""
        return {"space_hash": self.space_hash, "space": self.spec.name, "space_yaml": space_text(self.spec),
                "strategy": self.strategy, "strategy_options": self.strategy_options,
                "objectives": [str(o) for o in self.objectives],
                "constraints": [str(c) for c in self.constraints], "seed": self.seed, "settings": self.settings,
                "evaluation": self.evaluator.settings(self.metrics),
                "heartbeat_s": self.heartbeat_s, "grace_s": self.grace_s,
                "nasforge": __version__, "optuna": optuna.__version__, "python": platform.python_version()}

    def replay(self, study: optuna.Study) -> int:
        """Tell the strategy every finished trial it has not heard of, and note the networks they met: on
        opening (a resumed search continues where it stopped) and whenever other workers on the study have
        finished trials. Returns how many completed trials the study had."""
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        for trial in done:
            if trial.number in self.told:
                continue
            self.told.add(trial.number)
            self.strategy_impl.tell(Result(json.loads(trial.user_attrs.get("assignment", "{}")), list(trial.values),
                                           trial.user_attrs.get("feasible", True)))
            if "graph_hash" in trial.user_attrs and "duplicate_of" not in trial.user_attrs:
                self.seen.setdefault(trial.user_attrs["graph_hash"], (trial.number,
                                                                      trial.user_attrs.get("metrics", {})))
        return len(done)

    # -- one trial ----------------------------------------------------------------------------------
    def objective(self, trial: optuna.Trial) -> list[float]:
        """Evaluate one trial (:meth:`evaluate_trial`). Ctrl-C in the middle queues its decisions again
        before the interrupt goes on (the worker loop then fails the trial as interrupted), so whichever
        process works on the study next evaluates that network first."""
        try:
            return self.evaluate_trial(trial)
        except KeyboardInterrupt:
            if trial.params:
                with sigint_ignored():  # a second Ctrl-C must not cut the bookkeeping short
                    retry_later(trial.study, trial.study._storage.get_trial(trial._trial_id))  # noqa: SLF001
                    self.stopped = trial.number
            raise

    def evaluate_trial(self, trial: optuna.Trial) -> list[float]:
        start = time.perf_counter()
        assignment = self.space.complete({}, choose=lambda c: suggest(trial, c))
        concrete = self.space.concrete(assignment)
        key = graph_hash(concrete.graph)  # inference happens here: a misfit member fails the trial
        # what the trial is and how its metrics are measured, stored before evaluating (a failure keeps it)
        attrs: dict[str, Any] = {"assignment": json.dumps(assignment, sort_keys=True, default=str),
                                 "graph_hash": key, "seed": self.seed, **self.evaluator.settings(self.metrics)}
        duplicate = key in self.seen
        if duplicate:
            attrs["duplicate_of"] = self.seen[key][0]
        else:
            attrs["spec"] = concrete.to_yaml()
        set_user_attrs(trial, attrs)
        metrics = dict(self.seen[key][1]) if duplicate else self.evaluator.evaluate(concrete, self.metrics, key)
        violations = [c.violation(metrics[c.metric]) for c in self.constraints]
        feasible = not any(v > 0 for v in violations)
        for constraint, violation in zip(self.constraints, violations):  # read by TPE, GP and NSGA-II
            trial.set_constraint(str(constraint), violation)
        set_user_attrs(trial, {"metrics": metrics, "constraints": violations or [0.0], "feasible": feasible,
                               "seconds": round(time.perf_counter() - start, 3)})
        values = [metrics[o.metric] for o in self.objectives]
        if not all(math.isfinite(v) for v in values):
            raise SpecError("an objective is not finite", expected="finite metrics", found=str(metrics))
        self.strategy_impl.tell(Result(assignment, values, feasible))
        self.told.add(trial.number)
        self.seen.setdefault(key, (trial.number, metrics))
        return values

    # -- the loop -------------------------------------------------------------------------------------
    def run(self, on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None) -> optuna.Study:
        """Run until ``budget`` trials are complete (resuming a stored study); failed trials are retried
        by new ones and do not count. Other processes may work on the same study at the same time
        (``nasforge.search.worker``, whose loop this is)."""
        from nasforge.search.worker import work

        try:
            return work(self, on_trial)
        except KeyboardInterrupt:
            with sigint_ignored():
                raise self.interrupted() from None

    def interrupted(self) -> SearchInterrupted:
        """After Ctrl-C: what the study keeps and how to continue it."""
        queued = f"; trial {self.stopped} was stopped, its network is queued to be evaluated first" \
            if self.stopped is not None else ""
        return SearchInterrupted(f"study {self.study_name!r}: {len(self.told)} of {self.budget} trials complete"
                                 f"{queued}; continue with --study {self.study_name}")


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a search; the message says what the study keeps and how to continue it."""


def retry_later(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue ``trial``'s decisions as a waiting trial, the next one any process asks for, linked to it as
    Optuna links heartbeat retries (system attributes ``failed_trial``, ``retry_history``). Unlike
    ``RetryFailedTrialCallback`` the retry starts without the stopped trial's record (user attributes such
    as its error, constraint values), which would otherwise stay on a trial that succeeds."""
    kept = {k: v for k, v in trial.system_attrs.items() if k in ("failed_trial", "retry_history", "fixed_params")}
    system_attrs = {"failed_trial": trial.number, "retry_history": [], **kept}
    system_attrs["retry_history"] = [*system_attrs["retry_history"], trial.number]
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, params=trial.params,
                                              distributions=trial.distributions, system_attrs=system_attrs))


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """SIGINT ignored for the block (in the main thread; elsewhere signals cannot be set and none arrive)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def flat(settings: dict[str, Any]) -> dict[str, Any]:
    """``{"training": {"epochs": 3}}`` -> ``{"training.epochs": 3}`` (to name what differs)."""
    return {f"{section}.{k}": v for section, values in settings.items() for k, v in values.items()}


def completed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def failed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))


def recorded_spec(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    """The concrete spec of a trial's network (a duplicate's is its first evaluation's), refused unless it
    builds the network the trial's graph hash names: a spec changed in the database is never exported."""
    from nasforge.api import loads

    source = study.get_trials(deepcopy=False)[trial.user_attrs.get("duplicate_of", trial.number)]
    text, expected = source.user_attrs.get("spec"), trial.user_attrs.get("graph_hash")
    where = Location(f"study {study.study_name}, trial {source.number}")
    if not isinstance(text, str) or expected is None:
        raise SpecError(f"trial {source.number} records no spec", location=where,
                        expected="a trial that `nasforge search` evaluated", found="no spec or graph hash")
    try:
        found = graph_hash(loads(text, f"<study {study.study_name}: trial {source.number}>").graph)
    except SpecError as err:
        found = f"a spec that does not load ({err.message})"
    if found != expected or source.user_attrs.get("graph_hash") != expected:
        raise SpecError(f"the spec recorded for trial {source.number} does not match its graph hash",
                        location=where, expected=f"graph hash {expected}", found=found,
                        hint="the study was changed after the trial ran; do not trust this spec")
    return text


def best_trials(study: optuna.Study, top: int = 5) -> list[optuna.trial.FrozenTrial]:
    """The ``top`` best feasible networks: for one objective in its order; for several, members of the
    feasible Pareto front, best first objective first (so the front reads as a trade-off curve). A
    duplicate trial (a network met again) is left out: its first evaluation stands for it."""
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("feasible", True) and "duplicate_of" not in t.user_attrs]
    signs = [1 if d == optuna.study.StudyDirection.MINIMIZE else -1 for d in study.directions]
    points = {t.number: [s * v for s, v in zip(signs, t.values)] for t in done}
    ranked = sorted(done, key=lambda t: (points[t.number], t.number))
    if len(signs) > 1:
        ranked = [ranked[i] for i in pareto_front([points[t.number] for t in ranked])]
    return ranked[:top]


def pareto_front(points: list[list[float]]) -> list[int]:
    """Indices of the non-dominated points among ``points`` (minimized, sorted lexicographically). A point's
    dominators come before it in that order. Two objectives: a point is on the front when its second value
    is below every earlier point's of a smaller first value and the least of its own first value's (one
    pass). More: it is on the front when no member of the front found so far dominates it (a dominator off
    the front is itself dominated by a member)."""
    if points and len(points[0]) == 2:
        front, best_before, group, group_best = [], math.inf, None, math.inf
        for i, (first, second) in enumerate(points):
            if first != group:
                best_before, group, group_best = min(best_before, group_best), first, second
            if second < best_before and second == group_best:
                front.append(i)
        return front
    members: list[int] = []
    for i, point in enumerate(points):
        if not any(dominates(points[m], point) for m in members):
            members.append(i)
    return members
