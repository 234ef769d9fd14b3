"""Single Path One-Shot (Guo et al., ECCV 2020): uniform single-path supernet training, then evolution.

SPOS separates training the supernet from searching it. Each training step samples one path (one option per
choice point) uniformly and trains only that path's weights, so every subnet's inherited weights are trained to
about the same degree; the search then ranks subnets by the accuracy they reach with those inherited weights,
without training any of them. Two details make that ranking mean something:

* BatchNorm statistics accumulated over random paths describe no single subnet. Before each evaluation they
  are reset and recomputed over a few training batches for that subnet alone, as a cumulative average
  (``momentum=None``), as the paper's reference code does before each candidate's test (megvii-model/
  SinglePathOneShot, ``Search/tester.py``).
* Constraints (params, MACs, FLOPs, latency) are checked on the subnet's concrete spec *before* it is
  evaluated: the evolution draws another candidate instead (the reference's ``is_legal``).

The evolution is the paper's: a population of 50, 20 generations, the top 10 of everything evaluated so far
as parents, 25 children by mutation (each decision redrawn with probability 0.1) and 25 by uniform crossover,
random members filling what mutation and crossover could not (duplicates and infeasible children are
redrawn). Mutation and crossover go through :class:`~nasforge.search.space.Space`, so conditional choices
stay consistent. The winner is exported as the concrete spec ``space.concrete(assignment)``.

Under several processes (:mod:`.distributed`) every rank draws the same path per step from the same seeded
generator and trains it on its share of the global batch; the evolution runs on every rank in step, each
recalibrating BatchNorm on its share of the calibration batches (with the global batches' statistics) and
scoring its share of the validation split, while rank 0 judges the constraints (a measured latency must be
one answer) and records.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nasforge.api import Spec
from nasforge.errors import Location, SpecError
from nasforge.search.data import Dataset
from nasforge.search.hashing import graph_hash
from nasforge.search.objectives import Constraint, Evaluator
from nasforge.search.oneshot.checkpoint import LOG, Training, save_checkpoint, write_log
from nasforge.search.oneshot.discretize import evaluation_spec, genotype_text
from nasforge.search.oneshot.distributed import SOLO, Group
from nasforge.search.oneshot.method import numbers
from nasforge.search.oneshot.runner import OneShotResult, redacted
from nasforge.search.oneshot.studies import OneShotStudy, default_run_dir, default_study_name
from nasforge.search.oneshot.supernet import Supernet, build_supernet
from nasforge.search.space import Assignment, Space, sample_value
from nasforge.search.study import DEFAULT_STORAGE, space_hash
from nasforge.search.training import Trainer, check_classifier, progress_bar

CALIBRATION_BATCHES = 20
CALIBRATION_BATCH_SIZE = 64
"""BN recalibration reads 20 training batches of 64 per subnet: on the small datasets searched here that is
most of the training split (ImageNet runs of the reference read more: set them with --hparam)."""
MAX_DRAWS = 10
"""Candidates drawn per wanted child before a generation gives up on mutation or crossover (the reference's
``max_iters = mutation_num * 10``)."""


@dataclass(frozen=True)
class SposHParams:
    """SPOS's hyperparameters (``--hparam NAME=VALUE``), the paper's as defaults.

    Supernet training follows the reference's ``train.py`` (ImageNet): 120 epochs of batches of 1024, SGD
    with momentum 0.9 from lr 0.5 decayed linearly to 0 per step, weight decay 4e-5 on conv and linear
    weights only, label smoothing 0.1; ``max_steps`` caps an epoch. The evolution is Section 3.4's.
    ``calibration_batches`` x ``calibration_batch_size`` training images recompute BatchNorm statistics for
    each subnet. ``rank_subnets`` > 0 adds the rank-correlation check over that many random subnets, each
    also trained alone for ``rank_epochs`` epochs (:mod:`.rank_correlation`).
    """

    epochs: int = 120
    batch_size: int = 1024
    lr: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    max_steps: int = 0
    population: int = 50
    generations: int = 20
    parents: int = 10
    mutations: int = 25
    crossovers: int = 25
    mutation_prob: float = 0.1
    calibration_batches: int = CALIBRATION_BATCHES
    calibration_batch_size: int = CALIBRATION_BATCH_SIZE
    rank_subnets: int = 0
    rank_epochs: int = 3

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "population", "generations", "parents", "calibration_batches",
                    "calibration_batch_size", "rank_epochs")
        problems = [(name, ">= 1") for name in positive if getattr(self, name) < 1]
        problems += [(name, ">= 0") for name in ("max_steps", "rank_subnets", "mutations", "crossovers", "weight_decay")
                     if getattr(self, name) < 0]
        problems += [(name, rule) for name, ok, rule in (
            ("lr", self.lr > 0, "> 0"), ("mutation_prob", 0 <= self.mutation_prob <= 1, "in [0, 1]"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("mutations", self.mutations + self.crossovers <= self.population,
             f"mutations + crossovers <= population ({self.population})")) if not ok]
        if problems:
            name, rule = problems[0]
            raise SpecError(f"SPOS hyperparameter {name!r} is out of range", location=Location("--hparam"),
                            expected=f"{name} {rule}", found=repr(getattr(self, name)))

    @classmethod
    def make(cls, overrides: Mapping[str, Any]) -> "SposHParams":
        """The defaults with ``overrides`` (name -> number) on top; unknown names and non-numbers are errors."""
        return cls(**numbers(cls, overrides, "SPOS hyperparameter"))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

# -- evaluating one subnet -------------------------------------------------------------------------------

def calibration_batches(dataset: Dataset, batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """A fixed, seeded set of training batches: every subnet's statistics are computed on the same images."""
    images = dataset.train.tensors[0]
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return [images[order[i:i + batch_size]] for i in range(0, min(len(images), batches * batch_size), batch_size)]


