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
from typing import Any, Callable, Iterator, Sequence

from nasforge.backends.targets import TargetProfile
from nasforge.errors import Location, SpecError

ENV_DB = "NASFORGE_TUNING_DB"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
WORKER_TIMEOUT_S = 120.0
"""Per build/run of a candidate, worker start-up included (MetaSchedule's 30 s killed every build on a
loaded 2-core machine while the fresh builder processes were still importing)."""
ROUND_TRIALS = 32
"""Trials per round: a task is tuned in rounds, and after each the next round goes to the task that most
likely pays (:class:`TaskPicker`). MetaSchedule carries a task's best schedules from round to round through the
database, and one cost model learns from every round of every task."""
SMALL_ROUND_TRIALS = 8
"""Trials per round of a task under :data:`SMALL_SHARE` of the time being tuned (an elementwise chain, a
pooling): a few trials parallelize and vectorize it; a full round would cost more than the task's time is worth."""
SMALL_SHARE = 0.01
MIN_GAIN = 0.05
"""A task whose last round took off less than this fraction of its time ranks as if it had taken this much."""


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
        """Append ``source``'s records of the given workload modules that the database does not hold yet
        (a retuned task's private database starts with the shared records); returns how many were added."""
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
                held = {_record_key(rec) for rec in shared.get_top_k(workload, 1 << 30)}
                for rec in records:
                    if _record_key(rec) in held:
                        continue
                    shared.commit_tuning_record(ms.database.TuningRecord(
                        rec.trace, workload, rec.run_secs, rec.target, rec.args_info))
                    added += 1
        return added


def _record_key(record: Any) -> str:
    """What makes two tuning records the same measurement: the schedule's trace and its measured times."""
    return repr((str(record.trace.as_json()), [float(t) for t in record.run_secs or []]))


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
    start_ms: float | None = None
    """Its time when this run began: untuned for a new task, the database's best for a known one."""

    @property
    def cost(self) -> float:
        """Estimated share of the network's time: its time when the run began, else FLOPs, times the call count."""
        return self.weight * (self.start_ms if self.start_ms is not None else self.flops * 1e-9)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, "untuned_ms": self.untuned_ms, "flops": self.flops,
                "in_database": self.in_database, "trials": self.trials, "best_ms": self.best_ms}


@dataclass
class Budget:
    """Trials and/or minutes; whichever runs out first ends tuning."""

    trials: int | None = None
    minutes: float | None = None
    trials_per_task: int | None = None
    retune: bool = False
    """Also tune tasks the database already knows, from their best schedules on (by default a known task is
    never tuned again: the budget goes to the network's new tasks only)."""
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.trials is None and self.minutes is None:
            raise ValueError("a tuning budget needs trials or minutes")

    def deadline(self) -> float | None:
        return None if self.minutes is None else self.started + 60.0 * self.minutes

    def out_of_time(self) -> bool:
        deadline = self.deadline()
        return deadline is not None and time.monotonic() >= deadline

    def next_round_trials(self, spent: int, task_spent: int, seconds_per_trial: float | None = None,
                          size: int = ROUND_TRIALS) -> int:
        """Trials for the next round of one task (0: the budget is spent): ``size``, no more than
        the trials left, the task's cap (``trials_per_task``) allows, or, under a minutes budget, the time left
        at the pace measured so far (a round is not interrupted once started: MetaSchedule's scheduler aborts
        when a task is ended from outside)."""
        share = size if self.trials is None else min(size, self.trials - spent)
        if self.trials_per_task is not None:
            share = min(share, self.trials_per_task - task_spent)
        deadline = self.deadline()
        if deadline is not None and seconds_per_trial:
            share = min(share, int((deadline - time.monotonic()) / seconds_per_trial))
        return max(0, share)


@dataclass
class TaskPicker:
    """Which task gets the next round: the one whose time in the network is most likely to shrink.

    A task's priority is its current share of the network's time (its best measured time x how often the
    network calls it) times its last gain, the fraction of its time its last round took off (1 before its first
    round, at least :data:`MIN_GAIN`). The hottest tasks go first; a task whose rounds stop paying yields to the
    next, and comes back when everything else has shrunk below it (the idea of Ansor's gradient scheduler,
    without its full first pass over every task).
    """

    infos: list[TaskInfo]
    candidates: list[int]
    gain: dict[int, float] = field(default_factory=dict)

    def current_ms(self, k: int) -> float:
        info = self.infos[k]
        best = info.best_ms if info.best_ms is not None else info.untuned_ms
        return info.weight * best if best is not None else info.cost

    def next(self, exclude: set[int]) -> int | None:
        left = [k for k in self.candidates if k not in exclude]
        return max(left, key=lambda k: self.current_ms(k) * self.gain.get(k, 1.0)) if left else None

    def round_size(self, k: int) -> int:
        """:data:`ROUND_TRIALS`, or :data:`SMALL_ROUND_TRIALS` for a task with a small share of the time."""
        total = sum(self.current_ms(j) for j in self.candidates)
        return SMALL_ROUND_TRIALS if total > 0 and self.current_ms(k) < SMALL_SHARE * total else ROUND_TRIALS

    def record(self, k: int, before_ms: float) -> None:
        """After a round of task ``k``: its gain is how much of ``before_ms`` (its time before) went."""
        after = self.current_ms(k)
        self.gain[k] = max(MIN_GAIN, (before_ms - after) / before_ms) if before_ms > 0 else MIN_GAIN


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


