"""Studies: a killed search resumes without losing or repeating work, duplicates are evaluated once, a
study keeps to its space, constraints filter the leaderboard, and ``nasforge study`` shows, exports, plots."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

import nasforge
from nasforge.cli import main
from nasforge.errors import SpecError
from nasforge.search.hashing import graph_hash
from nasforge.search.objectives import Constraint, Evaluator, Objective
from nasforge.search.space import Space
from nasforge.search.study import Search, best_trials, completed, failed

# 4^8 = 65,536 networks: random search meets no network twice in a few trials
OPS = ["relu", "tanh", "sigmoid", "gelu"]
WIDE = "inputs: {x: [B, 4]}\ngraph:\n" + "".join(
    f"  - {{id: c{i}, op: {{op_choice: [{', '.join(OPS)}]}}}}\n" for i in range(8))

# A search that the test kills in its HANG_AT-th evaluation (HANG_AT 0: it runs to the end). The trainer
# scores a network by how many of its activations are ReLUs; heartbeats come every second and a trial
# silent for 2 s counts as dead, so that the resumed run can take the killed trial over quickly.
SCRIPT = """
import json, sys, time
from pathlib import Path

import nasforge
from nasforge.search.objectives import Evaluator, Objective
from nasforge.search.study import Search

space, storage, hang_at, marker = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
evaluations = 0


def trainer(spec):
    global evaluations
    evaluations += 1
    if evaluations == hang_at:
        marker.write_text("evaluating")
        time.sleep(600)
    return {"accuracy": sum(node.op == "relu" for node in spec.graph) / 8}


search = Search(nasforge.load(space), "random", [Objective.parse("accuracy:max")], budget=BUDGET,
                storage=storage, study_name="resumable", seed=3, evaluator=Evaluator(trainer=trainer),
                heartbeat_s=1, grace_s=2)
search.run()
print(json.dumps({"evaluations": evaluations}))
"""
BUDGET = 8
HANG_AT = 4
GRACE_S = 2
HEARTBEAT_S = 1


def launch(tmp_path: Path, storage: str, hang_at: int) -> subprocess.Popen:
    script = tmp_path / "search_script.py"
    script.write_text(SCRIPT.replace("BUDGET", str(BUDGET)))
    space = tmp_path / "wide.yaml"
    space.write_text(WIDE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(space), storage, str(hang_at),
                             str(tmp_path / "hanging")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def wait_for(marker: Path, proc: subprocess.Popen, limit_s: float = 300) -> None:
    """Until the search signals that it is in the hanging evaluation (it must not exit before)."""
    deadline = time.monotonic() + limit_s
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the search ended before it hung: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the search never reached the evaluation it hangs in")
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_search_resumes_without_losing_or_repeating_work(tmp_path):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    first = launch(tmp_path, storage, HANG_AT)
    wait_for(tmp_path / "hanging", first)
    before = optuna.load_study(study_name="resumable", storage=storage).trials
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert [t.state for t in before] == [optuna.trial.TrialState.COMPLETE] * (HANG_AT - 1) + [
        optuna.trial.TrialState.RUNNING]
    killed = before[-1]
    # let the killed trial's heartbeat go stale, so that the resumed run takes it for dead
    time.sleep(GRACE_S + 2 * HEARTBEAT_S)

    second = launch(tmp_path, storage, 0)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err
    study = optuna.load_study(study_name="resumable", storage=storage)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert completed(study) == BUDGET and failed(study) == 1
    assert study.trials[killed.number].state == optuna.trial.TrialState.FAIL
    # the killed trial was retried: its decisions came back in a new trial, evaluated to the end
    retries = [t for t in done if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    # nothing finished before the kill was lost or changed
    for t in before[:-1]:
        again = study.trials[t.number]
        assert (again.state, again.values, again.user_attrs) == (t.state, t.values, t.user_attrs)
    # no network was evaluated twice, and the resumed run did not propose the first run's networks again
    hashes = [t.user_attrs["graph_hash"] for t in done]
    assert not any("duplicate_of" in t.user_attrs for t in done)
    assert len(set(hashes)) == BUDGET
    assert json.loads(out)["evaluations"] == BUDGET - (HANG_AT - 1)


# an op choice between identity and a block that only wraps identity names one network twice
DUPLICATES = """
inputs: {x: [B, 4]}
blocks:
  wrapped:
    nodes: [{id: inner, op: identity}]