def recalibrate_batch_norm(model: nn.Module, batches: list[torch.Tensor], group: Group = SOLO) -> None:
    """Reset every BatchNorm's running statistics and recompute them as the plain average over ``batches``
    (``momentum=None``) in training mode without gradients; leaves the model in eval mode, momenta restored.
    The ranks of ``group`` each run their share of every batch, normalized by the whole batch's statistics."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad(), group.batch_norm():
        for batch in batches:
            model(group.part(batch).to(group.device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def estimate_accuracy(supernet: nn.Module, assignment: Assignment, dataset: Dataset,
                      batches: list[torch.Tensor], group: Group = SOLO) -> float:
    """Validation accuracy of one subnet with inherited weights, after BN recalibration for it alone."""
    supernet.set_path(assignment)  # type: ignore[operator]
    recalibrate_batch_norm(supernet, batches, group)
    return group.accuracy(supernet, dataset.val)


# -- constraints ------------------------------------------------------------------------------------------

@dataclass
class SubnetConstraints:
    """Constraints judged on a subnet's concrete spec (static analysis; latency measured on the evaluator's
    backend), cached per assignment."""

    space: Space
    constraints: list[Constraint] = field(default_factory=list)
    evaluator: Evaluator = field(default_factory=Evaluator)
    _cache: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)

    def metrics(self, assignment: Assignment) -> dict[str, float]:
        """Params and MACs always (every leaderboard wants them), plus the constrained metrics."""
        key = assignment_key(assignment)
        if key not in self._cache:
            spec = self.space.concrete(assignment)
            wanted = list(dict.fromkeys(["params", "macs", *(c.metric for c in self.constraints)]))
            self._cache[key] = self.evaluator.evaluate(spec, wanted, graph_hash(spec.graph))
        return self._cache[key]

    def feasible(self, assignment: Assignment) -> bool:
        if not self.constraints:
            return True
        metrics = self.metrics(assignment)
        return all(c.violation(metrics[c.metric]) == 0 for c in self.constraints)


def assignment_key(assignment: Assignment) -> str:
    """A stable text key of an assignment (decisions may be lists, as DARTS input pairs are)."""
    return json.dumps(assignment, sort_keys=True, default=str)


# -- the evolution ----------------------------------------------------------------------------------------

@dataclass
class Candidate:
    """A scored subnet and the generation that first met it."""

    assignment: Assignment
    score: float
    generation: int


@dataclass
class Evolution:
    """SPOS's evolutionary search over a space, maximizing ``score`` among ``feasible`` members."""

    space: Space
    score: Callable[[Assignment], float]
    feasible: Callable[[Assignment], bool]
    hp: SposHParams = field(default_factory=SposHParams)
    seed: int = 0
    evaluated: dict[str, Candidate] = field(default_factory=dict)
    """Every candidate scored so far, by assignment key (the history the parents come from)."""

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def run(self, on_generation: Callable[[int, list[Candidate]], None] | None = None) -> list[Candidate]:
        """Run every generation; the candidates best first. ``on_generation(g, top)`` sees each one's top."""
        population = self.fill([], self.hp.population)
        for generation in range(self.hp.generations):
            for assignment in population:
                key = assignment_key(assignment)
                if key not in self.evaluated:
                    self.evaluated[key] = Candidate(assignment, self.score(assignment), generation)
            if on_generation:
                on_generation(generation, self.top(self.hp.parents))
            if generation + 1 < self.hp.generations:
                population = self.next_population()
        return self.top(len(self.evaluated))

    def top(self, k: int) -> list[Candidate]:
        """The ``k`` best of everything evaluated (ties: the earlier first)."""
        ranked = sorted(self.evaluated.values(), key=lambda c: (-c.score, c.generation))
        return ranked[:k]

    def next_population(self) -> list[Assignment]:
        parents = [c.assignment for c in self.top(self.hp.parents)]
        children: list[Assignment] = []
        self.extend(children, self.hp.mutations, lambda: self.mutate(self.rng.choice(parents)))
        self.extend(children, self.hp.crossovers, lambda: self.cross(parents))
        return self.fill(children, self.hp.population)

    def cross(self, parents: list[Assignment]) -> Assignment:
        """Uniform crossover of two distinct parents (a mutation while there is only one)."""
        if len(parents) < 2:
            return self.mutate(parents[0])
        return self.space.crossover(*self.rng.sample(parents, 2), self.rng)

    def mutate(self, parent: Assignment) -> Assignment:
        """Each decision redrawn uniformly with probability ``mutation_prob`` (the reference's gene-wise
        mutation; a redraw may keep the value), then settled through the space."""
        choices = {c.label: c for c in self.space.concrete(parent).choices}
        child = {label: (sample_value(choices[label], self.rng)
                         if label in choices and self.rng.random() < self.hp.mutation_prob else value)
                 for label, value in parent.items()}
        return self.space.complete(child, self.rng)

    def extend(self, children: list[Assignment], wanted: int, draw: Callable[[], Assignment]) -> None:
        """Add up to ``wanted`` new, feasible, not yet seen children, trying at most MAX_DRAWS x wanted."""
        goal = len(children) + wanted
        for _ in range(MAX_DRAWS * wanted):
            if len(children) >= goal:
                return
            self.admit(children, draw())

    def fill(self, children: list[Assignment], size: int) -> list[Assignment]:
        """Top ``children`` up to ``size`` with random feasible members (uniform at each choice point). A
        later generation may come back empty: a small space can be evaluated whole."""
        for _ in range(MAX_DRAWS * size):
            if len(children) >= size:
                break
            self.admit(children, self.space.sample(self.rng))
        if not children and not self.evaluated:
            raise SpecError("no member of the space meets the constraints", location=Location("--constraint"),
                            expected="constraints some member satisfies",
                            found=f"none among {MAX_DRAWS * size} random members")
        return children

    def admit(self, children: list[Assignment], assignment: Assignment) -> None:
        key = assignment_key(assignment)
        if key in self.evaluated or any(assignment_key(c) == key for c in children):
            return
        if self.feasible(assignment):
            children.append(assignment)


