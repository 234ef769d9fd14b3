"""Run a gradient-based one-shot search: supernet, bilevel training, per-epoch genotype, checkpoints, study.

``run_oneshot(spec, "darts", dataset)`` builds the space's supernet, splits the dataset's training split
into a weights half and an architecture half (DARTS's ``train_portion`` 0.5), and trains for the method's
epochs. After each epoch it derives the genotype, measures the supernet's accuracy on the validation split,
reports the collapse diagnostics, saves a checkpoint and the JSON log into the run folder, and records the
epoch as a trial of the study (:mod:`.studies`). Run again with the same study, a killed search resumes
from the checkpoint of its last finished epoch and ends as the uninterrupted search would have. ``spos``
runs :func:`nasforge.search.oneshot.spos.run_spos` with the same arguments. Given a ``group`` of several
processes, each runs this same search on its share of every batch (:mod:`.distributed`); rank 0 alone
checkpoints, records and reports.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from nasforge.api import Spec
from nasforge.errors import Location, SpecError, did_you_mean
from nasforge.search.data import Dataset
from nasforge.search.objectives import Constraint, Evaluator
from nasforge.search.oneshot import ONESHOT_STRATEGIES
from nasforge.search.oneshot.checkpoint import Training, save_checkpoint, write_log
from nasforge.search.oneshot.darts import Darts, DartsSecondOrder
from nasforge.search.oneshot.diagnostics import collapse_report, plot_trajectories
from nasforge.search.oneshot.discretize import evaluation_spec, genotype_text
from nasforge.search.oneshot.distributed import SOLO, Group
from nasforge.search.oneshot.gdas import Gdas
from nasforge.search.oneshot.method import Batch, HParams, OneShotMethod
from nasforge.search.oneshot.pcdarts import PcDarts
from nasforge.search.oneshot.studies import OneShotStudy, default_run_dir, default_study_name
from nasforge.search.oneshot.supernet import Supernet, build_supernet
from nasforge.search.storage import MEMORY_STORAGE, redact
from nasforge.search.study import DEFAULT_STORAGE, space_hash
from nasforge.search.training import check_classifier, progress_bar

METHODS: dict[str, type[OneShotMethod]] = {cls.name: cls for cls in (Darts, DartsSecondOrder, Gdas, PcDarts)}
PLOT = "alphas.png"


@dataclass
class OneShotResult:
    """A finished one-shot search: the derived member (at the searched size) and how it was found."""

    strategy: str
    study_name: str
    storage: str
    run_dir: Path
    assignment: dict[str, Any]
    member: Spec
    records: list[dict[str, Any]]
    resumed_epochs: int = 0
    """Epochs a previous, interrupted run had finished (0 for a fresh search)."""
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)
    processes: int = 1
    """How many processes trained the supernet together (``--nproc``)."""

    @property
    def collapse(self) -> dict[str, Any]:
        return self.records[-1].get("collapse", {}) if self.records else {}

    def as_dict(self) -> dict[str, Any]:
        last = self.records[-1] if self.records else {}
        return {"strategy": self.strategy, "study": self.study_name, "run_dir": str(self.run_dir),
                "epochs": len(self.records), "resumed_epochs": self.resumed_epochs, "choices": self.assignment,
                "genotype": last.get("genotype"), "val_accuracy": last.get("val_accuracy"),
                "collapse": self.collapse, "seconds": round(self.seconds, 3), "processes": self.processes,
                "files": [str(f) for f in self.files]}


def run_oneshot(spec: Spec, strategy: str, dataset: Dataset, *, hparams: Mapping[str, Any] | None = None,
                storage: str = DEFAULT_STORAGE, study_name: str | None = None, seed: int = 0,
                run_dir: Path | None = None, progress: bool = False,
                on_epoch: Callable[[dict[str, Any]], None] | None = None,
                constraints: Sequence[Constraint] = (), evaluator: Evaluator | None = None,
                group: Group = SOLO) -> OneShotResult:
    """Search ``spec`` with ``strategy`` (darts, darts2, gdas, pcdarts, spos) on ``dataset``; ``hparams``
    override the method's defaults (:class:`~.method.HParams`), ``on_epoch`` sees each epoch's record.
    ``constraints`` (judged by ``evaluator``) are SPOS's: its evolution searches the trained supernet
    under them; the gradient-based methods take none. Every process of ``group`` calls this with the same
    arguments; only rank 0 shows progress and calls ``on_epoch``."""
    if strategy not in ONESHOT_STRATEGIES:
        raise SpecError(f"unknown one-shot strategy {strategy!r}", location=Location("--strategy"),
                        expected="one of " + ", ".join(ONESHOT_STRATEGIES), found=repr(strategy),
                        hint=did_you_mean(strategy, list(ONESHOT_STRATEGIES)))
    if strategy == "spos":
        from nasforge.search.oneshot.spos import run_spos

        return run_spos(spec, dataset, hparams=hparams, storage=storage, study_name=study_name, seed=seed,
                        run_dir=run_dir, progress=progress, on_epoch=on_epoch, constraints=constraints,
                        evaluator=evaluator, group=group)
    if constraints:
        raise SpecError("gradient-based one-shot searches take no constraints", location=Location("--constraint"),
                        expected="no --constraint with darts, darts2, gdas or pcdarts",
                        found=", ".join(map(str, constraints)),
                        hint="spos searches its trained supernet under constraints; multi-trial strategies do too")
    method = METHODS[strategy]
    hp = HParams.make(method.defaults, hparams or {})
    group.check_batch(hp.batch_size)
    check_classifier(spec, dataset.input_shape, dataset.num_classes)
    name = study_name or default_study_name(spec, strategy)
    folder = run_dir or default_run_dir(storage, name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        search = OneShotSearch(spec, strategy, method, hp, dataset, storage, name, seed, folder, group)
        return search.run(progress and group.lead, on_epoch if group.lead else None)


class OneShotSearch:
    """One search's state: supernet, optimizers, data halves, records, study (rank 0's only)."""

    def __init__(self, spec: Spec, strategy: str, method: type[OneShotMethod], hp: HParams, dataset: Dataset,
                 storage: str, study_name: str, seed: int, folder: Path, group: Group = SOLO) -> None:
        self.spec, self.strategy, self.hp, self.dataset, self.folder = spec, strategy, hp, dataset, folder
        self.storage, self.study_name, self.group = storage, study_name, group
        self.net: Supernet = build_supernet(spec).to(group.device)
        self.method = method(self.net, hp, group)
        self.identity = {"space_hash": space_hash(spec), "strategy": strategy, "seed": seed, "hparams": hp.as_dict()}
        self.study = OneShotStudy(spec, strategy, storage, study_name,
                                  {"seed": seed, "hparams": hp.as_dict(), "dataset": dataset.description,
                                   "run_dir": str(folder.resolve())}) if group.lead else None
        self.w_opt = torch.optim.SGD(self.net.weight_parameters(), lr=hp.lr, momentum=hp.momentum,
                                     weight_decay=hp.weight_decay)
        self.a_opt = torch.optim.Adam(self.net.arch_parameters(), lr=hp.arch_lr, betas=(hp.arch_beta1, hp.arch_beta2),
                                      weight_decay=hp.arch_weight_decay)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, T_max=hp.epochs, eta_min=hp.lr_min)
        images, _ = dataset.train.tensors
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        cut = min(max(1, int(len(images) * hp.train_portion)), len(images) - 1)
        self.halves = (order[:cut], order[cut:])
        self.batch = min(hp.batch_size, *(len(h) for h in self.halves))
        self.batch -= self.batch % group.world  # if a half is smaller than the batch: still equal shares
        if self.batch < 1:
            raise SpecError("the training split is too small for this many processes", location=Location("--nproc"),
                            expected=f"at least {2 * group.world} training examples", found=str(len(images)))
        steps = len(self.halves[0]) // self.batch
        self.steps = min(steps, hp.max_steps) if hp.max_steps else steps
        self.data_rng = torch.Generator().manual_seed(seed + 1)
        self.training = Training(self.net, {"w_opt": self.w_opt, "a_opt": self.a_opt}, self.schedule, self.data_rng)
        self.records: list[dict[str, Any]] = []

    # -- resume ---------------------------------------------------------------------------------------
    def restore(self) -> int:
        """Load the run folder's checkpoint, if any; returns the epochs it had finished."""
        state = self.training.resume(self.folder, self.identity)
        if state is None:
            return 0
        self.records = list(state["records"])
        for record in self.records if self.study else ():  # a crash between checkpoint and study loses no trial
            self.study.record(record, self.member(record["assignment"]), final=False)
        return int(state["epochs_done"])

    def checkpoint(self, epochs_done: int) -> None:
        save_checkpoint(self.folder, {**self.identity, "epochs_done": epochs_done,
                                      **self.training.state(), "records": self.records})
        write_log(self.folder, {**self.identity, "study": self.study_name, "storage": redacted(self.storage),
                                "processes": self.group.world,
                                "keys": {k: list(v.options) for k, v in self.net.keys.items()},
                                "records": self.records})

    # -- training -------------------------------------------------------------------------------------
    def run(self, progress: bool, on_epoch: Callable[[dict[str, Any]], None] | None) -> OneShotResult:
        start = time.perf_counter()
        done = self.restore()
        remaining = self.hp.epochs - done
        with progress_bar(remaining * self.steps, f"{self.strategy} supernet", progress and remaining > 0) as advance:
            for epoch in range(done, self.hp.epochs):
                record = self.epoch(epoch, advance)
                self.records.append(record)
                if self.study is not None:
                    self.checkpoint(epoch + 1)
                    self.study.record(record, self.member(record["assignment"]), final=epoch == self.hp.epochs - 1)
                if on_epoch is not None:
                    on_epoch(record)
        files = [plot_trajectories(self.records, self.net, self.folder / PLOT)] if self.group.lead else []
        assignment = self.records[-1]["assignment"]
        return OneShotResult(self.strategy, self.study_name, self.storage, self.folder, assignment,
                             self.member(assignment), self.records, done, time.perf_counter() - start, files,
                             self.group.world)

    def epoch(self, epoch: int, advance: Callable[[float], None]) -> dict[str, Any]:
        started = time.perf_counter()
        shown = self.method.start_epoch(epoch)
        lr = self.w_opt.param_groups[0]["lr"]
        moves = self.method.arch_moves(epoch)
        images, labels = self.dataset.train.tensors
        orders = [h[torch.randperm(len(h), generator=self.data_rng)] for h in self.halves]
        val_steps = len(orders[1]) // self.batch
        losses, arch_losses, correct = [], [], 0
        self.net.train()
        with self.group.batch_norm():
            for step in range(self.steps):
                picks = (orders[0][step * self.batch:(step + 1) * self.batch],
                         orders[1][(step % val_steps) * self.batch:(step % val_steps + 1) * self.batch])
                train, val = (self.group.batch((images, labels), p) for p in picks)
                if moves and self.method.arch_first:
                    arch_losses.append(self.method.arch_step(train, val, self.w_opt, self.a_opt))
                loss, hits = self.weight_step(train)
                if moves and not self.method.arch_first:
                    arch_losses.append(self.method.arch_step(train, val, self.w_opt, self.a_opt))
                losses.append(loss)
                correct += hits
                advance(loss)
        self.schedule.step()
        self.group.check_identical(self.net.state_parts())
        # the ranks' means of equal shares: their mean is the global batch's
        loss_sum, correct, arch_sum = self.group.sum([sum(losses), correct, sum(arch_losses)])
        shares = len(losses) * self.group.world
        assignment = self.net.derive()
        collapse = collapse_report(self.net, assignment, self.hp.collapse_threshold)
        return {"epoch": epoch, "lr": lr, **shown, "arch_moves": moves,
                "train_loss": round(loss_sum / shares, 6),
                "train_accuracy": round(correct / (len(losses) * self.batch), 6),
                "arch_loss": round(arch_sum / shares, 6) if arch_losses else None,
                "val_accuracy": round(self.group.accuracy(self.net, self.dataset.val), 6),
                "assignment": assignment, "genotype": genotype_text(assignment),
                "alphas": self.net.arch_weights(), "betas": self.net.edge_weights(),
                "collapse": collapse.as_dict(), "warning": collapse.message(),
                "seconds": round(time.perf_counter() - started, 3)}

    def weight_step(self, train: Batch) -> tuple[float, int]:
        """One SGD step of the weights on a training batch; returns its loss and correct predictions."""
        self.w_opt.zero_grad(set_to_none=True)
        logits = self.net(train[0])
        loss = F.cross_entropy(logits, train[1])
        if not math.isfinite(loss.item()):
            raise SpecError("the supernet's training diverged", location=Location("--hparam"),
                            expected="a finite training loss", found=str(float(loss)),
                            hint="lower the learning rate (--lr) or clip harder (--hparam grad_clip=1)")
        loss.backward()
        self.group.average_gradients(self.net.weight_parameters())
        torch.nn.utils.clip_grad_norm_(self.net.weight_parameters(), self.hp.grad_clip)
        self.w_opt.step()
        return loss.item(), int((logits.argmax(1) == train[1]).sum())

    def member(self, assignment: Mapping[str, Any]) -> Spec:
        return evaluation_spec(self.spec, assignment)


def redacted(storage: str) -> str:
    return storage if storage == MEMORY_STORAGE else redact(storage)
