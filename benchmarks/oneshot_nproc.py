"""Distributed supernet training: time per epoch with 1 and N processes, and what the processes agree on.

Each strategy searches the NAS-Bench-201 cell at ``C=8, N=1`` on scikit-learn's digits (8x8) with a global batch
of 64, for ``--epochs`` epochs: in one process with one thread, in one process with N threads (the fair
comparison on N cores), and in N processes of one thread each (``--nproc N``: gloo on the CPU). Reported: the
median seconds of the epochs after the first; the largest difference between the supernets the 1-process and
the N-process runs end with, and whether their genotypes agree, each next to the same for 1 against N threads
(float rounding alone: reductions in another order, which training can amplify); the latency of one small gloo
all-reduce between the processes; the machine's load average (the processes share its cores with the rest).

    OMP_NUM_THREADS=1 python benchmarks/oneshot_nproc.py                  # darts, gdas, spos; 2 processes
    OMP_NUM_THREADS=1 python benchmarks/oneshot_nproc.py --nproc 4 --strategies darts
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import nasforge
from nasforge.search.data import load_dataset
from nasforge.search.oneshot.checkpoint import CHECKPOINT, LOG
from nasforge.search.oneshot.distributed import SOLO, Group, spawn
from nasforge.search.oneshot.runner import run_oneshot

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "specs" / "spaces" / "nas_bench_201.yaml"
SIZE = {"C": 8, "N": 1, "resolution": 8}
BUDGET: dict[str, dict[str, Any]] = {
    "darts": {"batch_size": 64},
    "gdas": {"batch_size": 64},
    "spos": {"batch_size": 64, "lr": 0.1, "population": 4, "generations": 1, "parents": 2, "mutations": 1,
             "crossovers": 1, "calibration_batches": 1},
}
"""Global batches of 64 with the papers' optimizers; SPOS's evolution cut to a token (training is timed)."""


def search(group: Group, strategy: str, epochs: int, threads: int, run_dir: Path) -> None:
    """One process's part of a search (module level: spawned processes import it by name)."""
    torch.set_num_threads(threads)
    spec = nasforge.load(SPACE, **SIZE)
    data = load_dataset("digits", spec.graph.inputs["image"], seed=0)
    run_oneshot(spec, strategy, data, hparams={**BUDGET[strategy], "epochs": epochs}, storage=":memory:",
                run_dir=run_dir, group=group)


def all_reduce_us(group: Group, out: Path) -> None:
    """Median microseconds of a 64-float all-reduce, written to ``out`` by rank 0."""
    t = torch.zeros(64)
    times = []
    for _ in range(300):
        start = time.perf_counter()
        dist.all_reduce(t)
        times.append(time.perf_counter() - start)
    if group.lead:
        out.write_text(str(round(statistics.median(times[50:]) * 1e6, 1)))


def epoch_seconds(run_dir: Path) -> float:
    records = [r for r in json.loads((run_dir / LOG).read_text())["records"] if r.get("stage", "supernet") == "supernet"]
    return round(statistics.median(r["seconds"] for r in records[1:]), 3)


def difference(a: Path, b: Path) -> float:
    one, two = (torch.load(d / CHECKPOINT, weights_only=True)["supernet"] for d in (a, b))
    return max(float((one[k].double() - two[k].double()).abs().max()) for k in one if one[k].is_floating_point())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--strategies", nargs="+", default=list(BUDGET), choices=list(BUDGET))
    parser.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "results" / "oneshot_nproc.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        spawn(args.nproc, all_reduce_us, (Path(folder) / "all_reduce_us",))
        latency = float((Path(folder) / "all_reduce_us").read_text())
        print(f"gloo all-reduce of 64 floats between {args.nproc} processes: {latency} us", flush=True)
        for strategy in args.strategies:
            runs = {"1 process, 1 thread": (1, 1), f"1 process, {args.nproc} threads": (1, args.nproc),
                    f"{args.nproc} processes, 1 thread each": (args.nproc, 1)}
            row: dict[str, Any] = {"strategy": strategy, "load_average": os.getloadavg()[0]}
            for name, (nproc, threads) in runs.items():
                run_dir = Path(folder) / strategy / f"{nproc}x{threads}"
                if nproc == 1:
                    search(SOLO, strategy, args.epochs, threads, run_dir)
                else:
                    spawn(nproc, search, (strategy, args.epochs, threads, run_dir))
                row[name] = epoch_seconds(run_dir)
                print(strategy, name, row[name], "s per epoch", flush=True)
            single, threads, multi = (Path(folder) / strategy / n for n in ("1x1", f"1x{args.nproc}", f"{args.nproc}x1"))
            row["max_weight_difference"] = {"processes": difference(single, multi), "threads": difference(single, threads)}
            genotypes = [json.loads((d / LOG).read_text())["records"][-1]["assignment"] for d in (single, threads, multi)]
            row["same_genotype"] = {"processes": genotypes[2] == genotypes[0], "threads": genotypes[1] == genotypes[0]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"space": "nas_bench_201", "size": SIZE, "dataset": "digits", "epochs": args.epochs,
              "nproc": args.nproc, "all_reduce_us": latency, "cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "rows": rows}
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