graph:
  - {id: fc, op: linear, out: 4}
  - {id: a, op: {op_choice: [identity, wrapped]}}
  - {id: b, op: {op_choice: [identity, wrapped]}}
  - {id: act, op: {op_choice: [relu, tanh]}}
  - {id: head, op: linear, out: 2}
"""


def test_a_network_met_again_is_not_evaluated_again(tmp_path):
    spec = nasforge.loads(DUPLICATES, "duplicates.yaml")
    evaluated = []

    def trainer(network: nasforge.api.Spec) -> dict[str, float]:
        evaluated.append(graph_hash(network.graph))
        return {"accuracy": 1.0 if any(n.op == "relu" for n in network.graph) else 0.5}

    search = Search(spec, "random", [Objective.parse("accuracy:max")], budget=8,
                    storage=f"sqlite:///{tmp_path / 's.db'}", evaluator=Evaluator(trainer=trainer))
    study = search.run()
    trials = study.trials
    assert completed(study) == 8
    # 8 decision sets but 2 networks (relu or tanh): each evaluated once, in the trial that met it first
    assert sorted(evaluated) == sorted({t.user_attrs["graph_hash"] for t in trials}) and len(evaluated) == 2
    duplicates = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert len(duplicates) == 6
    for t in duplicates:
        source = trials[t.user_attrs["duplicate_of"]]
        assert source.number < t.number and "duplicate_of" not in source.user_attrs
        assert source.user_attrs["graph_hash"] == t.user_attrs["graph_hash"]
        assert t.values == source.values and "spec" not in t.user_attrs and "spec" in source.user_attrs
    assert any(json.loads(t.user_attrs["assignment"]) != json.loads(trials[t.user_attrs["duplicate_of"]]
                                                                      .user_attrs["assignment"])
               for t in duplicates), "no two different decision sets met the same network"
    leaders = best_trials(study)
    assert [t.values[0] for t in leaders] == [1.0, 0.5]


def test_a_study_refuses_another_space_or_other_objectives(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    spec = nasforge.loads(DUPLICATES, "duplicates.yaml")
    params = [Objective.parse("params:min")]
    Search(spec, "random", params, budget=2, storage=storage, study_name="s").run()
    other = nasforge.loads(DUPLICATES.replace("out: 2", "out: 3"), "duplicates.yaml")
    with pytest.raises(SpecError, match="study 's' belongs to another space") as err:
        Search(other, "random", params, budget=4, storage=storage, study_name="s").run()
    assert "new --study" in (err.value.hint or "")
    with pytest.raises(SpecError, match="study 's' optimizes other objectives") as err:
        Search(spec, "random", [Objective.parse("macs:min")], budget=4, storage=storage, study_name="s").run()
    assert err.value.expected == "params:min" and err.value.found == "macs:min"
    # the same space and objectives continue it
    study = Search(spec, "random", params, budget=4, storage=storage, study_name="s").run()
    assert completed(study) == 4


def test_a_heartbeat_must_come_within_the_grace_period():
    spec = nasforge.loads(DUPLICATES, "duplicates.yaml")
    with pytest.raises(SpecError, match="a heartbeat must come more often than the grace period") as err:
        Search(spec, "random", [Objective.parse("params:min")], heartbeat_s=5, grace_s=5)
    assert err.value.found == "heartbeat_s=5, grace_s=5"


WIDTHS = """
inputs: {x: [B, 3, 8, 8]}
graph:
  - {id: conv, op: conv2d, out: {choice: [4, 8, 16, 32]}, kernel: {choice: [1, 3]}, padding: 1}
  - {id: pool, op: global_avg_pool, keepdim: false}
  - {id: head, op: linear, out: 10}
