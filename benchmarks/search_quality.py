"""Search quality: how fast random search, regularized evolution, TPE and NSGA-II find accurate networks.

Each strategy searches the NAS-Bench-201 space (reduced width so that it trains on a CPU) for a fixed
number of trials per seed; every candidate is trained the same way (same data split, same training seed)
on scikit-learn's digits, so a network has one accuracy whichever strategy proposes it. That makes the
benchmark a small tabular benchmark built lazily: each distinct network (by graph hash) is trained once
and looked up afterwards, and the strategies differ only in which networks they try. NSGA-II searches two
objectives (accuracy and parameters); the others accuracy alone.

    OMP_NUM_THREADS=1 python benchmarks/search_quality.py            # writes the JSON and the plot

The result: best validation accuracy found after each trial (mean and spread over seeds), the hypervolume
of the (accuracy, parameters) front each strategy met, and the time it took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

import nasforge
from nasforge.api import Spec
from nasforge.search.data import load_dataset
from nasforge.search.hashing import graph_hash
from nasforge.search.objectives import Evaluator, Objective
from nasforge.search.study import MEMORY_STORAGE, Search
from nasforge.search.training import Trainer

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "specs" / "spaces" / "nas_bench_201.yaml"
EDGES = ("edge_1_0", "edge_2_0", "edge_2_1", "edge_3_0", "edge_3_1", "edge_3_2")
ACCURACY = Objective.parse("accuracy:max")
PARAMS = Objective.parse("params:min")


@dataclass(frozen=True)
class Contender:
    """A strategy as the benchmark runs it: its objectives and the options it needs for a short budget."""

    label: str
    strategy: str
    objectives: tuple[Objective, ...]
    options: dict[str, Any] = field(default_factory=dict)


def contenders(trials: int) -> list[Contender]:
    """Population-based strategies spend their first population on random samples; at 20 trials the
    defaults (20) would leave them nothing to evolve, so their populations scale with the budget."""
    population = max(4, trials // 2 - 2)
    return [
        Contender("random", "random", (ACCURACY,)),
        Contender("evolution", "evolution", (ACCURACY,), {"population": population, "sample": population // 2}),
        Contender("tpe", "tpe", (ACCURACY,)),
        Contender("nsga2 (accuracy, params)", "nsga2", (ACCURACY, PARAMS), {"population": population}),
    ]


@dataclass
class TrainOnce:
    """The Evaluator's trainer, training each distinct network once (training is seeded, so a network's
    accuracy is one number: looking it up is the same as training it again). The table, by graph hash,
    also keeps each network's parameter count, which the accuracy-only searches do not record."""

    trainer: Trainer
    table: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def __call__(self, spec: Spec) -> dict[str, float]:
        key = graph_hash(spec.graph)
        if key not in self.table:
            start = time.perf_counter()
            self.table[key] = {**self.trainer(spec), "params": float(spec.check().totals.params)}
            self.seconds += time.perf_counter() - start
        return self.table[key]


def best_so_far(values: list[float]) -> list[float]:
    out, best = [], float("-inf")
    for v in values:
        best = max(best, v)
        out.append(best)
    return out


def hypervolume(points: list[tuple[float, float]], params_max: float) -> float:
    """Area dominated by (accuracy up, params down) points in the box accuracy in [0, 1], params in
    [0, params_max], as a fraction of the box: 1 would be a perfect network with no parameters."""
    area, best_acc = 0.0, 0.0
    for params, acc in sorted((p / params_max, a) for a, p in points):  # sweep by growing size
        if acc > best_acc:
            area += (acc - best_acc) * (1 - params)
            best_acc = acc
    return area


