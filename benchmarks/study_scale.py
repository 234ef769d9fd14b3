"""Scale of the study store: how many cheap trials per second nasforge's workers get through on SQLite and on
PostgreSQL with 1, 2 and 4 worker processes, against raw Optuna on the same storage, and how long
``nasforge study show`` takes on the resulting large study.

Each configuration searches a fresh study of a small space (4^8 = 65,536 MLPs: a width and an activation
per layer) with random search toward params:min and macs:max, so a trial costs only the store and nasforge's
bookkeeping (space sampling, shape inference and counting, attributes, the budget lock). The nasforge runs
are exactly ``nasforge search --workers N`` (``nasforge.search.worker.run_local``: N ``nasforge worker``
processes). Raw Optuna runs N processes of ``Study.optimize`` with Optuna's ``RandomSampler``, the same
decisions (8 categorical parameters) and a trivial objective, on the same storage (nasforge's engine
settings and heartbeat). The rate is the steady one, completed trials over the span from the first trial's
start to the last one's end (process start-up excluded); the wall time includes it.

    OMP_NUM_THREADS=1 python benchmarks/study_scale.py --trials 10000            # the full run
    OMP_NUM_THREADS=1 python benchmarks/study_scale.py --trials 500 -o /tmp/s.json   # a quick look

PostgreSQL: ``--postgres URL`` (a database the benchmark may fill with studies), else a private server
with default durability settings is started for the run (needs PostgreSQL's binaries, see tests/search).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.search.postgres starts a private server when no --postgres is given

import nasforge  # noqa: E402
from nasforge.search.objectives import Objective  # noqa: E402
from nasforge.search.storage import STORAGE_ENV, open_storage  # noqa: E402
from nasforge.search.study import GRACE_S, HEARTBEAT_S, MAX_RETRY, Search  # noqa: E402
from nasforge.search.worker import run_local  # noqa: E402

WIDTHS, ACTIVATIONS, LAYERS = [8, 16, 32, 64], ["relu", "tanh", "sigmoid", "gelu"], 4
SPACE = "inputs: {x: [B, 16]}\ngraph:\n" + "".join(
    f"  - {{id: fc{i}, op: linear, out: {{choice: {WIDTHS}}}}}\n"
    f"  - {{id: act{i}, op: {{op_choice: [{', '.join(ACTIVATIONS)}]}}}}\n" for i in range(LAYERS)
) + "  - {id: head, op: linear, out: 10}\n"
OBJECTIVES = [Objective.parse("params:min"), Objective.parse("macs:max")]
COMPLETE = optuna.trial.TrialState.COMPLETE


def steady_rate(study: optuna.Study) -> tuple[int, float]:
    """Completed trials and their rate over the span from the first start to the last completion."""
    done = study.get_trials(deepcopy=False, states=(COMPLETE,))
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return len(done), len(done) / span


def run_nasforge(space: Path, url: str, name: str, trials: int, workers: int) -> dict[str, Any]:
    search = Search(nasforge.load(space), "random", OBJECTIVES, budget=trials, storage=url, study_name=name,
                    settings={"threads": 1})
    start = time.perf_counter()
    study = run_local(search, workers, progress=lambda done: None, poll_s=1.0)
    wall = time.perf_counter() - start
    completed, rate = steady_rate(study)
    return {"completed": completed, "trials_per_s": round(rate, 2), "wall_s": round(wall, 1)}


def raw_objective(trial: optuna.Trial) -> tuple[float, float]:
    widths = [trial.suggest_categorical(f"fc{i}", WIDTHS) for i in range(LAYERS)]
    for i in range(LAYERS):
        trial.suggest_categorical(f"act{i}", ACTIVATIONS)
    return float(sum(widths)), float(max(widths))


def raw_worker(name: str, trials: int, seed: int) -> None:
    """One raw Optuna process (run by :func:`run_optuna` as a subprocess)."""
    storage = open_storage(os.environ[STORAGE_ENV], HEARTBEAT_S, GRACE_S, MAX_RETRY)
    study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=seed))
    study.optimize(raw_objective, n_trials=trials, gc_after_trial=False)


def run_optuna(url: str, name: str, trials: int, workers: int) -> dict[str, Any]:
    optuna.create_study(storage=open_storage(url, HEARTBEAT_S, GRACE_S, MAX_RETRY), study_name=name,
                        directions=["minimize", "maximize"])
    shares = [trials // workers + (i < trials % workers) for i in range(workers)]
    env = {**os.environ, STORAGE_ENV: url, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--raw-worker", name, str(n), str(i)], env=env)
             for i, n in enumerate(shares)]
    if any(p.wait() for p in procs):
        raise RuntimeError("a raw Optuna worker failed")
    wall = time.perf_counter() - start
    completed, rate = steady_rate(optuna.load_study(study_name=name, storage=open_storage(url, HEARTBEAT_S,
                                                                                          GRACE_S, MAX_RETRY)))
    return {"completed": completed, "trials_per_s": round(rate, 2), "wall_s": round(wall, 1)}


def time_study_show(url: str, name: str, repeats: int = 3) -> dict[str, float]:
    """``nasforge study show`` as a command (Python start-up and imports included) and its work alone (in
    this process, after the imports): the best of ``repeats`` each."""
    from nasforge.cli import main

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command, inside = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nasforge.cli", "study", "show", name, "--storage", url],
                       env=env, check=True, capture_output=True)
        command.append(time.perf_counter() - start)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["study", "show", name, "--storage", url]) == 0
        inside.append(time.perf_counter() - start)
    return {"command_s": round(min(command), 2), "in_process_s": round(min(inside), 2)}


@contextlib.contextmanager
def databases(storages: list[str], postgres: str | None, work: Path) -> Iterator[Callable[[str, str], str]]:
    """A function giving a fresh database URL per run: a SQLite file, or a PostgreSQL database on the given
    server (studies of distinct names) or on a private one started for the run when PostgreSQL is wanted."""
    counter = iter(range(10**6))
    server = None
    if "postgresql" in storages and not postgres:
        from tests.search.postgres import LocalPostgres

        server = LocalPostgres.start(work / "postgres", durable=True)

    def fresh(storage: str, label: str) -> str:
        if storage == "sqlite":
            return f"sqlite:///{work / f'study{next(counter)}.db'}"
        return postgres or server.create_database(f"scale_{label}_{next(counter)}")

    try:
        yield fresh
    finally:
        if server is not None:
            server.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="nasforge-bench-"))
    os.chmod(work, 0o755)  # the private PostgreSQL server runs as another user below it
    space = work / "space.yaml"
    space.write_text(SPACE)
    runs, shows = [], {}
    try:
        with databases(args.storages, args.postgres, work) as fresh:
            for backend in args.storages:
                for workers in args.workers:
                    label = f"{backend}_{workers}w"
                    url = fresh(backend, label)
                    row = {"storage": backend, "workers": workers, "load_average_before": round(os.getloadavg()[0], 1),
                           "optuna": run_optuna(fresh(backend, label + "_raw"), f"raw_{label}", args.trials, workers),
                           "nasforge": run_nasforge(space, url, f"nasforge_{label}", args.trials, workers)}
                    row["nasforge_over_optuna"] = round(row["optuna"]["trials_per_s"]
                                                        / row["nasforge"]["trials_per_s"], 2)
                    print(json.dumps(row), flush=True)
                    runs.append(row)
                    if workers == max(args.workers):
                        shows[backend] = time_study_show(url, f"nasforge_{label}")
                        print(json.dumps({"study_show": backend, **shows[backend]}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"trials": args.trials, "runs": runs, "study_show": shows,
            "space": f"{len(WIDTHS) ** LAYERS * len(ACTIVATIONS) ** LAYERS:,} networks ({LAYERS} layers)",
            "machine": {"cpus": os.cpu_count(), "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
                        "python": platform.python_version(), "optuna": optuna.__version__,
                        "sqlalchemy": __import__("sqlalchemy").__version__, "platform": platform.platform()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10_000, help="completed trials per study (default 10,000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker processes per run")
    parser.add_argument("--storages", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--postgres", help="a PostgreSQL URL to use instead of a private server")
    parser.add_argument("-o", "--output", default=str(ROOT / "benchmarks/results/study_scale.json"))
    parser.add_argument("--raw-worker", nargs=3, metavar=("STUDY", "TRIALS", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_worker:
        name, trials, seed = args.raw_worker
        raw_worker(name, int(trials), int(seed))
        return
    result = run(args)
    out = Path(args.output)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)  # atomic: a killed run leaves the previous result
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
