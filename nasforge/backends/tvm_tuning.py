"""MetaSchedule tuning with a budget and a persistent, shared tuning database.

Untuned TVM is no product on a CPU (the wheel has no vendor kernels; a ConvNeXt-T ran 70x slower than eager
here), so speed comes from MetaSchedule, and tuning is expensive. Every record therefore goes into one database
per exact target (``<root>/<target key>/``, root ``~/.cache/nasforge/tvm-tuning``, or ``$NASFORGE_TUNING_DB``, or
the ``tuning_db`` option): a workload (a conv of one shape, a matmul of one size, a fused elementwise chain)
tuned once is never tuned again, in any later run, for any network, for every candidate a search compiles.

The budget (trials and/or minutes) goes where the time goes: the tasks not in the database are measured
untuned, ranked by measured time x how often the network calls them, and tuned one after another from the
hottest down, each finished task merged into the database at once (an interrupted run keeps its progress).

The database is MetaSchedule's JSON database: two append-only files of lines, where a record names its
workload by line number. Two processes appending workloads at once would give two workloads one number, so
nobody appends to the shared files without the directory's lock (``fcntl.flock``): readers copy the files under
a shared lock and work on the copy; a tuner tunes into a private database and merges each task's records under
the exclusive lock, re-reading the shared files first so line numbers are always those of the file.

Everything that touches TVM here runs in the compile worker's process (:mod:`nasforge.backends.tvm_worker`);
:func:`tune` is the parent-side entry for benchmarks (tune without writing an artifact).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from nasforge.backends.targets import TargetProfile
from nasforge.errors import Location, SpecError

ENV_DB = "NASFORGE_TUNING_DB"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
WORKER_TIMEOUT_S = 120.0
"""Per build/run of a candidate, worker start-up included (MetaSchedule's 30 s killed every build on a
loaded 2-core machine while the fresh builder processes were still importing)."""
DEFAULT_TRIALS_PER_TASK = 64
"""Trials per task when the budget is in minutes only (MetaSchedule's own batch size)."""


def default_root() -> Path:
    """Where tuning databases live unless an option says otherwise: ``$NASFORGE_TUNING_DB`` or the user cache."""
    env = os.environ.get(ENV_DB)
    return Path(env).expanduser() if env else Path("~/.cache/nasforge/tvm-tuning").expanduser()


def database_dir(profile: TargetProfile, root: str | Path | None = None, arch: str | None = None) -> Path:
    """The database directory of one exact target under ``root`` (default :func:`default_root`)."""
    return (Path(root).expanduser().resolve() if root else default_root()) / profile.key(arch)


def check_tunable(profile: TargetProfile) -> None:
    """Tuning measures candidates on this machine: refuse, clearly, a profile whose code cannot run here."""
    runs, why = profile.runs_here()
    if profile.kind != "llvm" or not runs:
        reason = why or f"MetaSchedule tuning is wired for CPU (llvm) targets, not {profile.kind!r}"
        raise SpecError(f"cannot tune for target {profile.name!r} on this machine", location=Location("--tune-trials"),
                        expected="a target whose code runs here (x86 on this host)", found=reason,
                        hint="compile untuned for this target, or tune on a machine of that kind")


@dataclass
class TuningDatabase:
    """One target's shared JSON database directory, read and merged only under its lock file."""

    directory: Path

    @contextlib.contextmanager
    def _lock(self, exclusive: bool) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def exists(self) -> bool:
        return (self.directory / WORKLOADS).is_file()

    def snapshot(self, into: Path) -> Any:
        """A private copy of the database, taken under the shared lock (never a half-appended line)."""
        from tvm.s_tir import meta_schedule as ms

        into.mkdir(parents=True, exist_ok=True)
        with self._lock(exclusive=False):
            for name in (WORKLOADS, RECORDS):
                if (self.directory / name).is_file():
                    shutil.copyfile(self.directory / name, into / name)
        return ms.database.JSONDatabase(work_dir=str(into))

    def merge(self, source: Any, workloads: Sequence[Any]) -> int:
        """Append ``source``'s records of the given workload modules; returns how many were added."""
        from tvm.s_tir import meta_schedule as ms

        added = 0
        with self._lock(exclusive=True):
            shared = ms.database.JSONDatabase(work_dir=str(self.directory))
            for mod in workloads:
                if not source.has_workload(mod):
                    continue
                records = source.get_top_k(source.commit_workload(mod), 1 << 30)
                if not records:
                    continue
                workload = shared.commit_workload(mod)
                for rec in records:
                    shared.commit_tuning_record(ms.database.TuningRecord(
                        rec.trace, workload, rec.run_secs, rec.target, rec.args_info))
                    added += 1
        return added


def extract_tasks(mod: Any, target: Any) -> list[Any]:
    """MetaSchedule's tasks of ``main`` only: the weight transforms run once at load, not worth a trial."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from nasforge.backends.tvm_worker import TRANSFORM_PARAMS

    hot = tvm.IRModule({gv: mod[gv] for gv in mod.get_global_vars() if gv.name_hint != TRANSFORM_PARAMS})
    return list(ms.relax_integration.extract_tasks(hot, target))


def has_record(database: Any, mod: Any) -> bool:
    """Whether the database holds a measured schedule for this workload (ask a snapshot: looking a workload
    up in a JSON database commits it)."""
    return database.has_workload(mod) and bool(database.get_top_k(database.commit_workload(mod), 1))


# -- in the worker process ---------------------------------------------------------------------------------

@dataclass
class TaskInfo:
    """One MetaSchedule task as the report shows it."""

    name: str
    weight: int
    untuned_ms: float | None
    flops: float
    in_database: bool
    trials: int = 0
    best_ms: float | None = None

    @property
    def cost(self) -> float:
        """Estimated share of the network's time: measured untuned time, else FLOPs, times the call count."""
        return self.weight * (self.untuned_ms if self.untuned_ms is not None else self.flops * 1e-9)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, "untuned_ms": self.untuned_ms, "flops": self.flops,
                "in_database": self.in_database, "trials": self.trials, "best_ms": self.best_ms}