"""
BOUND = 400   # of the 8 networks, 16 and 32 channels with 3x3 kernels and 32 with 1x1 exceed it


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_constraints_mark_infeasible_trials_and_the_leaderboard_skips_them(tmp_path, capsys):
    space = tmp_path / "widths.yaml"
    space.write_text(WIDTHS)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    code, _, err = run_cli(capsys, "search", str(space), "--strategy", "tpe", "--objective", "params:max",
                           "--constraint", f"params<={BOUND}", "--budget", "10", "--storage", storage,
                           "--study", "c", "--seed", "2")
    assert code == 0, err
    study = optuna.load_study(study_name="c", storage=storage)
    constraint = Constraint.parse(f"params<={BOUND}")
    for t in study.trials:
        params = t.user_attrs["metrics"]["params"]
        assert t.user_attrs["feasible"] == (params <= BOUND)
        assert t.constraints == {str(constraint): max(0.0, params - BOUND)}   # what TPE reads
    feasible = [t for t in study.trials if t.user_attrs["feasible"]]
    infeasible = [t for t in study.trials if not t.user_attrs["feasible"]]
    assert feasible and infeasible
    code, out, _ = run_cli(capsys, "study", "show", "c", "--storage", storage, "--json", "--top", "3")
    shown = json.loads(out)
    assert code == 0 and shown["completed"] == 10
    best_feasible = max(t.values[0] for t in feasible)
    assert shown["best"][0]["values"] == [best_feasible]
    assert all(row["metrics"]["params"] <= BOUND for row in shown["best"])
    # skipping mattered: an infeasible network is larger than the best feasible one
    assert max(t.values[0] for t in infeasible) > best_feasible


def test_study_show_export_and_plot(tmp_path, capsys):
    space = tmp_path / "widths.yaml"
    space.write_text(WIDTHS)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    best = tmp_path / "best.yaml"
    code, _, err = run_cli(capsys, "search", str(space), "--strategy", "evolution", "--objective", "params:min",
                           "--objective", "macs:max", "--budget", "8", "--storage", storage, "--study", "pareto",
                           "-o", str(best))
    assert code == 0, err
    study = optuna.load_study(study_name="pareto", storage=storage)
    front = best_trials(study)

    code, out, _ = run_cli(capsys, "study", "show", "pareto", "--storage", storage, "--json")
    shown = json.loads(out)
    assert code == 0 and shown["study"] == "pareto" and shown["completed"] == 8 and shown["failed"] == 0
    assert [row["number"] for row in shown["best"]] == [t.number for t in front]
    assert nasforge.load(best).check().totals.params == front[0].user_attrs["metrics"]["params"]

    code, _, _ = run_cli(capsys, "study", "export", "pareto", "--storage", storage, "--top", "2",
                         "-o", str(tmp_path / "top"))
    exported = sorted((tmp_path / "top").glob("*.yaml"))
    assert code == 0 and [p.name for p in exported] == [f"rank{r}-trial{t.number}.yaml"
                                                        for r, t in enumerate(front[:2])]
    space_of = Space(nasforge.load(space))
    for path, t in zip(exported, front):
        network = nasforge.load(path)
        assert network.choices == []
        assert graph_hash(network.graph) == graph_hash(space_of.concrete(json.loads(t.user_attrs["assignment"]))
                                                       .graph) == t.user_attrs["graph_hash"]

    code, out, _ = run_cli(capsys, "study", "plot", "pareto", "--storage", storage, "-o", str(tmp_path / "plots"))
    pictures = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert code == 0 and pictures == ["history_macs.png", "history_params.png", "pareto_front.png"]
    for name in pictures:
        data = (tmp_path / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000

    code, _, err = run_cli(capsys, "study", "show", "missing", "--storage", storage)
    assert code == 1 and "no study named 'missing'" in err
