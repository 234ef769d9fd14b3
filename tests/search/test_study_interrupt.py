"""Ctrl-C: a real ``nasforge search`` process gets SIGINT in the middle of training a candidate. It says so
in one line (no traceback), exits 130, keeps every finished trial, fails the stopped one as interrupted and
queues its network; the same command with the same ``--study`` evaluates that network first and continues
to the budget."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from nasforge.search.study import completed

SPACE = """
name: tiny_mlp
inputs: {image: [B, 1, 8, 8]}
graph:
  - {id: flat, op: flatten}
  - {id: fc, op: linear, out: {choice: [16, 32, 64]}}
  - {id: act, op: {op_choice: [relu, tanh, gelu, sigmoid]}}
  - {id: head, op: linear, out: 10}
"""
BUDGET = 4
# long enough (about two seconds of training per candidate here, against a poll of well under a tenth of a
# second) that the signal lands inside a training run; at 40 epochs a candidate trained in a quarter of a
# second and a CI run once saw the search finish before the poll caught its third trial training
EPOCHS = "400"


def search(tmp_path: Path) -> subprocess.Popen:
    (tmp_path / "space.yaml").write_text(SPACE)
    command = [sys.executable, "-m", "nasforge.cli", "search", "space.yaml", "--dataset", "digits", "--epochs", EPOCHS,
               "--objective", "accuracy", "--strategy", "random", "--budget", str(BUDGET),
               "--storage", "sqlite:///studies.db", "--study", "stopped"]
    return subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=sigint_default)


def sigint_default() -> None:
    """In the child before it starts Python: Ctrl-C's default action. A process started in the background
    of a non-interactive shell (``nohup pytest &``) ignores SIGINT, its children inherit that, and Python
    then installs no KeyboardInterrupt handler: the search would rightly ignore the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def trials(tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="stopped", storage=f"sqlite:///{tmp_path / 'studies.db'}").trials
    except KeyError:  # not created yet
        return []


@pytest.mark.slow
def test_ctrl_c_mid_trial_keeps_the_finished_trials_and_resumes(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    first = search(tmp_path)
    deadline = time.monotonic() + 300
    while True:  # until two trials are done and a third is training (its decisions are recorded)
        seen = trials(tmp_path)
        states = [t.state for t in seen]
        if states.count(optuna.trial.TrialState.COMPLETE) >= 2 and any(
                t.state == optuna.trial.TrialState.RUNNING and "graph_hash" in t.user_attrs for t in seen):
            break
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the search never reached its third trial"
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("nasforge: interrupted: study 'stopped': 2 of 4 trials complete; trial 2 was stopped")
    assert "--study stopped" in err

    after = trials(tmp_path)
    assert [t.state.name for t in after] == ["COMPLETE", "COMPLETE", "FAIL", "WAITING"]
    stopped, queued = after[2], after[3]
    assert stopped.user_attrs["error"] == "interrupted"
    assert queued.params == stopped.params and queued.system_attrs["failed_trial"] == 2
    assert queued.user_attrs == {}  # the retry starts clean

    second = search(tmp_path)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    final = trials(tmp_path)
    study = optuna.load_study(study_name="stopped", storage=f"sqlite:///{tmp_path / 'studies.db'}")
    assert completed(study) == BUDGET
    # nothing finished before the signal changed; the stopped network was evaluated first on resuming
    for before in after[:2]:
        assert (final[before.number].values, final[before.number].user_attrs) == (before.values, before.user_attrs)
    assert final[3].state == optuna.trial.TrialState.COMPLETE and final[3].params == stopped.params
    assert "error" not in final[3].user_attrs
    assert [t.state.name for t in final].count("FAIL") == 1