# -- the search as `nasforge search --strategy spos` runs it -------------------------------------------

class SposRun:
    """One SPOS search: the supernet and its optimizer, per-epoch checkpoints in ``folder``, the study
    (rank 0's only)."""

    def __init__(self, spec: Spec, hp: SposHParams, dataset: Dataset, storage: str, study_name: str, seed: int,
                 folder: Path, constraints: SubnetConstraints, group: Group = SOLO) -> None:
        self.spec, self.hp, self.dataset, self.storage, self.seed, self.folder = spec, hp, dataset, storage, seed, folder
        self.constraints, self.study_name, self.group = constraints, study_name, group
        self.net: Supernet = build_supernet(spec).to(group.device)
        self.net.set_mode("single_path")
        self.identity = {"space_hash": space_hash(spec), "strategy": "spos", "seed": seed, "hparams": hp.as_dict(),
                         "constraints": [str(c) for c in constraints.constraints]}
        self.study = OneShotStudy(spec, "spos", storage, study_name,
                                  {"seed": seed, "hparams": hp.as_dict(), "dataset": dataset.description,
                                   "constraints": self.identity["constraints"], "run_dir": str(folder.resolve())}
                                  ) if group.lead else None
        decayed = [p for p in self.net.weight_parameters() if p.dim() > 1]  # conv and linear weights
        rest = [p for p in self.net.weight_parameters() if p.dim() <= 1]
        self.opt = torch.optim.SGD([{"params": decayed, "weight_decay": hp.weight_decay},
                                    {"params": rest, "weight_decay": 0.0}], lr=hp.lr, momentum=hp.momentum)
        steps = max(1, len(dataset.train) // hp.batch_size)
        self.steps = min(steps, hp.max_steps) if hp.max_steps else steps
        total = hp.epochs * self.steps
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda step: max(0.0, 1.0 - step / total))
        self.data_rng = torch.Generator().manual_seed(seed)
        self.path_rng = random.Random(seed)
        self.training = Training(self.net, {"opt": self.opt}, self.schedule, self.data_rng)
        self.records: list[dict[str, Any]] = []

    # -- supernet training, resumable per epoch ----------------------------------------------------------
    def restore(self) -> int:
        """Load the run folder's checkpoint, if any; returns the epochs it had finished."""
        state = self.training.resume(self.folder, self.identity)
        if state is None:
            return 0
        version, internal, gauss = state["path_rng"]
        self.path_rng.setstate((version, tuple(internal), gauss))
        self.records = list(state["records"])
        return int(state["epochs_done"])

    def checkpoint(self, epochs_done: int) -> None:
        version, internal, gauss = self.path_rng.getstate()
        save_checkpoint(self.folder, {**self.identity, "epochs_done": epochs_done, **self.training.state(),
                                      "path_rng": [version, list(internal), gauss], "records": self.records})
        self.log()

    def log(self, **extra: Any) -> None:
        write_log(self.folder, {**self.identity, "study": self.study_name, "storage": redacted(self.storage),
                                "processes": self.group.world, "records": self.records, **extra})

    def epoch(self, epoch: int, advance: Callable[[float], None]) -> dict[str, Any]:
        """One epoch of single-path steps: each batch trains one uniformly sampled path."""
        started = time.perf_counter()
        lr = self.opt.param_groups[0]["lr"]
        images, labels = self.dataset.train.tensors
        order = torch.randperm(len(labels), generator=self.data_rng)
        losses, correct = [], 0
        self.net.train()
        with self.group.batch_norm():
            for step in range(self.steps):
                self.net.sample_path(self.path_rng)
                pick = order[step * self.hp.batch_size:(step + 1) * self.hp.batch_size]
                x, y = self.group.batch((images, labels), pick)
                logits = self.net(x)
                loss = F.cross_entropy(logits, y, label_smoothing=self.hp.label_smoothing)
                if not math.isfinite(loss.item()):
                    raise SpecError("the supernet's training diverged", location=Location("--hparam"),
                                    expected="a finite training loss", found=str(float(loss)),
                                    hint="lower the learning rate (--hparam lr=...)")
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.group.average_gradients(self.net.weight_parameters())
                self.opt.step()
                self.schedule.step()
                losses.append(loss.item())
                correct += int((logits.argmax(1) == y).sum())
                advance(losses[-1])
        self.group.check_identical(self.net.state_parts())
        loss_sum, correct = self.group.sum([sum(losses), correct])  # equal shares: the mean is the global batch's
        return {"stage": "supernet", "epoch": epoch, "lr": lr,
                "train_loss": round(loss_sum / (len(losses) * self.group.world), 6),
                "train_accuracy": round(correct / (len(losses) * len(pick)), 6),
                "seconds": round(time.perf_counter() - started, 3)}

    # -- the evolution --------------------------------------------------------------------------------
    def search(self, on_epoch: Callable[[dict[str, Any]], None] | None) -> Candidate:
        """Evolve subnets scored by their BN-recalibrated validation accuracy; records one trial per
        generation (its best subnet so far) in the study."""
        hp = self.hp
        batches = calibration_batches(self.dataset, hp.calibration_batches, hp.calibration_batch_size, self.seed)
        evolution = Evolution(Space(self.spec),
                              lambda a: estimate_accuracy(self.net, a, self.dataset, batches, self.group),
                              lambda a: self.group.decide(lambda: self.constraints.feasible(a)), hp, self.seed)
        clock = [time.perf_counter()]

        def generation(g: int, top: list[Candidate]) -> None:
            if self.study is None:
                return
            best = top[0]
            record = {"stage": "evolution", "epoch": g, "generation": g, "assignment": best.assignment,
                      "genotype": genotype_text(best.assignment), "val_accuracy": round(best.score, 6),
                      "train_loss": self.records[-1]["train_loss"] if self.records else math.nan,
                      "evaluated": len(evolution.evaluated), "metrics": self.constraints.metrics(best.assignment),
                      "collapse": {}, "alphas": {}, "seconds": round(time.perf_counter() - clock[0], 3)}
            clock[0] = time.perf_counter()
            self.records.append(record)
            self.study.record(record, evaluation_spec(self.spec, best.assignment), final=g == hp.generations - 1)
            if on_epoch is not None:
                on_epoch(record)

        return evolution.run(generation)[0]

    def run(self, progress: bool, on_epoch: Callable[[dict[str, Any]], None] | None) -> OneShotResult:
        start = time.perf_counter()
        done = self.restore()
        self.records = [r for r in self.records if r["stage"] == "supernet"]  # the evolution is re-run whole
        remaining = self.hp.epochs - done
        with progress_bar(remaining * self.steps, "spos supernet", progress and remaining > 0) as advance:
            for epoch in range(done, self.hp.epochs):
                self.records.append(self.epoch(epoch, advance))
                if self.study is not None:
                    self.checkpoint(epoch + 1)
                if on_epoch is not None:
                    on_epoch(self.records[-1])
        best = self.search(on_epoch)
        extra = {}
        if self.study is None:  # the other ranks are done: the rank correlation trains subnets alone
            return OneShotResult("spos", self.study_name, self.storage, self.folder, best.assignment,
                                 evaluation_spec(self.spec, best.assignment), self.records, done,
                                 time.perf_counter() - start, [], self.group.world)
        if self.hp.rank_subnets:
            from nasforge.search.oneshot.rank_correlation import rank_correlation  # it imports this module

            trainer = Trainer(self.dataset, epochs=self.hp.rank_epochs, seed=self.seed)
            extra["rank_correlation"] = rank_correlation(Space(self.spec), self.net, self.dataset, trainer,
                                                         self.hp.rank_subnets, self.seed, self.hp.calibration_batches,
                                                         self.hp.calibration_batch_size).as_dict()
            self.records[-1]["rank_correlation"] = extra["rank_correlation"]
            self.study.study.set_user_attr("rank_correlation", extra["rank_correlation"])
        self.log(**extra)
        return OneShotResult("spos", self.study_name, self.storage, self.folder, best.assignment,
                             evaluation_spec(self.spec, best.assignment), self.records, done,
                             time.perf_counter() - start, [self.folder / LOG], self.group.world)


