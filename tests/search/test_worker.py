"""Workers on SQLite (one machine): a worker rebuilds the search from the study alone and refuses a tampered
space; the budget of completed trials is exact when workers race for the last trial (the per-study lock,
the over-budget trial pruned); worker processes and `search --workers N` share one study; `study export`
refuses a tampered spec; storage errors are retried while transient; nothing is unpickled; a storage URL's
password is never shown."""

from __future__ import annotations

import json
import pickle
import sqlite3
import threading
import time
from collections import Counter

import optuna
import pytest
from sqlalchemy.exc import OperationalError

from nasforge.errors import SpecError
from nasforge.search.storage import StudyLock, open_storage, redact, redact_text, with_retries
from nasforge.search import study as study_module
from nasforge.search.study import Search, space_hash
from nasforge.search.worker import finish, join, work
from tests.search.test_study import run_cli
from tests.search.workers import (GRACE_S, HEARTBEAT_S, OBJECTIVES, SPACE, check_exact_budget, create_study,
                                  start_worker)
from tests.search.workers import finish as finish_worker

COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


def test_a_worker_rebuilds_the_search_from_the_study_alone(tmp_path):
    url = sqlite_url(tmp_path)
    created = create_study(tmp_path, url, "s", budget=5)
    (tmp_path / "space.yaml").unlink()  # a worker elsewhere has no copy of the space file
    search = join(url, "s", "w0")
    assert isinstance(search, Search)
    assert space_hash(search.spec) == created.user_attrs["space_hash"]
    assert (search.strategy, search.budget, search.seed) == ("random", 5, 0)
    assert search.objectives == OBJECTIVES and (search.heartbeat_s, search.grace_s) == (HEARTBEAT_S, GRACE_S)
    study = work(search)
    done = check_exact_budget(study, 5)
    assert {t.user_attrs["worker"] for t in done} == {"w0"}


def test_a_worker_refuses_a_space_changed_in_the_study(tmp_path):
    url = sqlite_url(tmp_path)
    study = create_study(tmp_path, url, "s", budget=5)
    study.set_user_attr("space_yaml", study.user_attrs["space_yaml"].replace("out: 2", "out: 3"))
    with pytest.raises(SpecError, match="the space recorded in study 's' does not match its hash") as err:
        join(url, "s", "w0")
    assert err.value.expected == f"space hash {study.user_attrs['space_hash']}"
    with pytest.raises(SpecError, match="no study named 'other'"):
        join(url, "other", "w0")


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_two_workers_racing_for_the_last_trial_complete_it_once(tmp_path):
    url = sqlite_url(tmp_path)
    create_study(tmp_path, url, "s", budget=1)
    first, second = join(url, "s", "a"), join(url, "s", "b")
    study_a, study_b = first.open_study(), second.open_study()
    # both saw no completed trial and started one: the last slot of the budget, twice
    trial_a, trial_b = study_a.ask(), study_b.ask()
    values_a, values_b = first.objective(trial_a), second.objective(trial_b)
    frozen_a = finish(study_a, StudyLock(study_a), trial_a, values_a, None, budget=1)
    frozen_b = finish(study_b, StudyLock(study_b), trial_b, values_b, None, budget=1)
    assert frozen_a.state == COMPLETE and frozen_b.state == PRUNED
    assert frozen_b.user_attrs["over_budget"] is True and "over_budget" not in frozen_a.user_attrs
    check_exact_budget(study_a, 1)


def test_the_study_lock_lets_one_holder_in_at_a_time(tmp_path):
    url = sqlite_url(tmp_path)
    study = create_study(tmp_path, url, "s", budget=1)
    other = optuna.load_study(study_name="s", storage=open_storage(url, HEARTBEAT_S, GRACE_S, 0))
    events: list[str] = []
    held = threading.Event()

    def hold() -> None:
        with StudyLock(study).held():
            events.append("a in")
            held.set()
            time.sleep(0.3)
            events.append("a out")

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    with StudyLock(other).held():  # a separate open file: the flock excludes it as it would another process
        events.append("b in")
    thread.join()
    assert events == ["a in", "a out", "b in"]


@pytest.mark.slow
def test_two_worker_processes_share_a_sqlite_study(tmp_path):
    url = sqlite_url(tmp_path)
    create_study(tmp_path, url, "s", budget=16)
    reports = [finish_worker(p) for p in [start_worker(url, "s", f"w{i}", delay_s=0.05) for i in range(2)]]
    study = optuna.load_study(study_name="s", storage=url)
    done = check_exact_budget(study, 16)
    by_worker = Counter(t.user_attrs["worker"] for t in done)
    assert set(by_worker) == {"w0", "w1"}, by_worker  # both worked
    for report in reports:
        assert report["study_completed"] == 16 and report["evaluated"].get("complete") == by_worker[report["worker"]]
    # the two workers' random streams differ (with one stream each network would come twice: 8 distinct)
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) > 12


