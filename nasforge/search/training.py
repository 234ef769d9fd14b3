"""Short training runs: the ``accuracy`` and ``train_loss`` objectives of a search.

A :class:`Trainer` is the ``trainer`` an :class:`~nasforge.search.objectives.Evaluator` calls: it builds
a candidate spec, trains it for a few epochs on a :class:`~nasforge.search.data.Dataset` and reports
validation accuracy. Everything random (initialization, data order, dropout) is drawn from a generator
seeded by ``seed`` inside a forked RNG state, so one seed gives one number for one network, and the
caller's global RNG is left as it was. The defaults (3 epochs, batch 64, SGD with a cosine schedule) train
a small CNN on digits in about a second on one CPU core: a ranking signal, not a converged accuracy.

The options (optimizer, learning rate and schedule, warmup, weight decay, label smoothing) come from the
command line or the spec's ``training:`` section (:mod:`nasforge.dsl.training_section`, which also holds
the table they are checked against); :meth:`Trainer.for_spec` merges the two, the command line winning.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from nasforge.api import Spec
from nasforge.dsl.training_section import OPTIONS, check_options, training_section
from nasforge.errors import Location, SpecError
from nasforge.search.data import Dataset
from nasforge.types import FLOAT_DTYPES, Sym, TensorType

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
}
"""The torch class of each name in :data:`nasforge.dsl.training_section.OPTIMIZERS`."""
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3}
"""SGD at 0.1 is NAS-Bench-201's rate; Adam's is the usual 1e-3."""
STEP_MILESTONES = (0.5, 0.75)
STEP_GAMMA = 0.1
"""The ``step`` schedule: the rate drops tenfold at half and at three quarters of the run (after warmup),
the CIFAR ResNet schedule (He et al. 2016) scaled to the run's length."""
ONECYCLE_DIV, ONECYCLE_FINAL_DIV, ONECYCLE_RISE = 25.0, 1e4, 0.3
"""The ``onecycle`` schedule (Smith and Topin 2019, torch's ``OneCycleLR`` defaults): from lr/25 up to lr
over the first 30 % of the run (or over ``warmup_epochs`` when given), then down to lr/25/1e4, both cosine."""
EVAL_BATCH = 512
"""Validation runs without gradients, so a larger batch only saves Python overhead."""


def check_classifier(spec: Spec, input_shape: tuple[int, ...], num_classes: int | None) -> int:
    """Check that ``spec`` maps one input ``[B, *input_shape]`` to logits ``[B, num_classes]`` (any fixed
    class count when ``num_classes`` is None) and return the class count. Errors point at the spec's
    ``inputs:``/``outputs:`` and name its ``num_classes`` parameter when it has one, the usual fix."""
    graph = spec.graph
    inputs = list(graph.inputs.items())
    if len(inputs) != 1 or tuple(inputs[0][1].shape[1:]) != tuple(input_shape):
        raise SpecError("the spec's input does not take the dataset's samples",
                        location=graph.input_locations.get(inputs[0][0], Location(spec.document.file)),
                        expected=f"one input [B, {', '.join(map(str, input_shape))}]",
                        found=", ".join(f"{name}: {t}" for name, t in inputs))
    outputs = list(graph.outputs.values())
    logits = graph.type_of(outputs[0]) if len(outputs) == 1 else None
    if logits is None or not is_logits(logits, num_classes):
        found = ", ".join(str(graph.type_of(v)) for v in outputs)
        params = graph.meta.get("params", {})
        if "num_classes" in params:
            found += f" (the spec's num_classes parameter is {params['num_classes']!r})"
        hint = (f"--set num_classes={num_classes}, or nasforge.load(..., num_classes={num_classes})"
                if "num_classes" in params and num_classes else None)
        raise SpecError("the spec's output is not class logits for the dataset", location=graph.outputs_location,
                        expected=f"one floating output [B, {num_classes or 'K'}]", found=found, hint=hint)
    return int(logits.shape[1])


def is_logits(t: TensorType, num_classes: int | None) -> bool:
    """Whether ``t`` is ``[B, num_classes]`` floating (``[B, K]`` for any fixed ``K`` when None)."""
    return (len(t.shape) == 2 and isinstance(t.shape[0], Sym) and isinstance(t.shape[1], int)
            and t.dtype in FLOAT_DTYPES and num_classes in (None, t.shape[1]))


