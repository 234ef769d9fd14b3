"""Workers against a real PostgreSQL server (started privately for the session; see conftest.py).

Fault drills: four workers, one SIGKILLed in the middle of a trial and another killed and started again; a
whole `search --workers 2` process group killed and the search restarted; the server stopped for seconds
under working workers. Each study must end with exactly its budget of completed trials, nothing left
running, every killed trial FAIL and retried once. Plus: the budget lock on PostgreSQL, and a password in the
storage URL never shown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest

from nasforge.search.storage import StudyLock, open_storage
from nasforge.search.worker import DELAY_ENV, finish, join, run_worker
from tests.search.test_study import run_cli
from tests.search.workers import (GRACE_S, HEARTBEAT_S, SPACE, check_exact_budget, create_study, start_worker,
                                  wait_until)
from tests.search.workers import finish as finish_worker

pytestmark = pytest.mark.postgres
COMPLETE, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url, HEARTBEAT_S, GRACE_S, 0))


def evaluating(study: optuna.Study, worker: str) -> optuna.trial.FrozenTrial | None:
    """The trial ``worker`` is in, once its decisions are made (it pauses there: the fault-drill delay)."""
    return next((t for t in running(study) if t.user_attrs.get("worker") == worker and "metrics" in t.user_attrs),
                None)


def completed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(COMPLETE,)))


def running(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))


def check_retried_once(study: optuna.Study, killed: list[optuna.trial.FrozenTrial]) -> None:
    """Each killed trial is FAIL and was retried until one retry completed (a retry killed too is FAIL);
    the retries repeat the decisions the trial had made (none when it was killed before its first one,
    maybe even before its first heartbeat: then it is found as an orphan)."""
    trials = study.get_trials(deepcopy=False)
    for dead in killed:
        failed = trials[dead.number]
        assert failed.state == FAIL
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
        assert [t.state for t in retries if t.state != FAIL] == [COMPLETE]
        if failed.params:
            assert all(t.params == failed.params for t in retries)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_the_last_trial_is_completed_once_on_postgres(tmp_path, postgres_url):
    create_study(tmp_path, postgres_url, "s", budget=1)
    first, second = join(postgres_url, "s", "a"), join(postgres_url, "s", "b")
    study_a, study_b = first.open_study(), second.open_study()
    trial_a, trial_b = study_a.ask(), study_b.ask()
    values_a, values_b = first.objective(trial_a), second.objective(trial_b)
    # b finishes while a holds the lock: b waits, then finds the budget met
    lock_a = StudyLock(study_a)
    with lock_a.held():
        done = []
        thread = threading.Thread(target=lambda: done.append(
            finish(study_b, StudyLock(study_b), trial_b, values_b, None, budget=1)))
        thread.start()
        time.sleep(0.3)
        assert not done  # blocked on the advisory lock
        assert study_a.tell(trial_a, values_a).state == COMPLETE
    thread.join(30)
    assert done[0].state == optuna.trial.TrialState.PRUNED and done[0].user_attrs["over_budget"] is True
    check_exact_budget(load(postgres_url, "s"), 1)


def test_a_password_in_the_storage_url_is_never_shown(tmp_path, postgres_url, capsys):
    secret = "s3cret-Pa55"
    url = postgres_url.replace("://nasforge@", f"://nasforge:{secret}@")  # trust auth ignores it
    (tmp_path / "space.yaml").write_text(SPACE)
    code, out, err = run_cli(capsys, "search", str(tmp_path / "space.yaml"), "--objective", "params:min",
                             "--budget", "2", "--storage", url, "--study", "r")
    assert code == 0, err
    assert secret not in out + err and "nasforge:***@127.0.0.1" in out
    study = load(postgres_url, "r")
    recorded = json.dumps([study.user_attrs] + [[t.user_attrs, t.system_attrs] for t in study.trials])
    assert secret not in recorded
    report = run_worker(url, "r", "w")
    assert secret not in json.dumps(report) and report["storage"].startswith("postgresql://nasforge:***@")
    code, out, err = run_cli(capsys, "study", "show", "missing", "--storage", url)
    assert code == 1 and secret not in out + err and "nasforge:***@" in err


@pytest.mark.slow
def test_four_workers_one_killed_mid_trial_another_restarted(tmp_path, postgres_url):
    budget = 12
    create_study(tmp_path, postgres_url, "faults", budget)
    workers = {f"w{i}": start_worker(postgres_url, "faults", f"w{i}", delay_s=1.0) for i in range(4)}
    study = load(postgres_url, "faults")
    killed = []
    try:
        for name, sig in (("w0", signal.SIGKILL), ("w1", signal.SIGKILL)):
            wait_until(lambda: evaluating(study, name) is not None, 120, f"{name} to be in a trial")
            killed.append(evaluating(study, name))
            assert killed[-1].params  # its decisions were made: the retry must repeat them
            workers[name].send_signal(sig)
            workers[name].wait()
        assert completed(study) < budget  # the kills came in the middle of the study
        workers["w1"] = start_worker(postgres_url, "faults", "w1", delay_s=1.0)  # restarted
        reports = [finish_worker(workers[n]) for n in ("w1", "w2", "w3")]
    finally:
        for proc in workers.values():
            proc.kill()
    study = load(postgres_url, "faults")
    done = check_exact_budget(study, budget)
    check_retried_once(study, killed)
    assert {r["study_completed"] for r in reports} == {budget}
    # no trial counted twice: the survivors' completed trials and the dead workers' earlier ones add up
    by_worker = {n: sum(t.user_attrs.get("worker") == n for t in done) for n in ("w0", "w1", "w2", "w3")}
    assert sum(by_worker.values()) == budget
    assert {t.number for t in killed} <= {t.number for t in study.trials if t.state == FAIL}


@pytest.mark.slow
def test_a_killed_search_with_workers_continues_when_restarted(tmp_path, postgres_url):
    budget = 10
    create_study(tmp_path, postgres_url, "resume", budget)  # a short heartbeat, recorded for the workers
    command = [sys.executable, "-m", "nasforge.cli", "search", str(tmp_path / "space.yaml"), "--strategy", "random",
               "--objective", "params:min", "--objective", "macs:max", "--budget", str(budget),
               "--storage", postgres_url, "--study", "resume", "--workers", "2", "--json"]
    env = {**os.environ, DELAY_ENV: "0.5", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    study = load(postgres_url, "resume")
    try:
        wait_until(lambda: completed(study) >= 3 and running(study), 180, "the search to be under way")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the search and its workers, as a crash or a lost machine would
        first.communicate()
    killed = running(study)
    before = completed(study)
    assert 0 < before < budget and killed
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["completed"] == budget
    study = load(postgres_url, "resume")
    check_exact_budget(study, budget)
    check_retried_once(study, killed)


@pytest.mark.slow
def test_workers_ride_out_a_database_restart(tmp_path, postgres_url, postgres_server):
    budget = 16
    create_study(tmp_path, postgres_url, "outage", budget)
    workers = [start_worker(postgres_url, "outage", f"w{i}", delay_s=0.3) for i in range(2)]
    study = load(postgres_url, "outage")
    try:
        # both workers at work (a worker still starting up on a loaded machine would sleep through the outage)
        wait_until(lambda: {t.user_attrs.get("worker") for t in study.get_trials(deepcopy=False, states=(COMPLETE,))}
                   >= {"w0", "w1"}, 120, "a completed trial from each worker")
        postgres_server.down()  # every connection ends; new ones are refused
        time.sleep(3)
        assert all(p.poll() is None for p in workers), "a worker gave up while the database was away"
        postgres_server.up()
        outputs = [p.communicate(timeout=300) for p in workers]
    finally:
        for proc in workers:
            proc.kill()
    # a failed worker's last lines, where its error is (the retry warnings before it fill a whole screen)
    assert [p.returncode for p in workers] == [0, 0], [err.strip().splitlines()[-3:] for _, err in outputs]
    assert all("study storage unreachable" in err for _, err in outputs)  # both met the outage, and retried
    study = load(postgres_url, "outage")
    check_exact_budget(study, budget)
    assert {json.loads(out)["study_completed"] for out, _ in outputs} == {budget}