def tune_module(mod: Any, target: Any, database: TuningDatabase, budget: Budget, work: Path, cores: int,
                report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Tune a lowered Relax module's tasks into ``database`` within ``budget``; the summary the report shows.

    ``mod`` must have been through the lowering pipeline (legalized and fused), as MetaSchedule extracts tasks
    from its TIR functions. Runs in the worker process (TVM may abort the process). ``report`` gets the
    progress (:func:`progress`) before tuning starts and after every round.
    """
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    started = time.monotonic()
    extracted = extract_tasks(mod, target)
    known = database.snapshot(work / "snapshot")
    infos = [TaskInfo(t.task_name, int(t.weight), None, _flops(estimate_tir_flops, t.dispatched[0]),
                      has_record(known, t.dispatched[0])) for t in extracted]
    new_tasks = [k for k, info in enumerate(infos) if not info.in_database]
    pending = list(range(len(infos))) if budget.retune else new_tasks
    for k in set(pending) - set(new_tasks):  # a known task starts from its best measured time
        infos[k].best_ms = infos[k].start_ms = best_ms(known, extracted[k].dispatched[0])
    builder = ms.builder.LocalBuilder(max_workers=cores, timeout_sec=WORKER_TIMEOUT_S)
    runner = ms.runner.LocalRunner(timeout_sec=WORKER_TIMEOUT_S)
    untuned = dict(zip(new_tasks, _measure_untuned([extracted[k] for k in new_tasks], target, builder, runner)))
    for k, secs in untuned.items():
        infos[k].untuned_ms = infos[k].start_ms = 1e3 * min(secs) if secs else None
    picker = TaskPicker(infos, [k for k in pending if untuned.get(k) is not None or infos[k].best_ms is not None
                                or infos[k].flops > 0])

    tuning_started = time.monotonic()
    # the private database starts as the snapshot: a retuned task's search begins from its best schedules
    private = database.snapshot(work / "private")
    cost_model = ms.cost_model.CostModel.create("xgb", num_tuning_cores=cores)
    spent, added, finished = 0, 0, set()

    def tell(task: str | None) -> None:
        if report is not None:
            report(progress(infos, pending, picker, budget, spent, task, time.monotonic() - started))

    tell(None)
    while not budget.out_of_time() and (budget.trials is None or spent < budget.trials):
        k = picker.next(finished)
        if k is None:
            break
        if budget.trials_per_task is not None and infos[k].trials >= budget.trials_per_task:
            finished.add(k)  # this task reached its cap; others may still take trials
            continue
        trials = budget.next_round_trials(spent, infos[k].trials,
                                          (time.monotonic() - tuning_started) / spent if spent else None,
                                          picker.round_size(k))
        if trials == 0:
            break  # not even one more trial fits in the minutes left
        before = picker.current_ms(k)
        tell(infos[k].name)
        counter = _tune_round(extracted[k], trials, work, builder, runner, private, cost_model, cores)
        if untuned.get(k) and counter.trials and not infos[k].trials:
            _commit_default(private, extracted[k], untuned[k], target)  # once per task, before its best is read
        infos[k].best_ms = best_ms(private, extracted[k].dispatched[0]) or infos[k].best_ms
        infos[k].trials += counter.trials
        spent += counter.trials
        if counter.trials < trials:
            finished.add(k)  # the search ran out of candidates: more rounds would measure nothing
        picker.record(k, before)
        added += database.merge(private, [extracted[k].dispatched[0]])
    tell(None)
    return {
        "database": str(database.directory), "tasks_total": len(infos),
        "tasks_from_database": len(infos) - len(new_tasks), "tasks_tuned": sum(1 for k in pending if infos[k].trials),
        "tasks_retuned": sum(1 for k in pending if infos[k].trials and infos[k].in_database),
        "tasks_left_untuned": sum(1 for k in new_tasks if not infos[k].trials), "trials": spent,
        "records_added": added, "budget": {"trials": budget.trials, "minutes": budget.minutes,
                                           "retune": budget.retune},
        "tuning_s": round(time.monotonic() - started, 3),
        "tasks": [infos[k].as_dict() for k in sorted(range(len(infos)), key=lambda k: -infos[k].cost)],
    }


def progress(infos: Sequence[TaskInfo], pending: Sequence[int], picker: TaskPicker, budget: Budget, spent: int,
             task: str | None, elapsed_s: float) -> dict[str, Any]:
    """What a tuning run has done so far, for a status line: trials against the budget, the task in tuning,
    and the kernel time of the tasks being tuned, now and when the run began (their best times x calls per
    network; untuned times for new tasks)."""
    timed = [k for k in pending if infos[k].start_ms is not None]
    return {"trials": spent, "budget_trials": budget.trials, "budget_minutes": budget.minutes,
            "elapsed_s": round(elapsed_s, 1), "tasks_pending": len(pending),
            "tasks_tuned": sum(1 for k in pending if infos[k].trials), "task": task,
            "tasks_ms": round(sum(picker.current_ms(k) for k in timed), 3),
            "tasks_start_ms": round(sum(infos[k].weight * infos[k].start_ms for k in timed), 3)}


def describe_progress(p: dict[str, Any]) -> str:
    """One line for a status bar: ``tuning 320/1200 trials, 9/27 tasks, kernels 812.0 -> 61.2 ms (conv2d...)``."""
    budget = f"/{p['budget_trials']}" if p.get("budget_trials") else ""
    minutes = f" of {p['budget_minutes']:g} min" if p.get("budget_minutes") else ""
    task = f" ({p['task']})" if p.get("task") else ""
    return (f"tuning: {p['trials']}{budget} trials, {p['tasks_tuned']}/{p['tasks_pending']} tasks, "
            f"{p['elapsed_s'] / 60:.1f} min{minutes}, kernels {p['tasks_start_ms']:.1f} -> {p['tasks_ms']:.1f} ms"
            f"{task}")


def _tune_round(task: Any, trials: int, work: Path, builder: Any, runner: Any, database: Any, cost_model: Any,
                cores: int) -> Any:
    """One round of MetaSchedule's evolutionary search on one task; returns the trial counter. The search
    starts from the database's best schedules of the task, so rounds continue where the last one stopped."""
    from tvm.s_tir import meta_schedule as ms

    counter = _trial_counter_class()()
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        [task], work_dir=str(work / "logs"), strategy=_search(trials), num_threads=cores)
    ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(work / "logs"), max_trials_global=trials,
                  max_trials_per_task=trials, num_trials_per_iter=trials, builder=builder, runner=runner,
                  database=database, cost_model=cost_model,
                  measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), counter],
                  task_scheduler="round-robin")
    return counter