@dataclass
class Trainer:
    """Train a spec briefly on ``dataset``; ``trainer(spec)`` returns ``{"accuracy", "train_loss"}``.

    ``lr`` defaults per optimizer (0.1 for SGD with Nesterov momentum, 1e-3 for Adam/AdamW);
    ``schedule`` is cosine, step, constant or onecycle, after a linear warmup of ``warmup_epochs`` (onecycle
    rises over them instead); ``max_batches_per_epoch`` caps an epoch for large datasets; ``progress`` shows
    a rich progress bar. ``train_loss`` is the mean loss of the last epoch, ``inf`` when training diverged
    (it then stops early and evaluates the network as it is, so a search ranks it last rather than crashing).
    ``origin`` says where options came from (file positions of a ``training:`` section), for errors; an
    option not in it came from the command line (``--warmup-epochs``).
    """

    dataset: Dataset
    epochs: int = 3
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    seed: int = 0
    max_batches_per_epoch: int | None = None
    progress: bool = False
    origin: Mapping[str, Location] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_options(self.options(), lambda name: self.origin.get(name, Location(f"--{name.replace('_', '-')}")))

    @classmethod
    def for_spec(cls, dataset: Dataset, spec: Spec, overrides: Mapping[str, Any] | None = None,
                 **settings: Any) -> "Trainer":
        """A trainer with the spec's ``training:`` options, ``overrides`` (command-line options; None
        means not given) on top; ``settings`` are the rest (seed, progress)."""
        section, locations = training_section(spec.document.raw)
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        origin = {k: where for k, where in locations.items() if k not in given}
        return cls(dataset, **{**section, **given}, **settings, origin=origin)

    def options(self) -> dict[str, Any]:
        """The training options as given (``lr`` None: the optimizer's default)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in OPTIONS}

    def settings(self) -> dict[str, Any]:
        """What a study records with each trained trial: every option with its effective value, the
        dataset and the seed (two accuracies compare only when these agree)."""
        return {"dataset": self.dataset.name, **self.options(), "lr": self.learning_rate, "seed": self.seed}

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr

    @property
    def steps_per_epoch(self) -> int:
        """Full batches per epoch (a ragged last batch is dropped: a batch of one breaks batch norm)."""
        steps = max(1, len(self.dataset.train) // self.batch_size)
        return min(steps, self.max_batches_per_epoch or steps)

    def __call__(self, spec: Spec) -> dict[str, float]:
        check_classifier(spec, self.dataset.input_shape, self.dataset.num_classes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = spec.build()
            train_loss = self.fit(model, f"training {spec.name}")
        return {"accuracy": accuracy(model, self.dataset.val), "train_loss": train_loss}

    def fit(self, model: nn.Module, label: str = "training") -> float:
        """Train ``model`` in place (left in train mode); the mean loss of the last epoch (``inf`` if it
        diverged). Data order comes from its own generator, so it does not depend on how many random
        numbers the model drew."""
        images, labels = self.dataset.train.tensors
        order = torch.Generator().manual_seed(self.seed)
        steps = self.steps_per_epoch
        extra = {"momentum": self.momentum, "nesterov": self.momentum > 0} if self.optimizer == "sgd" else {}
        opt = OPTIMIZERS[self.optimizer](model.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay,
                                         **extra)
        total = self.epochs * steps
        warmup = round(self.warmup_epochs * steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(self.schedule, total, warmup))
        loss_fn = nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)
        model.train()
        epoch_loss = math.inf
        with progress_bar(total, label, self.progress) as advance:
            for _ in range(self.epochs):
                perm = torch.randperm(len(labels), generator=order)
                losses = []
                for step in range(steps):
                    idx = perm[step * self.batch_size:(step + 1) * self.batch_size]
                    loss = loss_fn(model(images[idx]), labels[idx])
                    if not torch.isfinite(loss):
                        return math.inf
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    scheduler.step()
                    losses.append(loss.item())
                    advance(losses[-1])
                epoch_loss = sum(losses) / len(losses)
        return epoch_loss


def lr_factor(schedule: str, total_steps: int, warmup_steps: int = 0) -> Callable[[int], float]:
    """The learning-rate multiplier at each step (``LambdaLR``): a linear warmup over ``warmup_steps``
    (reaching the full rate at its last step), then the schedule over the remaining steps: cosine decay to
    zero, tenfold steps at :data:`STEP_MILESTONES`, constant; ``onecycle`` is a rise and a fall of its own."""
    if schedule == "onecycle":
        rise = warmup_steps or max(1, round(ONECYCLE_RISE * total_steps))
        fall = max(1, total_steps - rise)
        low, final = 1 / ONECYCLE_DIV, 1 / ONECYCLE_DIV / ONECYCLE_FINAL_DIV
        return lambda step: (cosine_ramp(low, 1.0, step / rise) if step < rise
                             else cosine_ramp(1.0, final, min(1.0, (step - rise) / fall)))
    decay: Callable[[float], float] = {
        "cosine": lambda p: cosine_ramp(1.0, 0.0, p),
        "step": lambda p: STEP_GAMMA ** sum(p >= m for m in STEP_MILESTONES),
        "constant": lambda p: 1.0,
    }[schedule]
    span = max(1, total_steps - warmup_steps)
    return lambda step: (step + 1) / warmup_steps if step < warmup_steps else decay((step - warmup_steps) / span)


def cosine_ramp(start: float, end: float, progress: float) -> float:
    """From ``start`` (progress 0) to ``end`` (progress 1) along half a cosine."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def accuracy(model: nn.Module, data: torch.utils.data.TensorDataset) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` (switched to eval mode) on ``data``."""
    images, labels = data.tensors
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in zip(images.split(EVAL_BATCH), labels.split(EVAL_BATCH)):
            correct += int((model(x).argmax(dim=1) == y).sum())
    return correct / len(labels)


@contextmanager
def progress_bar(total: int, label: str, enabled: bool) -> Iterator[Callable[[float], None]]:
    """A function to call once per step with its loss: advances a transient rich bar when enabled
    (rich is a nasforge dependency), does nothing otherwise."""
    if not enabled:
        yield lambda loss: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(label, total=total, loss=math.nan)

        def advance(loss: float) -> None:
            bar.update(task, advance=1, loss=loss)

        yield advance
