"""MetaSchedule tuning: the budget, the persistent database (reused across compiles, never tuned twice) and
two tuners writing into one database at once.

The tuning tests use one- and two-layer networks (one task per layer: a fused matmul + bias) and a few trials,
so they stay in the minutes even on two shared cores; they are in the slow set.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nasforge.backends import targets, tvm_tuning, tvm_worker
from nasforge.backends.tvm import TVMBackend
from nasforge.errors import SpecError
from tests.backends.nets import inputs_for, run_python, spec_and_module

pytest.importorskip("tvm")

ONE_LAYER = """
name: one_layer
inputs: {x: [B, 8]}
graph:
  - {id: fc, op: linear, out: 16}
"""

TWO_LAYERS = """
name: two_layers
inputs: {x: [B, 8]}
graph:
  - {id: fc, op: linear, out: 16}
  - {id: out, op: linear, out: 4}
"""
"""Shares its first workload (an 8 -> 16 linear at batch 1) with :data:`ONE_LAYER`."""


def test_the_budget_is_spent_in_rounds_within_trials_cap_and_time() -> None:
    budget = tvm_tuning.Budget(trials=40)
    assert budget.next_round_trials(spent=0, task_spent=0) == tvm_tuning.ROUND_TRIALS
    assert budget.next_round_trials(spent=32, task_spent=32) == 8  # what is left of the budget
    assert tvm_tuning.Budget(trials=100, trials_per_task=16).next_round_trials(0, 10) == 6  # the task's cap
    assert tvm_tuning.Budget(minutes=1.0).next_round_trials(0, 0) == tvm_tuning.ROUND_TRIALS
    assert tvm_tuning.Budget(trials=40).next_round_trials(0, 0, size=8) == 8
    assert tvm_tuning.Budget(minutes=1.0).next_round_trials(8, 8, seconds_per_trial=10.0) <= 6  # time left / pace
    with pytest.raises(ValueError):
        tvm_tuning.Budget()


def test_the_next_round_goes_to_the_task_most_likely_to_pay() -> None:
    def info(weight: int, untuned_ms: float) -> tvm_tuning.TaskInfo:
        return tvm_tuning.TaskInfo("t", weight, untuned_ms, 0.0, False)

    infos = [info(1, 10.0), info(3, 5.0), info(1, 1.0)]
    picker = tvm_tuning.TaskPicker(infos, [0, 1, 2])
    assert picker.next(set()) == 1  # 3 calls x 5 ms is the biggest share of the network
    infos[1].best_ms = 1.0
    picker.record(1, before_ms=15.0)  # a round that paid: 15 ms -> 3 ms
    assert picker.next(set()) == 0
    infos[0].best_ms = 9.9
    picker.record(0, before_ms=10.0)  # a round that barely paid: the task yields
    assert picker.next(set()) == 1 and picker.next({1}) == 2
    assert picker.next({0, 1, 2}) is None
    infos.append(info(1, 0.01))
    picker.candidates.append(3)
    assert picker.round_size(3) == tvm_tuning.SMALL_ROUND_TRIALS < picker.round_size(0) == tvm_tuning.ROUND_TRIALS


def test_database_location_follows_option_then_environment(tmp_path, monkeypatch) -> None:
    profile = targets.resolve("x86")
    monkeypatch.setenv(tvm_tuning.ENV_DB, str(tmp_path / "env"))
    assert tvm_tuning.database_dir(profile) == tmp_path / "env" / profile.key()
    assert tvm_tuning.database_dir(profile, tmp_path / "opt") == tmp_path / "opt" / profile.key()
    monkeypatch.delenv(tvm_tuning.ENV_DB)
    assert tvm_tuning.database_dir(profile).parent == Path("~/.cache/nasforge/tvm-tuning").expanduser()


def test_tuning_for_a_target_that_does_not_run_here_is_refused() -> None:
    profile = targets.resolve("arm64")
    if profile.runs_here()[0]:
        pytest.skip("this machine runs arm64 code")
    with pytest.raises(SpecError, match="cannot tune for target 'arm64'"):
        tvm_tuning.check_tunable(profile)


def read_database(directory: Path) -> tuple[list[str], list[list]]:
    """The raw lines of a JSON tuning database: workloads, and records as [workload index, record]."""
    workloads = (directory / tvm_tuning.WORKLOADS).read_text().splitlines()
    records = [json.loads(line) for line in (directory / tvm_tuning.RECORDS).read_text().splitlines() if line]
    return workloads, records


def assert_consistent(directory: Path) -> tuple[list[str], list[list]]:
    """Every record names an existing workload, and no workload is stored twice."""
    workloads, records = read_database(directory)
    assert len(set(workloads)) == len(workloads), "a workload was stored twice"
    assert all(0 <= rec[0] < len(workloads) for rec in records), "a record names a workload that is not there"
    return workloads, records


@pytest.mark.slow
def test_tuning_writes_records_and_the_next_compile_reuses_them(tmp_path) -> None:
    spec, gm = spec_and_module(TWO_LAYERS)
    x = inputs_for(spec, batch=1)
    options = {"tune_trials": 4, "trials_per_task": 2, "tuning_db": str(tmp_path)}  # the cap shares them out
    reports: list[dict] = []
    with tvm_worker.progress_to(reports.append):
        first = TVMBackend().compile(gm, x, "x86", options)
    tuning = first.info.tuning
    assert reports and reports[-1]["trials"] == tuning["trials"] and reports[-1]["tasks_pending"] == 2
    assert "trials" in tvm_tuning.describe_progress(reports[-1])
    assert tuning["tasks_total"] == 2 and tuning["tasks_tuned"] == 2 and tuning["tasks_from_database"] == 0
    assert 1 <= tuning["trials"] <= 4 and first.info.tuning_s > 0
    directory = Path(tuning["database"])
    assert directory.parent == tmp_path and targets.resolve("x86").key() == directory.name
    _, records = assert_consistent(directory)
    assert len(records) == tuning["records_added"] > 0
    np.testing.assert_allclose(first.run_numpy(x[0].numpy())[0], gm(*x).detach().numpy(), atol=1e-4)

    second = TVMBackend().compile(gm, x, "x86", options)
    again = second.info.tuning
    assert again["trials"] == 0 and again["tasks_tuned"] == 0 and again["tasks_from_database"] == 2
    assert second.info.tuning["applied"][""]["tasks_from_database"] == 2
    assert len(read_database(directory)[1]) == len(records)  # nothing new written
    np.testing.assert_allclose(second.run_numpy(x[0].numpy())[0], gm(*x).detach().numpy(), atol=1e-4)

    third = TVMBackend().compile(gm, x, "x86", {**options, "retune": True})  # asked to improve known tasks
    retuned = third.info.tuning
    assert retuned["trials"] > 0 and retuned["tasks_retuned"] >= 1 and retuned["tasks_from_database"] == 2
    _, after = assert_consistent(directory)
    assert len(after) == len(records) + retuned["records_added"]  # the records it started from are not copied
    assert retuned["records_added"] == retuned["trials"]  # each new measurement once
    np.testing.assert_allclose(third.run_numpy(x[0].numpy())[0], gm(*x).detach().numpy(), atol=1e-4)


TUNER = """
import sys
import nasforge
from nasforge.backends.tvm_tuning import tune
from tests.backends.nets import inputs_for, spec_and_module
from tests.backends.test_tvm_tuning import ONE_LAYER, TWO_LAYERS
spec, gm = spec_and_module({"one": ONE_LAYER, "two": TWO_LAYERS}[sys.argv[1]])
summary = tune(gm, inputs_for(spec, batch=1), "x86", trials=2, db_path=sys.argv[2])
print("SUMMARY", summary["tasks_total"], summary["records_added"])
"""


@pytest.mark.slow
def test_two_tuners_share_one_database_without_corrupting_it(tmp_path) -> None:
    import subprocess
    import sys
    import textwrap

    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(TUNER), name, str(tmp_path)], cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("one", "two")]
    outputs = [p.communicate(timeout=1800) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    added = [int(line.split()[2]) for out, _ in outputs for line in out.splitlines() if line.startswith("SUMMARY")]
    (directory,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    workloads, records = assert_consistent(directory)
    assert len(workloads) == 2  # the shared 8 -> 16 layer is one workload, whoever tuned it
    assert len(records) == sum(added)
    # The merged database is usable: a compile of either network takes every task from it.
    proc = run_python("""
import sys
from nasforge.backends.tvm import TVMBackend
from tests.backends.nets import inputs_for, spec_and_module
from tests.backends.test_tvm_tuning import TWO_LAYERS
spec, gm = spec_and_module(TWO_LAYERS)
compiled = TVMBackend().compile(gm, inputs_for(spec, batch=1), "x86", {"tuning_db": sys.argv[1]})
print("APPLIED", compiled.info.tuning["applied"][""]["tasks_from_database"])
""", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "APPLIED 2" in proc.stdout