@dataclass
class Budget:
    """Trials and/or minutes; whichever runs out first ends tuning."""

    trials: int | None = None
    minutes: float | None = None
    trials_per_task: int | None = None
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.trials is None and self.minutes is None:
            raise ValueError("a tuning budget needs trials or minutes")

    def deadline(self) -> float | None:
        return None if self.minutes is None else self.started + 60.0 * self.minutes

    def out_of_time(self) -> bool:
        deadline = self.deadline()
        return deadline is not None and time.monotonic() >= deadline

    def next_task_trials(self, spent: int, tasks_left: int, seconds_per_trial: float | None = None) -> int:
        """Trials for the next task: an equal share of what is left (so later tasks get what earlier ones
        did not use), capped by ``trials_per_task``; minutes-only budgets use MetaSchedule's batch size.
        Under a minutes budget, also no more than the time left allows at the pace measured so far (a task
        is not interrupted once started: MetaSchedule's scheduler aborts when a task is ended from outside)."""
        share = DEFAULT_TRIALS_PER_TASK if self.trials is None else math.ceil((self.trials - spent) / tasks_left)
        share = min(share, self.trials_per_task or share)
        deadline = self.deadline()
        if deadline is not None and seconds_per_trial:
            share = min(share, int((deadline - time.monotonic()) / seconds_per_trial))
        return max(1, share)


