"""One-shot search quality and cost: DARTS, GDAS and SPOS on the NAS-Bench-201 space, side by side.

Each strategy searches the NAS-Bench-201 cell with a small supernet (stated budgets below) on scikit-learn's
digits, or on CIFAR-10 when a local copy is given, for several seeds. Every found cell is then retrained the
same way at a larger size, and so are random cells (the baseline any search must beat). The searches see
only the training split (cut again into their own train and validation parts); the retrained accuracy is
measured on the validation split, which no search saw, so SPOS's selection on validation accuracy does not
leak into the number reported.

Also measured: the supernet's cost per training step against a plain PyTorch network of the same size
written by hand (the same NAS-Bench-201 supernet as a few nn.Modules, checked to have exactly the same
weights), in each supernet mode, and SPOS's rank correlation between supernet-estimated and stand-alone
accuracy over a sample of subnets.

    OMP_NUM_THREADS=1 python benchmarks/oneshot.py                      # digits, 3 seeds, ~15 min on 2 cores
    OMP_NUM_THREADS=1 python benchmarks/oneshot.py --cifar10 PATH --limit 10000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import nasforge
from nasforge.api import Spec
from nasforge.search.data import Dataset, load_dataset
from nasforge.search.oneshot.discretize import evaluation_spec, genotype_text
from nasforge.search.oneshot.runner import run_oneshot
from nasforge.search.oneshot.supernet import Supernet, build_supernet
from nasforge.search.space import Space
from nasforge.search.study import MEMORY_STORAGE
from nasforge.search.training import Trainer

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "specs" / "spaces" / "nas_bench_201.yaml"
SEARCH_SIZE = {"C": 8, "N": 1}
RETRAIN_SIZE = {"C": 16, "N": 2}
BUDGETS: dict[str, dict[str, Any]] = {
    "darts": {"epochs": 30, "batch_size": 64},
    "gdas": {"epochs": 60, "batch_size": 64},
    "spos": {"epochs": 30, "batch_size": 64, "lr": 0.1, "population": 20, "generations": 10, "parents": 5,
             "mutations": 8, "crossovers": 8, "calibration_batches": 4, "rank_subnets": 8, "rank_epochs": 3},
}
"""Search budgets: DARTS (first order) and GDAS with their papers' optimizers and fewer epochs, SPOS with a
smaller evolution (the paper's 50 x 20 would dominate the run) and lr 0.1 for batches of 64 (the paper's 0.5
is for batches of 1024)."""
RETRAIN = {"epochs": 10, "batch_size": 64}
"""Stand-alone training of every found (and random) cell: Trainer's SGD, lr 0.1, cosine, seeded."""
QUICK = {"darts": {"epochs": 1, "max_steps": 2}, "gdas": {"epochs": 1, "max_steps": 2},
         "spos": {"epochs": 1, "max_steps": 2, "population": 4, "generations": 2, "parents": 2, "mutations": 1,
                  "crossovers": 1, "calibration_batches": 1, "rank_subnets": 3, "rank_epochs": 1},
         "retrain": {"epochs": 1}}
"""``--quick``: the whole pipeline in a minute, numbers meaningless (a smoke run)."""


# -- data ---------------------------------------------------------------------------------------------------

def datasets(name: str, resolution: int, seed: int, limit: int | None) -> tuple[Dataset, Dataset]:
    """(search data, full data): the search data is the training split cut again 80/20, so the full data's
    validation split stays unseen by every search."""
    input_type = next(iter(nasforge.load(SPACE, resolution=resolution).expanded.inputs.values()))
    full = load_dataset(name, input_type, seed=seed, limit=limit)
    images, labels = full.train.tensors
    cut = len(labels) - max(1, len(labels) // 5)
    search = Dataset(TensorDataset(images[:cut], labels[:cut]), TensorDataset(images[cut:], labels[cut:]),
                     full.num_classes, full.name, f"{full.description}; searched on its train split, 80/20")
    return search, full


# -- searches and retraining ----------------------------------------------------------------------------------

def search(strategy: str, space: Spec, data: Dataset, seed: int, hparams: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        result = run_oneshot(space, strategy, data, hparams=hparams, storage=MEMORY_STORAGE, seed=seed,
                             run_dir=Path(folder))
        seconds = time.perf_counter() - start
    last = result.records[-1]
    row = {"seed": seed, "search_seconds": round(seconds, 1), "assignment": result.assignment,
           "genotype": genotype_text(result.assignment), "supernet_val_accuracy": last.get("val_accuracy")}
    if strategy == "spos":
        stages = [r for r in result.records if r["stage"] == "supernet"]
        row["supernet_train_seconds"] = round(sum(r["seconds"] for r in stages), 1)
        row["subnets_evaluated"] = last["evaluated"]
        row["rank_correlation"] = last.get("rank_correlation")
    else:
        row["collapse"] = last.get("collapse", {}).get("collapsed")
    return row


def retrain(space: Spec, assignment: dict[str, Any], data: Dataset, seed: int, epochs: int) -> dict[str, Any]:
    member = evaluation_spec(space, assignment, RETRAIN_SIZE)
    start = time.perf_counter()
    trained = Trainer(data, epochs=epochs, batch_size=RETRAIN["batch_size"], seed=seed)(member)
    return {"retrained_accuracy": trained["accuracy"], "retrain_params": member.check().totals.params,
            "retrain_seconds": round(time.perf_counter() - start, 1)}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    accuracies = [r["retrained_accuracy"] for r in rows]
    searches = [r["search_seconds"] for r in rows if "search_seconds" in r]
    return {"retrained_accuracy_mean": round(statistics.mean(accuracies), 4),
            "retrained_accuracy_std": round(statistics.stdev(accuracies), 4) if len(rows) > 1 else 0.0,
            "retrained_accuracy_min": round(min(accuracies), 4), "retrained_accuracy_max": round(max(accuracies), 4),
            "search_seconds_mean": round(statistics.mean(searches), 1) if searches else None}


# -- supernet overhead against plain PyTorch -------------------------------------------------------------------

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))