def run(args: argparse.Namespace) -> dict[str, Any]:
    overrides = dict(C=args.C, N=args.N, resolution=args.resolution)
    spec = nasforge.load(SPACE, **overrides)
    dataset = load_dataset("digits", next(iter(spec.expanded.inputs.values())), seed=0)
    trainer = TrainOnce(Trainer(dataset, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=0))
    largest = spec.with_choices({f"params.{e}": "nor_conv_3x3" for e in EDGES})
    params_max = float(largest.check().totals.params)
    results: dict[str, Any] = {}
    start = time.perf_counter()
    for contender in contenders(args.trials):
        runs = []
        for seed in range(args.seeds):
            search = Search(spec, contender.strategy, list(contender.objectives), budget=args.trials,
                            storage=MEMORY_STORAGE, study_name=f"{contender.strategy}-{seed}", seed=seed,
                            evaluator=Evaluator(trainer=trainer), strategy_options=contender.options)
            study = search.run()
            trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            measured = [trainer.table[t.user_attrs["graph_hash"]] for t in trials]
            accuracy = [m["accuracy"] for m in measured]
            params = [m["params"] for m in measured]
            best = max(range(len(trials)), key=lambda i: (accuracy[i], -params[i]))
            runs.append({
                "seed": seed,
                "best_so_far": best_so_far(accuracy),
                "best": {"accuracy": accuracy[best], "params": params[best],
                         "cell": {e: json.loads(trials[best].user_attrs["assignment"])[f"params.{e}"]
                                  for e in EDGES}},
                "hypervolume": hypervolume(list(zip(accuracy, params)), params_max),
                "distinct_networks": len({t.user_attrs["graph_hash"] for t in trials}),
            })
            print(f"{contender.label:>26} seed {seed}: best accuracy {accuracy[best]:.4f} "
                  f"({params[best]:,.0f} params), {len(trainer.table)} networks trained, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
        finals = [r["best"]["accuracy"] for r in runs]
        curves = list(zip(*(r["best_so_far"] for r in runs)))
        results[contender.label] = {
            "strategy": contender.strategy, "objectives": [str(o) for o in contender.objectives],
            "options": contender.options, "runs": runs,
            "mean_best_so_far": [statistics.fmean(c) for c in curves],
            "min_best_so_far": [min(c) for c in curves], "max_best_so_far": [max(c) for c in curves],
            "final_best": {"mean": statistics.fmean(finals), "std": statistics.pstdev(finals),
                           "min": min(finals), "max": max(finals)},
            "hypervolume": {"mean": statistics.fmean(r["hypervolume"] for r in runs),
                            "std": statistics.pstdev(r["hypervolume"] for r in runs)},
        }
    accuracies = [m["accuracy"] for m in trainer.table.values()]
    return {
        "benchmark": "search_quality",
        "space": str(SPACE.relative_to(ROOT)), "overrides": overrides, "params_max": params_max,
        "dataset": dataset.description,
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "sgd (nesterov)",
                     "lr": args.lr, "schedule": "cosine", "seed": 0},
        "seeds": args.seeds, "trials": args.trials,
        "networks_trained": len(trainer.table),
        "trained_accuracy": {"min": min(accuracies), "median": statistics.median(accuracies),
                             "max": max(accuracies)},
        "training_seconds": round(trainer.seconds, 1),
        "seconds_per_network": round(trainer.seconds / max(1, len(trainer.table)), 2),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "optuna": optuna.__version__, "nasforge": nasforge.__version__},
        "strategies": results,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Best accuracy found vs trials: mean over seeds, shaded between the worst and best seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, r in result["strategies"].items():
        x = range(1, len(r["mean_best_so_far"]) + 1)
        line, = ax.plot(x, r["mean_best_so_far"], label=label, linewidth=2)
        ax.fill_between(x, r["min_best_so_far"], r["max_best_so_far"], color=line.get_color(), alpha=0.15)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("trials")
    ax.set_ylabel("best validation accuracy so far")
    over = ", ".join(f"{k}={v}" for k, v in result["overrides"].items())
    epochs = result["training"]["epochs"]
    ax.set_title(f"NAS-Bench-201 space ({over}) on digits, {epochs} epoch{'s' * (epochs > 1)} per network; "
                 f"{result['seeds']} seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--C", type=int, default=8, help="channels of the first stage (paper: 16)")
    parser.add_argument("--N", type=int, default=1, help="cells per stage (paper: 5)")
    parser.add_argument("--resolution", type=int, default=32, help="input size (paper: 32; digits are 8x8)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "search_quality.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "search_quality.png")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    result = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.plot)
    print(f"wrote {args.output} and {args.plot}")


if __name__ == "__main__":
    main()