def run_spos(spec: Spec, dataset: Dataset, *, hparams: Mapping[str, Any] | None = None,
             storage: str = DEFAULT_STORAGE, study_name: str | None = None, seed: int = 0, run_dir: Path | None = None,
             progress: bool = False, on_epoch: Callable[[dict[str, Any]], None] | None = None,
             constraints: Sequence[Constraint] = (), evaluator: Evaluator | None = None,
             group: Group = SOLO) -> OneShotResult:
    """Search ``spec`` by SPOS on ``dataset``: train its supernet by uniform single paths (resuming from the
    run folder's checkpoint), then evolve subnets under ``constraints`` (judged by ``evaluator``'s static
    analysis or latency measurement on each subnet's concrete spec). ``hparams`` override
    :class:`SposHParams`; ``on_epoch`` sees each training epoch's and each generation's record (on rank 0
    of ``group``, the processes that search together)."""
    hp = SposHParams.make(hparams or {})
    group.check_batch(hp.batch_size)
    check_classifier(spec, dataset.input_shape, dataset.num_classes)
    name = study_name or default_study_name(spec, "spos")
    folder = run_dir or default_run_dir(storage, name)
    rules = SubnetConstraints(Space(spec), list(constraints), evaluator or Evaluator())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SposRun(spec, hp, dataset, storage, name, seed, folder, rules, group).run(
            progress and group.lead, on_epoch if group.lead else None)
