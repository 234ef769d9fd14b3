"""Helpers of the worker tests: a small space with cheap objectives, a study created the way `nasforge search`
creates one (with a short heartbeat so that a killed worker's trial is taken over within seconds), and
`nasforge worker` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import optuna

import nasforge
from nasforge.search.objectives import Objective
from nasforge.search.storage import STORAGE_ENV
from nasforge.search.study import Search
from nasforge.search.worker import DELAY_ENV

# 4^6 = 4,096 networks whose parameter counts and MACs differ: cheap objectives, few duplicates
OPS = "[relu, tanh, sigmoid, gelu]"
SPACE = "inputs: {x: [B, 8]}\ngraph:\n" + "".join(
    f"  - {{id: fc{i}, op: linear, out: {{choice: [4, 8, 16, 32]}}}}\n  - {{id: act{i}, op: {{op_choice: {OPS}}}}}\n"
    for i in range(3)) + "  - {id: head, op: linear, out: 2}\n"
HEARTBEAT_S, GRACE_S = 1, 2
OBJECTIVES = [Objective.parse("params:min"), Objective.parse("macs:max")]


def create_study(tmp_path: Path, url: str, name: str, budget: int) -> optuna.Study:
    """A study as `nasforge search` leaves it before its first trial: its search recorded, nothing run."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    search = Search(nasforge.load(space), "random", OBJECTIVES, budget=budget, storage=url, study_name=name,
                    heartbeat_s=HEARTBEAT_S, grace_s=GRACE_S, settings={"threads": 1})
    return search.open_study()


def start_worker(url: str, study: str, name: str, delay_s: float = 0.0) -> subprocess.Popen:
    """A `nasforge worker` process (the URL in its environment, as `search --workers` passes it)."""
    env = {**os.environ, STORAGE_ENV: url, DELAY_ENV: str(delay_s), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "nasforge.cli", "worker", "--study", study, "--name", name,
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen, limit_s: float = 300) -> dict:
    """Wait for a worker; its JSON report (it must succeed)."""
    out, err = proc.communicate(timeout=limit_s)
    assert proc.returncode == 0, err
    return json.loads(out)


def wait_until(condition: Callable[[], bool], limit_s: float, what: str, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {limit_s:.0f} s")
        time.sleep(poll_s)


def check_exact_budget(study: optuna.Study, budget: int) -> list[optuna.trial.FrozenTrial]:
    """The invariants of a finished study: exactly ``budget`` completed trials, nothing left running or
    queued, and every trial beyond the budget is a pruned ``over_budget`` one (evaluated, not counted).
    Returns the completed trials."""
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == budget
    assert not [t for t in trials if not t.state.is_finished()], "a trial was left running or queued"
    for t in trials:
        if t.state == optuna.trial.TrialState.PRUNED:
            assert t.user_attrs.get("over_budget") is True
    return done
