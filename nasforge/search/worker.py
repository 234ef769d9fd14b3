"""Workers: processes that evaluate the trials of one study until its budget of completed trials is met.

One loop (:func:`work`) serves ``nasforge search`` (one process), ``nasforge search --workers N`` (N local
processes) and ``nasforge worker --storage URL --study NAME`` (a process on any machine that reaches the
study's database: PostgreSQL across machines, SQLite on one). A worker needs only the URL and the name: the
study records its space (the YAML text, checked against the recorded hash when read back), strategy,
objectives, constraints, budget and evaluation settings (:func:`join`).

The budget counts COMPLETE trials, exactly:

* before each trial a worker counts the study's trials in the database; when the completed ones plus those
  running elsewhere reach the budget it starts nothing and waits (a running trial may still fail, and then
  the budget needs another), and it stops once the completed ones alone reach it;
* two workers can still both start the last trial. Each finishes its trial under a per-study lock
  (:class:`nasforge.search.storage.StudyLock`) and, inside it, records the trial COMPLETE only while fewer
  than ``budget`` are; otherwise the trial is PRUNED with the user attribute ``over_budget`` (its network
  was evaluated; it does not count, and it is not failed work to retry);
* a worker that dies mid-trial stops its heartbeat; ``grace_s`` later the next worker about to start a trial
  marks that trial FAIL and queues its decisions again (Optuna's ``RetryHeartbeatStaleTrialCallback``: the
  retry's system attribute ``failed_trial`` names the dead trial), and a live worker evaluates them.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import socket
import subprocess
import sys
import time
import warnings
from collections import Counter
from typing import Any, Callable

import optuna
from optuna.storages._heartbeat import BaseHeartbeat, get_heartbeat_thread
from optuna.trial import FrozenTrial, TrialState

from nasforge.errors import Location, SpecError
from nasforge.search.storage import (MEMORY_STORAGE, STORAGE_ENV, StudyLock, open_storage, orphaned_trials,
                                     redact, tally)
from nasforge.search.study import GRACE_S, HEARTBEAT_S, MAX_RETRY, Search, space_hash

DELAY_ENV = "NASFORGE_TRIAL_DELAY_S"
"""Seconds every trial of this process pauses once evaluated, before its result is recorded: a fault drill
(kill a worker mid-trial and watch the study recover), used by the tests."""
POLL_S = 0.5
"""How often a worker with nothing to start looks again (while the last trials run elsewhere)."""
EVALUATION_ERRORS = (SpecError, RuntimeError, ValueError)
"""What a candidate's evaluation may raise without stopping the worker: the trial fails and is replaced."""
LOCAL_ARGS = frozenset({"func", "command", "spec", "set", "variant", "storage", "study", "json", "output", "top",
                        "workers"})
"""``nasforge search`` options that concern this invocation, not how candidates are evaluated."""
_log = logging.getLogger(__name__)
OnTrial = Callable[[optuna.Study, FrozenTrial], None]