@pytest.mark.slow
def test_search_with_worker_processes(tmp_path, capsys):
    url = sqlite_url(tmp_path)
    (tmp_path / "space.yaml").write_text(SPACE)
    code, out, err = run_cli(capsys, "search", str(tmp_path / "space.yaml"), "--strategy", "random",
                             "--objective", "params:min", "--budget", "12", "--storage", url, "--study", "par",
                             "--workers", "2", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["completed"] == 12 and shown["failed"] == 0
    study = optuna.load_study(study_name="par", storage=url)
    done = check_exact_budget(study, 12)
    assert len({t.user_attrs["worker"] for t in done}) == 2
    assert study.user_attrs["settings"]["budget"] == 12 and "storage" not in study.user_attrs["settings"]


def test_study_export_refuses_a_spec_changed_in_the_study(tmp_path, capsys):
    url = sqlite_url(tmp_path)
    create_study(tmp_path, url, "s", budget=3)
    work(join(url, "s", "w0"))
    code, _, err = run_cli(capsys, "study", "export", "s", "--storage", url, "--top", "1", "-o", str(tmp_path / "ok"))
    assert code == 0, err
    # someone edits the recorded spec of a trial in the database
    with sqlite3.connect(tmp_path / "studies.db") as db:
        db.execute("UPDATE trial_user_attributes SET value_json = replace(value_json, 'out: 2', 'out: 5') "
                   "WHERE key = 'spec'")
    code, _, err = run_cli(capsys, "study", "export", "s", "--storage", url, "--top", "5", "-o", str(tmp_path / "no"))
    assert code == 1 and "does not match its graph hash" in err and "do not trust this spec" in err


def test_transient_storage_errors_are_retried_and_others_are_not():
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        return "ok"

    assert with_retries(flaky, retry_s=30, what="a test call") == "ok" and len(calls) == 3

    def wrong() -> None:
        calls.append(1)
        raise ValueError("a bad request is not retried")

    calls.clear()
    with pytest.raises(ValueError):
        with_retries(wrong, retry_s=30, what="a test call")
    assert len(calls) == 1


def test_a_search_unpickles_nothing(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    url = sqlite_url(tmp_path)
    create_study(tmp_path, url, "s", budget=3)
    check_exact_budget(work(join(url, "s", "w0")), 3)


def test_storage_urls_never_show_their_password(tmp_path, capsys):
    secret = "hunter22"
    url = f"postgresql://ann:{secret}@127.0.0.1:1/nas"  # nothing listens on port 1: the connection fails
    assert redact(url) == "postgresql://ann:***@127.0.0.1:1/nas"
    assert redact(f"not a url ann:{secret}@host") == "not a url ann:***@host"
    assert secret not in redact_text(f"connecting to {url} failed (password {secret})", url)
    (tmp_path / "space.yaml").write_text(SPACE)
    for argv in (["search", str(tmp_path / "space.yaml"), "--storage", url, "--budget", "1"],
                 ["study", "show", "s", "--storage", url],
                 ["worker", "--study", "s", "--storage", url]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 1 and "cannot open study storage" in err, err
        assert secret not in out + err and "ann:***@127.0.0.1:1" in err


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_retried(tmp_path):
    url = sqlite_url(tmp_path)
    study = create_study(tmp_path, url, "s", budget=3)
    orphan = study.ask()  # created, then its worker died: no heartbeat ever recorded
    orphan.suggest_categorical("fc0.out", [4, 8, 16, 32])
    time.sleep(GRACE_S + 0.5)
    study = work(join(url, "s", "w0"))
    check_exact_budget(study, 3)
    trials = study.get_trials(deepcopy=False)
    assert trials[orphan.number].state == optuna.trial.TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retries) == 1 and retries[0].state == COMPLETE
    assert retries[0].params["fc0.out"] == orphan.params["fc0.out"]


@pytest.mark.parametrize("moment", ["worker", "graph_hash"])
def test_a_trial_ended_by_another_worker_is_dropped_and_the_worker_goes_on(tmp_path, caplog, monkeypatch, moment):
    """The database was away longer than the grace period: another worker failed this worker's trial as
    stale (or as never having had a heartbeat), and this worker's next write, of its name or of the
    network it evaluates, finds the trial ended."""
    url = sqlite_url(tmp_path)
    create_study(tmp_path, url, "s", budget=3)
    other = optuna.load_study(study_name="s", storage=url)._storage  # noqa: SLF001 (another worker's handle)
    write_one, write_many, ended = optuna.Trial.set_user_attr, study_module.set_user_attrs, []

    def end_elsewhere_before(trial: optuna.Trial, keys: object) -> None:
        if moment in keys and not ended:
            other.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)  # noqa: SLF001
            ended.append(trial.number)

    monkeypatch.setattr(optuna.Trial, "set_user_attr",
                        lambda trial, key, value: (end_elsewhere_before(trial, [key]), write_one(trial, key, value)))
    monkeypatch.setattr(study_module, "set_user_attrs",
                        lambda trial, attrs: (end_elsewhere_before(trial, attrs), write_many(trial, attrs)))
    study = work(join(url, "s", "w0"))
    check_exact_budget(study, 3)
    assert study.get_trials(deepcopy=False)[ended[0]].state == optuna.trial.TrialState.FAIL
    assert f"trial {ended[0]} was ended by another worker" in caplog.text
