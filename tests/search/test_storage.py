"""Study storage helpers that are not about workers: attributes written in one transaction."""

from __future__ import annotations

import optuna
import sqlalchemy

from nasforge.search.storage import open_storage, rdb_of, set_user_attrs

ATTRS = {"metrics": {"params": 10.0}, "feasible": True, "seconds": 0.25, "spec": "name: x\n"}


def test_user_attributes_are_written_in_one_commit_on_an_rdb_storage(tmp_path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'studies.db'}", heartbeat_s=60, grace_s=120, max_retry=1)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    commits: list[int] = []
    engine = rdb_of(study).engine
    sqlalchemy.event.listen(engine, "commit", lambda _conn: commits.append(1))
    set_user_attrs(trial, ATTRS)
    assert len(commits) == 1
    assert trial.user_attrs == ATTRS  # the trial object is kept in step
    study.tell(trial, 1.0)
    assert study.trials[0].user_attrs == ATTRS  # and the database holds them


def test_user_attributes_fall_back_to_one_call_each_in_memory() -> None:
    study = optuna.create_study()
    trial = study.ask()
    set_user_attrs(trial, ATTRS)
    study.tell(trial, 1.0)
    assert study.trials[0].user_attrs == ATTRS