def relu_conv_bn(dim: int, kernel: int) -> nn.Module:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(dim, dim, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(dim))


class PlainEdge(nn.Module):
    """The five candidate ops of an edge, as the NAS-Bench-201 search code writes them."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList([nn.Identity(), relu_conv_bn(dim, 1), relu_conv_bn(dim, 3),
                                  nn.AvgPool2d(3, 1, 1, count_include_pad=False)])  # OPS[1:]; none computes nothing

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None, index: int) -> torch.Tensor | None:
        if weights is None:  # single path: the chosen op alone
            return None if index == 0 else self.ops[index - 1](x)
        if index >= 0:  # gumbel: the sampled op, times its straight-through weight
            return None if index == 0 else self.ops[index - 1](x) * weights[index]
        return sum(w * op(x) for w, op in zip(weights[1:], self.ops))  # mixed: every non-zero op


class PlainCell(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.edges = nn.ModuleList([PlainEdge(dim) for _ in EDGES])

    def forward(self, x: torch.Tensor, weights: list, indexes: list[int]) -> torch.Tensor:
        nodes = [x]
        for j in (1, 2, 3):
            terms = [edge(nodes[i], weights[k], indexes[k]) for k, (edge, (to, i)) in enumerate(zip(self.edges, EDGES))
                     if to == j]
            present = [t for t in terms if t is not None]
            nodes.append(sum(present) if present else torch.zeros_like(x))
        return nodes[3]


class PlainReduction(nn.Module):
    def __init__(self, dim_in: int, dim: int) -> None:
        super().__init__()
        self.conv_a = nn.Sequential(nn.ReLU(), nn.Conv2d(dim_in, dim, 3, 2, 1, bias=False), nn.BatchNorm2d(dim))
        self.conv_b = relu_conv_bn(dim, 3)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(dim_in, dim, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_b(self.conv_a(x)) + self.downsample(x)


class PlainSupernet(nn.Module):
    """The NAS-Bench-201 supernet in plain PyTorch: one alpha row per edge shared by every cell."""

    def __init__(self, C: int, N: int, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        layers: list[nn.Module] = []
        for stage, dim in enumerate((C, 2 * C, 4 * C)):
            if stage:
                layers.append(PlainReduction(dim // 2, dim))
            layers += [PlainCell(dim) for _ in range(N)]
        self.layers = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(4 * C), nn.ReLU())
        self.classifier = nn.Linear(4 * C, num_classes)
        self.alphas = nn.Parameter(1e-3 * torch.randn(len(EDGES), len(OPS)))
        self.mode, self.tau, self.path = "mixed", 1.0, [3] * len(EDGES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "mixed":
            weights, indexes = list(torch.softmax(self.alphas, -1)), [-1] * len(EDGES)
        elif self.mode == "gumbel":
            hard = F.gumbel_softmax(torch.log_softmax(self.alphas, -1), tau=self.tau, hard=True)
            weights, indexes = list(hard), [int(i) for i in hard.argmax(-1)]
        else:
            weights, indexes = [None] * len(EDGES), self.path
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x, weights, indexes) if isinstance(layer, PlainCell) else layer(x)
        return self.classifier(self.lastact(x).mean(dim=(2, 3)))

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name != "alphas"]


def step_seconds(net: nn.Module, weights: list[nn.Parameter], images: torch.Tensor, labels: torch.Tensor,
                 before: Callable[[], None]) -> Callable[[], float]:
    """A function timing one weight step (forward, backward, SGD step) of ``net``."""
    opt = torch.optim.SGD(weights, lr=0.01, momentum=0.9)

    def step() -> float:
        before()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(images), labels).backward()
        opt.step()
        return time.perf_counter() - start

    return step


def count(parameters: list[nn.Parameter]) -> int:
    return sum(p.numel() for p in parameters)


def overhead(space: Spec, data: Dataset, steps: int, batch: int = 64) -> dict[str, Any]:
    """Median seconds per weight step of nasforge's supernet and the plain one in each mode, interleaved
    step by step so that both see the same machine load; the same single paths for SPOS."""
    torch.manual_seed(0)
    ours: Supernet = build_supernet(space)
    params = space.graph.meta["params"]
    plain = PlainSupernet(params["C"], params["N"])
    assert count(ours.weight_parameters()) == count(plain.weight_parameters()), "not the same network"
    images, labels = (t[:batch] for t in data.train.tensors)
    out: dict[str, Any] = {"weights": count(plain.weight_parameters()), "batch": batch, "steps": steps}
    for mode in ("mixed", "gumbel", "single_path"):
        rng_ours, rng_plain = random.Random(0), random.Random(0)
        ours.set_mode(mode, tau=1.0)
        plain.mode = mode

        def path_ours() -> None:
            if mode == "single_path":
                ours.sample_path(rng_ours)

        def path_plain() -> None:
            if mode == "single_path":
                plain.path = [rng_plain.randrange(len(OPS)) for _ in EDGES]

        timed = [step_seconds(ours, ours.weight_parameters(), images, labels, path_ours),
                 step_seconds(plain, plain.weight_parameters(), images, labels, path_plain)]
        ours.train(), plain.train()
        samples: list[list[float]] = [[], []]
        for k in range(steps + 3):
            for i, step in enumerate(timed):
                seconds = step()
                if k >= 3:  # warm-up steps are not counted
                    samples[i].append(seconds)
        a, b = (statistics.median(s) for s in samples)
        out[mode] = {"nasforge_ms": round(1e3 * a, 2), "plain_pytorch_ms": round(1e3 * b, 2),
                     "ratio": round(a / b, 2)}
    return out


# -- the run --------------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    name, resolution = (f"cifar10:{args.cifar10}", 32) if args.cifar10 else ("digits", 8)
    search_space = nasforge.load(SPACE, resolution=resolution, **SEARCH_SIZE)
    budgets = {k: {**v, **(QUICK.get(k, {}) if args.quick else {})} for k, v in BUDGETS.items()}
    retrain_epochs = QUICK["retrain"]["epochs"] if args.quick else RETRAIN["epochs"]
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in (*budgets, "random")}
    for seed in args.seeds:
        search_data, full_data = datasets(name, resolution, seed, args.limit)
        for strategy, hparams in budgets.items():
            row = search(strategy, search_space, search_data, seed, hparams)
            row.update(retrain(search_space, row["assignment"], full_data, seed, retrain_epochs))
            results[strategy].append(row)
            print(f"{strategy} seed {seed}: {row['genotype']} -> {row['retrained_accuracy']:.4f} "
                  f"({row['search_seconds']} s search)", flush=True)
        cell = Space(search_space).sample(random.Random(f"random cell {seed}"))  # not SPOS's first draw
        row = {"seed": seed, "assignment": cell, "genotype": genotype_text(cell),
               **retrain(search_space, cell, full_data, seed, retrain_epochs)}
        results["random"].append(row)
        print(f"random seed {seed}: {row['genotype']} -> {row['retrained_accuracy']:.4f}", flush=True)
    _, data = datasets(name, resolution, args.seeds[0], args.limit)
    cost = overhead(search_space, data, 3 if args.quick else 20)
    print("overhead:", json.dumps(cost), flush=True)
    return {
        "benchmark": "oneshot", "space": "specs/spaces/nas_bench_201.yaml", "dataset": data.description,
        "search_size": {**SEARCH_SIZE, "resolution": resolution}, "retrain_size": {**RETRAIN_SIZE, "resolution": resolution},
        "budgets": budgets, "retrain": {**RETRAIN, "epochs": retrain_epochs, "optimizer": "sgd (nesterov)", "lr": 0.1,
                                        "schedule": "cosine"},
        "seeds": list(args.seeds), "quick": args.quick,
        "summary": {k: summary(v) for k, v in results.items()}, "runs": results, "supernet_overhead": cost,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__, "optuna": optuna.__version__},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cifar10", help="a local CIFAR-10 python-format copy (data_batch_1..5) instead of digits")
    parser.add_argument("--limit", type=int, help="a seeded random subset of this many images")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks the pipeline, measures nothing")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "oneshot.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    tmp.replace(args.output)
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