def _measure_untuned(tasks: Sequence[Any], target: Any, builder: Any, runner: Any) -> list[list[float] | None]:
    """Run seconds of each task's default (unscheduled) code, measured the way tuning measures candidates."""
    from tvm.s_tir import meta_schedule as ms

    builds = builder.build([ms.builder.BuilderInput(t.dispatched[0], target) for t in tasks])
    inputs, index = [], []
    for k, (task, built) in enumerate(zip(tasks, builds)):
        if built.error_msg is None:
            args = ms.arg_info.ArgInfo.from_prim_func(task.dispatched[0]["main"])
            inputs.append(ms.runner.RunnerInput(built.artifact_path, target.kind.default_keys[0], args))
            index.append(k)
    secs: list[list[float] | None] = [None] * len(tasks)
    for k, future in zip(index, runner.run(inputs)):
        result = future.result()
        if result.error_msg is None and result.run_secs:
            secs[k] = [float(s) for s in result.run_secs]
    for built in builds:
        if built.artifact_path:
            shutil.rmtree(os.path.dirname(built.artifact_path), ignore_errors=True)
    return secs


def _commit_default(database: Any, task: Any, run_secs: list[float], target: Any) -> None:
    """Record the unscheduled code as one more candidate: the database's best is then never slower than
    untuned code (a few trials can find only worse schedules, and applying one would slow the network)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.schedule import Schedule

    mod = task.dispatched[0]
    database.commit_tuning_record(ms.database.TuningRecord(
        Schedule(mod).trace, database.commit_workload(mod), run_secs, target,
        ms.arg_info.ArgInfo.from_prim_func(mod["main"])))


def _search(trials: int) -> Any:
    """MetaSchedule's evolutionary search, its population scaled down for a few trials per task (the default
    512 candidates per round cost more time than a 4-trial budget spends measuring)."""
    from tvm.s_tir import meta_schedule as ms

    population = min(512, max(64, 8 * trials))
    return ms.search_strategy.EvolutionarySearch(population_size=population,
                                                 init_min_unmeasured=min(50, population // 4))


def tune_module(mod: Any, target: Any, database: TuningDatabase, budget: Budget, work: Path,
                cores: int) -> dict[str, Any]:
    """Tune a lowered Relax module's tasks into ``database`` within ``budget``; the summary the report shows.

    ``mod`` must have been through the lowering pipeline (legalized and fused), as MetaSchedule extracts tasks
    from its TIR functions. Runs in the worker process (TVM may abort the process).
    """
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    started = time.monotonic()
    extracted = extract_tasks(mod, target)
    known = database.snapshot(work / "snapshot")
    infos = [TaskInfo(t.task_name, int(t.weight), None, _flops(estimate_tir_flops, t.dispatched[0]),
                      has_record(known, t.dispatched[0])) for t in extracted]
    pending = [k for k, info in enumerate(infos) if not info.in_database]
    builder = ms.builder.LocalBuilder(max_workers=cores, timeout_sec=WORKER_TIMEOUT_S)
    runner = ms.runner.LocalRunner(timeout_sec=WORKER_TIMEOUT_S)
    untuned = dict(zip(pending, _measure_untuned([extracted[k] for k in pending], target, builder, runner)))
    for k, secs in untuned.items():
        infos[k].untuned_ms = 1e3 * min(secs) if secs else None
    order = sorted(pending, key=lambda k: infos[k].cost, reverse=True)

    tuning_started = time.monotonic()
    (work / "private").mkdir(parents=True, exist_ok=True)
    private = ms.database.JSONDatabase(work_dir=str(work / "private"))
    cost_model = ms.cost_model.CostModel.create("xgb", num_tuning_cores=cores)
    spent, tuned, added = 0, 0, 0
    for position, k in enumerate(order):
        if budget.out_of_time() or (budget.trials is not None and spent >= budget.trials):
            break
        trials = budget.next_task_trials(spent, len(order) - position,
                                         (time.monotonic() - tuning_started) / spent if spent else None)
        counter = _trial_counter_class()()
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            [extracted[k]], work_dir=str(work / "logs"), strategy=_search(trials), num_threads=cores)
        ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(work / "logs"),
                      max_trials_global=trials, max_trials_per_task=trials,
                      num_trials_per_iter=min(DEFAULT_TRIALS_PER_TASK, trials), builder=builder, runner=runner,
                      database=private, cost_model=cost_model,
                      measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), counter],
                      task_scheduler="round-robin")
        if untuned[k] and counter.trials:  # a task that measured nothing stays untuned for the next run
            _commit_default(private, extracted[k], untuned[k], target)
        infos[k].trials = counter.trials
        best = private.get_top_k(private.commit_workload(extracted[k].dispatched[0]), 1)
        infos[k].best_ms = 1e3 * min(float(s) for s in best[0].run_secs) if best else None
        spent += counter.trials
        tuned += 1
        added += database.merge(private, [extracted[k].dispatched[0]])
    return {
        "database": str(database.directory), "tasks_total": len(infos),
        "tasks_from_database": len(infos) - len(pending), "tasks_tuned": tuned,
        "tasks_left_untuned": len(pending) - tuned, "trials": spent, "records_added": added,
        "budget": {"trials": budget.trials, "minutes": budget.minutes},
        "tuning_s": round(time.monotonic() - started, 3),
        "tasks": [infos[k].as_dict() for k in sorted(range(len(infos)), key=lambda k: -infos[k].cost)],
    }


def _flops(estimate: Any, mod: Any) -> float:
    try:
        return float(estimate(mod))
    except Exception:  # TVM cannot estimate some functions (data-dependent loops); rank them by time alone
        return 0.0


@functools.cache
def _trial_counter_class() -> type:
    """The measure callback class that counts measured trials (built on first use: its base comes from tvm)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class TrialCounter(PyMeasureCallback):
        def __init__(self) -> None:
            super().__init__()
            self.trials = 0

        def apply(self, task_scheduler: Any, task_id: int, measure_candidates: Any, builder_results: Any,
                  runner_results: Any) -> None:
            self.trials += len(runner_results)

    return TrialCounter


