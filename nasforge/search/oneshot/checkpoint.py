"""A one-shot search's folder: the per-epoch checkpoint and the JSON log, both written atomically.

The checkpoint holds what a killed search needs to continue exactly where its last epoch ended: supernet
weights and architecture parameters, both optimizers' states (momentum buffers, Adam moments), the learning
rate schedule, the random states (torch's global generator, which draws Gumbel noise, and the data order's
generator), the epoch records, and what identifies the search (space hash, strategy, hyperparameters). It is
a dict of tensors and plain values saved with ``torch.save`` and read with ``torch.load(weights_only=True)``,
which builds no Python object but tensors and containers, so a doctored file cannot run code. Writes go to
a temporary file in the same folder that is fsynced and then renamed over the old one: a crash leaves
the previous checkpoint or the new one, never half of either.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from nasforge.errors import Location, SpecError

CHECKPOINT = "checkpoint.pt"
LOG = "log.json"
FORMAT = 1


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a fresh temporary sibling of ``path`` (same file system, so the rename is
    atomic; the writer creates it, so it gets the usual permissions), fsync it and rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}{path.suffix}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    atomic_write(folder / CHECKPOINT, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def load_checkpoint(folder: Path, identity: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The folder's checkpoint, or None when there is none; a file that is not one, or one whose entries
    differ from ``identity`` (space hash, strategy, hyperparameters...: another search's), is the user's
    problem (a located error), not a crash and not a silent restart."""
    path = folder / CHECKPOINT
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # an unreadable or foreign file: torch raises several kinds
        raise SpecError(f"cannot read the search checkpoint: {str(err).splitlines()[0]}", location=Location(str(path)),
                        expected="a checkpoint nasforge wrote", found=type(err).__name__,
                        hint="delete it to start the search afresh") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SpecError("the search checkpoint has an unknown format", location=Location(str(path)),
                        expected=f"format {FORMAT}",
                        found=repr(state.get("format") if isinstance(state, dict) else state),
                        hint="delete it to start the search afresh")
    for key, value in (identity or {}).items():
        if state.get(key) != value:
            raise SpecError("the run folder holds another search's checkpoint", location=Location(str(folder)),
                            expected=f"{key} {value}", found=f"{key} {state.get(key)}",
                            hint="use another --study (or --run-dir), or delete the folder to start afresh")
    return state


@dataclass(frozen=True)
class Training:
    """What every one-shot search checkpoints to continue its training exactly: the supernet, each optimizer
    under its name, the schedule, torch's global random state (Gumbel noise) and the data order's generator."""

    net: nn.Module
    optimizers: Mapping[str, torch.optim.Optimizer]
    schedule: torch.optim.lr_scheduler.LRScheduler
    data_rng: torch.Generator

    def state(self) -> dict[str, Any]:
        return {"supernet": self.net.state_dict(), **{k: opt.state_dict() for k, opt in self.optimizers.items()},
                "schedule": self.schedule.state_dict(), "rng": torch.get_rng_state(), "data_rng": self.data_rng.get_state()}

    def resume(self, folder: Path, identity: Mapping[str, Any]) -> dict[str, Any] | None:
        """Load the folder's checkpoint (:func:`load_checkpoint`: it must be this search's) and put its
        training state back in place; the whole checkpoint for the rest (records, epochs done), or None."""
        state = load_checkpoint(folder, identity)
        if state is not None:
            self.load(state)
        return state

    def load(self, state: Mapping[str, Any]) -> None:
        """Put what :meth:`state` saved back in place."""
        self.net.load_state_dict(state["supernet"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])
        self.schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        self.data_rng.set_state(state["data_rng"])


def write_log(folder: Path, log: dict[str, Any]) -> None:
    text = json.dumps(log, indent=1, default=str)
    atomic_write(folder / LOG, lambda tmp: tmp.write_text(text, encoding="utf-8"))
