"""One-shot searches recorded in the same Optuna studies as multi-trial ones.

The decision: one trial per finished epoch. Its parameters are the genotype derived at the end of that
epoch (the choice labels, coded as the multi-trial engine codes them), its value the supernet's validation
accuracy, and its user attributes what the multi-trial trials carry (``assignment``, the concrete
``spec``, ``graph_hash``, ``metrics`` with params and MACs) plus the epoch, the architecture weights and
the collapse report. So ``nasforge study show/export/plot`` and the dashboard read a one-shot study as
they read any other, the genotype's history is the study's history, and the search's result is the last
epoch's trial (the study's ``final_trial`` attribute), not the one with the best supernet accuracy.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Mapping

import optuna

from nasforge import __version__
from nasforge.api import Spec
from nasforge.errors import Location, SpecError
from nasforge.search.hashing import graph_hash
from nasforge.search.space import Space
from nasforge.search.storage import MEMORY_STORAGE, open_storage
from nasforge.search.study import GRACE_S, HEARTBEAT_S, MAX_RETRY, distribution, encode, space_hash

OBJECTIVE = "accuracy:max"


def default_study_name(spec: Spec, strategy: str) -> str:
    return f"{spec.name}-{strategy}-{space_hash(spec)[:6]}"


def default_run_dir(storage: str, study_name: str) -> Path:
    """Where a search keeps its checkpoint, log and plots: ``nasforge-runs/STUDY`` beside a SQLite
    database, else in the working folder."""
    if storage.startswith("sqlite:///") and storage != MEMORY_STORAGE:
        return Path(storage.removeprefix("sqlite:///")).expanduser().resolve().parent / "nasforge-runs" / study_name
    return Path("nasforge-runs") / study_name


class OneShotStudy:
    """The study of one one-shot search: opened (or resumed) for a space and strategy, one trial per epoch."""

    def __init__(self, spec: Spec, strategy: str, storage: str, study_name: str, attrs: Mapping[str, Any]) -> None:
        self.spec = spec
        self.space = Space(spec)
        self.choices = {c.label: c for c in spec.choices}
        self.study = optuna.create_study(storage=open_storage(storage, HEARTBEAT_S, GRACE_S, MAX_RETRY),
                                         study_name=study_name, direction="maximize", load_if_exists=True)
        mine = {"space_hash": space_hash(spec), "strategy": strategy}
        for key, value in mine.items():
            found = self.study.user_attrs.get(key)
            if found is not None and found != value:
                raise SpecError(f"study {study_name!r} belongs to another search", location=Location("--study"),
                                expected=f"{key} {value}", found=f"{key} {found}",
                                hint="pick a new --study name, or search the space the study was made for")
        if "space_hash" not in self.study.user_attrs:
            for key, value in {**mine, "space": spec.name, "oneshot": True, "objectives": [OBJECTIVE],
                               "nasforge": __version__, "optuna": optuna.__version__,
                               "python": platform.python_version(), **attrs}.items():
                self.study.set_user_attr(key, value)

    @property
    def name(self) -> str:
        return self.study.study_name

    def recorded_epochs(self) -> set[int]:
        return {t.user_attrs["epoch"] for t in self.study.get_trials(deepcopy=False) if "epoch" in t.user_attrs}

    def record(self, record: Mapping[str, Any], member: Spec, final: bool) -> None:
        """Add the trial of one epoch (once: a resumed search does not record an epoch twice)."""
        if record["epoch"] not in self.recorded_epochs():
            assignment = record["assignment"]
            totals = member.check().totals
            metrics = {"accuracy": record["val_accuracy"], "train_loss": record["train_loss"],
                       "params": totals.params, "macs": totals.macs}
            trial = optuna.trial.create_trial(
                params=encode(self.space, assignment),
                distributions={label: distribution(self.choices[label]) for label in assignment},
                value=record["val_accuracy"],
                user_attrs={"epoch": record["epoch"], "assignment": json.dumps(assignment, sort_keys=True, default=str),
                            "spec": member.to_yaml(), "graph_hash": graph_hash(member.graph), "metrics": metrics,
                            "feasible": True, "genotype": record["genotype"], "collapse": record["collapse"],
                            "alphas": record["alphas"], "seconds": record["seconds"]})
            self.study.add_trial(trial)
        if final:
            number = next(t.number for t in self.study.get_trials(deepcopy=False)
                          if t.user_attrs.get("epoch") == record["epoch"])
            self.study.set_user_attr("final_trial", number)