def apply_database(mod: Any, target: Any, database: TuningDatabase, work: Path) -> tuple[Any, dict[str, int]]:
    """Give every task of ``mod`` that the database knows its best measured schedule.

    Runs on every compile for a target that has a database, tuned in this run or not: that is how one
    tuning serves every later network with the same workloads.
    """
    from tvm import relax

    tasks = extract_tasks(mod, target)
    if not database.exists():
        return mod, {"tasks_total": len(tasks), "tasks_from_database": 0}
    known = database.snapshot(work / "apply")
    reused = sum(has_record(known, t.dispatched[0]) for t in tasks)
    with target, known:
        mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    return mod, {"tasks_total": len(tasks), "tasks_from_database": reused}


# -- parent side ------------------------------------------------------------------------------------------

def tune(graph_module: Any, example_inputs: Sequence[Any], target: str = "x86", trials: int | None = None,
         minutes: float | None = None, db_path: str | Path | None = None,
         trials_per_task: int | None = None) -> dict[str, Any]:
    """Tune a network's tasks into the persistent database without compiling an artifact.

    For benchmarks and warm-up runs: ``tune(gm, inputs, "x86", trials=2000)`` spends the budget on the hottest
    untuned tasks; a later ``compile`` (or another network sharing workloads) applies the records. Returns the
    tuning summary (tasks total / from the database / tuned, trials, seconds, per-task times).
    """
    from nasforge.backends import targets, tvm_export, tvm_worker

    profile = targets.resolve(target)
    check_tunable(profile)
    program = tvm_export.to_relax(tvm_export.export(graph_module, example_inputs), graph_module)
    request = {"mode": "tune", "target": profile.name, "db_root": str(db_path) if db_path else None,
               "tune": {"trials": trials, "minutes": minutes, "trials_per_task": trials_per_task}}
    return tvm_worker.run_worker(request, [program.module_json])["tuning"]
