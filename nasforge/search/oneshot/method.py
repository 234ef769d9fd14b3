"""What every gradient-based one-shot method shares: hyperparameters and the first-order bilevel step.

DARTS, GDAS and PC-DARTS alternate two updates on two halves of the training data: the network weights
w by SGD on the training half, the architecture parameters (alpha, and PC-DARTS's beta) by Adam on the
other half. A :class:`OneShotMethod` says which supernet mode an epoch trains in, whether alpha moves
before or after w in a step, when alpha starts moving, and how alpha's gradient is taken (first order
here; DARTS's second order in :mod:`.darts`). The defaults are DARTS's (train_search.py), each method
overriding where its paper differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F

from nasforge.errors import Location, SpecError, did_you_mean
from nasforge.search.oneshot.distributed import SOLO, Batch, Group
from nasforge.search.oneshot.supernet import Supernet


@dataclass(frozen=True)
class HParams:
    """Hyperparameters of a one-shot search (``--hparam NAME=VALUE`` on the command line)."""

    epochs: int = 50
    batch_size: int = 64
    lr: float = 0.025
    """Weight learning rate, annealed by a cosine schedule (per epoch) to ``lr_min``."""
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    """Clip of the weights' gradient norm."""
    arch_lr: float = 3e-4
    arch_beta1: float = 0.5
    arch_beta2: float = 0.999
    arch_weight_decay: float = 1e-3
    train_portion: float = 0.5
    """Share of the training split that trains the weights; the rest trains the architecture."""
    warmup: float = 0.0
    """Share of the epochs before the architecture starts to move (PC-DARTS: 15 of 50)."""
    tau_max: float = 10.0
    tau_min: float = 0.1
    """GDAS's Gumbel-softmax temperature, annealed linearly from ``tau_max`` to ``tau_min`` over the epochs."""
    partial_k: int = 4
    """PC-DARTS: 1/K of the channels go through the ops."""
    unrolled_r: float = 0.01
    """DARTS (second order): the finite-difference step is ``unrolled_r / ||grad||``."""
    max_steps: int = 0
    """Steps per epoch at most (0: one pass over the weights' half)."""
    collapse_threshold: float = 0.5
    """A cell whose chosen ops are skip connections or zero ops in at least this share has collapsed."""

    @classmethod
    def make(cls, defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> "HParams":
        """The method's defaults with ``overrides`` on top, each checked for name, type and range."""
        hp = cls(**{**defaults, **numbers(cls, overrides, "hyperparameter")})
        hp.check()
        return hp

    def check(self) -> None:
        problems = [(name, rule) for name, ok, rule in (
            ("epochs", self.epochs >= 1, ">= 1"), ("batch_size", self.batch_size >= 2, ">= 2"),
            ("partial_k", self.partial_k >= 1, ">= 1"), ("max_steps", self.max_steps >= 0, ">= 0"),
            ("train_portion", 0 < self.train_portion < 1, "strictly between 0 and 1"),
            ("warmup", 0 <= self.warmup < 1, "in [0, 1)"),
            ("tau_min", 0 < self.tau_min <= self.tau_max, "0 < tau_min <= tau_max"),
            ("lr", self.lr > 0, "> 0"), ("arch_lr", self.arch_lr >= 0, ">= 0"),
            ("collapse_threshold", 0 < self.collapse_threshold <= 1, "in (0, 1]"),
        ) if not ok]
        if problems:
            name, rule = problems[0]
            raise SpecError(f"hyperparameter {name!r} is out of range", location=Location("--hparam"),
                            expected=f"{name} {rule}", found=repr(getattr(self, name)))

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def numbers(cls: type, overrides: Mapping[str, Any], what: str) -> dict[str, int | float]:
    """``overrides`` (name -> number, from ``--hparam``) checked against the fields of dataclass ``cls``:
    unknown names (with a did-you-mean) and values that are not numbers of the field's type are errors."""
    types = {f.name: f.type for f in fields(cls)}
    out: dict[str, int | float] = {}
    for name, value in overrides.items():
        if name not in types:
            raise SpecError(f"unknown {what} {name!r}", location=Location("--hparam"),
                            expected="one of " + ", ".join(types), found=repr(name),
                            hint=did_you_mean(name, list(types)))
        integral = types[name] in ("int", int)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integral and value != int(value)):
            raise SpecError(f"{what} {name!r} takes a number", location=Location("--hparam"),
                            expected=f"{name}={'an integer' if integral else 'a number'}", found=repr(value))
        out[name] = int(value) if integral else float(value)
    return out


class OneShotMethod:
    """A gradient-based one-shot method: the mode of each epoch and the architecture step."""

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    """Where the method's paper differs from DARTS's defaults."""
    arch_first: ClassVar[bool] = True
    """DARTS updates alpha before the weights in each step; GDAS after."""

    def __init__(self, net: Supernet, hp: HParams, group: Group = SOLO) -> None:
        self.net = net
        self.hp = hp
        self.group = group
        """The processes training the supernet together: every gradient is averaged over them before use."""

    def start_epoch(self, epoch: int) -> dict[str, float]:
        """Put the supernet in this epoch's mode; returns what the epoch's record should show (tau...)."""
        self.net.set_mode("mixed")
        return {}

    def arch_moves(self, epoch: int) -> bool:
        return epoch >= math.floor(self.hp.warmup * self.hp.epochs)

    def arch_step(self, train: Batch, val: Batch, w_opt: torch.optim.Optimizer,
                  a_opt: torch.optim.Optimizer) -> float:
        """First order: alpha follows the gradient of the validation loss at the current weights."""
        a_opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.net(val[0]), val[1])
        loss.backward()
        self.group.average_gradients(self.net.arch_parameters())
        a_opt.step()
        return loss.item()