def work(search: Search, on_trial: OnTrial | None = None, poll_s: float = POLL_S) -> optuna.Study:
    """Evaluate trials of ``search``'s study until its budget of completed trials is met (see the module
    docstring); ``on_trial`` sees every trial this process finishes."""
    study = search.open_study()
    lock = StudyLock(study)
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    started, limit = 0, 10 * search.budget + 10
    known = search.replay(study)  # completed trials the strategy has been told (a scan costs O(trials))
    while True:
        fail_stale_trials(study)
        counts = tally(study)
        if counts[TrialState.COMPLETE] > known:  # other workers finished trials: learn from them
            known = search.replay(study)
        if counts[TrialState.COMPLETE] >= search.budget:
            return study
        if counts[TrialState.COMPLETE] + counts[TrialState.RUNNING] >= search.budget:
            time.sleep(poll_s)
            continue
        if started >= limit:
            raise SpecError("too many candidates fail", location=Location("--budget"),
                            expected="a space whose members build and evaluate",
                            found=f"{counts[TrialState.FAIL]} failed trials")
        started += 1
        with warnings.catch_warnings():  # "heartbeat ... with Study.optimize": this loop runs it, as optimize does
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            trial = study.ask()
        try:
            if search.worker:
                trial.set_user_attr("worker", search.worker)
            values, error = evaluate(search, study, trial, delay)
        except optuna.exceptions.UpdateFinishedTrialError:  # a write found the trial ended by another worker
            dropped(trial)
            continue
        frozen = finish(study, lock, trial, values, error, search.budget)
        if frozen is not None and frozen.state == TrialState.COMPLETE:
            known += 1
        if frozen is not None and on_trial is not None:
            on_trial(study, frozen)


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the trials of dead workers and queue their decisions again: those whose heartbeat went silent
    (Optuna's check, which its own optimize loop runs) and those that never had one."""
    with warnings.catch_warnings():  # "experimental" in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    storage = study._storage  # noqa: SLF001
    retry = storage.get_heartbeat_stale_trial_callback() if isinstance(storage, BaseHeartbeat) else None
    for trial_id in orphaned_trials(study):
        try:
            failed_now = storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker got there first
            continue
        if failed_now and retry is not None:
            retry(study, copy.deepcopy(storage.get_trial(trial_id)))


def evaluate(search: Search, study: optuna.Study, trial: optuna.Trial,
             delay: float) -> tuple[list[float] | None, BaseException | None]:
    """Run the objective while a heartbeat says this process is alive; an error of the candidate is
    returned (the trial fails), any other is raised after the trial is marked failed."""
    with get_heartbeat_thread(trial._trial_id, study._storage):  # noqa: SLF001 (what Study.optimize does)
        try:
            values = search.objective(trial)
            time.sleep(delay)  # after the decisions, before the result: where a fault drill kills a worker
            return values, None
        except optuna.exceptions.UpdateFinishedTrialError:  # a RuntimeError, but no fault of the candidate's
            raise  # another worker ended the trial: nothing to record here (work drops it)
        except EVALUATION_ERRORS as err:
            return None, err
        except BaseException:
            record_failure(study, trial, "interrupted")
            raise


def finish(study: optuna.Study, lock: StudyLock, trial: optuna.Trial, values: list[float] | None,
           error: BaseException | None, budget: int) -> FrozenTrial | None:
    """Record the trial: FAIL on an error; COMPLETE while the study has fewer than ``budget`` completed
    trials, decided under the study's lock; PRUNED as ``over_budget`` otherwise. None when another process
    already ended the trial (its heartbeat looked stale, say after the database was away longer than the
    grace period, and it was failed and retried): its result is dropped."""
    if error is not None:
        message = getattr(error, "message", None) or str(error)
        _log.warning("trial %d failed: %s", trial.number, message)
        return record_failure(study, trial, message)
    try:
        with lock.held():
            if tally(study)[TrialState.COMPLETE] < budget:
                frozen = study.tell(trial, values, skip_if_finished=True)
            else:
                trial.set_user_attr("over_budget", True)
                frozen = study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        frozen = None
    if frozen is None or frozen.state == TrialState.FAIL:
        dropped(trial)
        return None
    return frozen


def dropped(trial: optuna.Trial) -> None:
    """Say that another worker ended this process's trial and it goes on without it: the heartbeat looked
    stale to the other worker (the database was away longer than the grace period, or this process stalled),
    so the trial was failed and its decisions queued again, and whatever this process measured is dropped."""
    _log.warning("trial %d was ended by another worker (its heartbeat looked stale) and retried; this result "
                 "is dropped", trial.number)


def record_failure(study: optuna.Study, trial: optuna.Trial, message: str) -> FrozenTrial | None:
    try:
        trial.set_user_attr("error", message.splitlines()[0][:500] if message else "")
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    return study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


def settings_of(args: Any) -> dict[str, Any]:
    """The ``nasforge search`` options that decide how candidates are evaluated (recorded in the study for
    workers), leaving out those about this invocation and anything not plain data."""
    return {k: v for k, v in vars(args).items()
            if k not in LOCAL_ARGS and isinstance(v, (str, int, float, bool, list, type(None)))}


def join(url: str, study_name: str, worker: str) -> Search:
    """The search a study records, rebuilt from the study alone (``url`` and ``study_name``), ready to
    :func:`work` as ``worker``. The space is the recorded text, refused unless it hashes to the recorded
    space hash."""
    import nasforge
    from nasforge.cli import build_parser, make_evaluator
    from nasforge.search.objectives import Constraint, Objective

    storage = open_storage(url, HEARTBEAT_S, GRACE_S, MAX_RETRY)
    try:
        attrs = optuna.load_study(study_name=study_name, storage=storage).user_attrs
    except KeyError:
        raise SpecError(f"no study named {study_name!r} in {redact(url)}", location=Location("--study"),
                        expected="a study that `nasforge search --study NAME` created",
                        found=repr(study_name)) from None
    where = Location(f"study {study_name}")
    if "space_yaml" not in attrs or "settings" not in attrs:
        raise SpecError(f"study {study_name!r} does not record its search", location=where,
                        expected="a study created by `nasforge search` (nasforge 0.1 or later)",
                        found="no space_yaml/settings attributes", hint="continue it with `nasforge search` instead")
    spec = nasforge.loads(attrs["space_yaml"], f"<study {study_name}: space>")
    if space_hash(spec) != attrs["space_hash"]:
        raise SpecError(f"the space recorded in study {study_name!r} does not match its hash", location=where,
                        expected=f"space hash {attrs['space_hash']}", found=space_hash(spec),
                        hint="the study's attributes were changed after it was created; do not trust this study")
    import torch

    args = build_parser().parse_args(["search", "<study>"])  # today's defaults, then what the study recorded
    vars(args).update(attrs["settings"])
    torch.set_num_threads(args.threads)  # as `nasforge search` does
    objectives = [Objective.parse(o) for o in attrs["objectives"]]
    constraints = [Constraint.parse(c) for c in attrs["constraints"]]
    return Search(spec, attrs["strategy"], objectives, constraints, attrs["budget"], url, study_name, attrs["seed"],
                  make_evaluator(args, spec, objectives, constraints), attrs.get("strategy_options", {}),
                  attrs["heartbeat_s"], attrs["grace_s"], settings=attrs["settings"], worker=worker)


def run_local(search: Search, count: int, progress: Callable[[int], None], poll_s: float = POLL_S) -> optuna.Study:
    """``nasforge search --workers N``: create (or open) the study, start ``count`` ``nasforge worker``
    processes on it (the URL travels in their environment, not on their command line), report the completed
    count while they work, and stop them all if this process is interrupted. Fails if a worker failed (its
    error went to the shared stderr)."""
    if search.storage == MEMORY_STORAGE:
        raise SpecError("worker processes need a storage they share", location=Location("--storage"),
                        expected="sqlite:///PATH.db or postgresql://...", found=MEMORY_STORAGE)
    study = search.open_study()  # records what the workers rebuild the search from
    env = {**os.environ, STORAGE_ENV: search.storage}
    procs = [subprocess.Popen([sys.executable, "-m", "nasforge.cli", "worker", "--study", study.study_name,
                               "--name", f"{default_worker_name()}-{i}", "--json"], env=env, stdout=subprocess.DEVNULL)
             for i in range(count)]
    try:
        while any(p.poll() is None for p in procs):
            progress(min(tally(study)[TrialState.COMPLETE], search.budget))
            time.sleep(poll_s)
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
        raise
    progress(min(tally(study)[TrialState.COMPLETE], search.budget))
    codes = [p.returncode for p in procs]
    if any(codes):
        raise SpecError("a worker failed", location=Location("--workers"), expected="every worker to exit 0",
                        found="exit codes " + ", ".join(map(str, codes)), hint="see the worker's message above")
    return study


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def run_worker(url: str | None, study_name: str, name: str | None) -> dict[str, Any]:
    """``nasforge worker``: join the study at ``url`` and work until its budget is met; returns what this
    process did."""
    if not url:
        raise SpecError("a worker needs the study's storage", location=Location("--storage"),
                        expected=f"--storage URL or the environment variable {STORAGE_ENV}", found="neither")
    name = name or default_worker_name()
    search = join(url, study_name, name)
    mine: Counter[str] = Counter()

    def count(study: optuna.Study, trial: FrozenTrial) -> None:
        mine["over_budget" if trial.user_attrs.get("over_budget") else trial.state.name.lower()] += 1

    study = work(search, count)
    totals = tally(study)
    return {"worker": name, "study": study_name, "storage": redact(url), "budget": search.budget,
            "evaluated": dict(mine), "study_completed": totals[TrialState.COMPLETE],
            "study_failed": totals[TrialState.FAIL]}


def print_report(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report))
        return
    mine = ", ".join(f"{n} {state}" for state, n in sorted(report["evaluated"].items())) or "no trials"
    print(f"worker {report['worker']}: {mine}; study {report['study']} has {report['study_completed']}/"
          f"{report['budget']} completed trials ({report['study_failed']} failed) in {report['storage']}")