def best_ms(database: Any, mod: Any) -> float | None:
    """The best measured time of a workload in ``database`` (milliseconds), None without a record."""
    if not database.has_workload(mod):
        return None
    best = database.get_top_k(database.commit_workload(mod), 1)
    return 1e3 * min(float(s) for s in best[0].run_secs) if best and best[0].run_secs else None


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


def apply_database(mod: Any, target: Any, known: Any | None) -> tuple[Any, dict[str, int]]:
    """Give every task of ``mod`` that the database knows its best measured schedule (``known``: a snapshot
    of the database, :meth:`TuningDatabase.snapshot`; None where there is no database yet).

    Runs on every compile for a target that has a database, tuned in this run or not: that is how one
    tuning serves every later network with the same workloads.
    """
    from tvm import relax

    tasks = extract_tasks(mod, target)
    if known is None:
        return mod, {"tasks_total": len(tasks), "tasks_from_database": 0}
    reused = sum(has_record(known, t.dispatched[0]) for t in tasks)
    with target, known:
        mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    return mod, {"tasks_total": len(tasks), "tasks_from_database": reused}


# -- parent side ------------------------------------------------------------------------------------------

def tune(graph_module: Any, example_inputs: Sequence[Any], target: str = "x86", trials: int | None = None,
         minutes: float | None = None, db_path: str | Path | None = None,
         trials_per_task: int | None = None, retune: bool = False, winograd: bool = False,
         prepack: bool | None = None) -> dict[str, Any]:
    """Tune a network's tasks into the persistent database without compiling an artifact.

    For benchmarks and warm-up runs: ``tune(gm, inputs, "x86", trials=2000)`` spends the budget on the hottest
    untuned tasks (with ``retune``, on the hottest tasks known or not); a later ``compile`` (or another network
    sharing workloads) applies the records. Returns the
    tuning summary (tasks total / from the database / tuned, trials, seconds, per-task times).
    """
    from nasforge.backends import targets, tvm_export, tvm_worker
    from nasforge.backends.tvm_prepack import default_for as prepack_default

    profile = targets.resolve(target)
    check_tunable(profile)
    program = tvm_export.to_relax(tvm_export.export(graph_module, example_inputs), graph_module)
    request = {"mode": "tune", "target": profile.name, "db_root": str(db_path) if db_path else None,
               "tune": {"trials": trials, "minutes": minutes, "trials_per_task": trials_per_task, "retune": retune},
               "winograd": winograd, "prepack": prepack_default(profile.kind) if prepack is None else prepack}
    return tvm_worker.run_worker(request, [program.module_json])["tuning"]
