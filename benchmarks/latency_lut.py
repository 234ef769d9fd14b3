"""How well the per-workload latency table ranks networks: LUT estimate vs measured whole-network latency.

Samples networks from the NAS-Bench-201 and MBConv (OFA MobileNetV3) spaces, estimates each one's latency
with :class:`~nasforge.search.latency_lut.LatencyLUT` (the sum of its workloads' latencies, each workload
timed once) and measures the whole network on the same backend, and reports the Spearman rank correlation
of the two (what a search needs: the order, not the milliseconds), per space and pooled, plus how many
workloads the table had to time for how many nodes.

    OMP_NUM_THREADS=1 python benchmarks/latency_lut.py                  # eager, 20 networks per space
    OMP_NUM_THREADS=1 python benchmarks/latency_lut.py --backend onnxruntime

Whole networks are timed with more repeats than workloads (their median must be steady to judge the
estimate); the table is a fresh in-memory one, so every workload is timed in this run.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr

import nasforge
from nasforge.search.latency_cache import LatencyCache, host_id
from nasforge.search.latency_lut import LatencyLUT, LatencyMeter
from nasforge.search.space import Space

ROOT = Path(__file__).resolve().parents[1]
SPACES = {
    # as published: NB201 on CIFAR (C=16, N=5, 32x32), the MBConv space on ImageNet (224x224)
    "nas_bench_201": (ROOT / "specs" / "spaces" / "nas_bench_201.yaml", {}),
    "mbconv": (ROOT / "specs" / "spaces" / "mbconv.yaml", {}),
}


def validate(space_name: str, count: int, lut: LatencyLUT, whole: LatencyMeter, seed: int) -> dict[str, Any]:
    path, overrides = SPACES[space_name]
    space = Space(nasforge.load(path, **overrides))
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        spec = space.concrete(space.sample(rng))
        before = lut.measured
        started = time.perf_counter()
        estimate = lut.estimate_ms(spec)
        lut_s = time.perf_counter() - started
        started = time.perf_counter()
        measured = whole.network_ms(spec)
        rows.append({"nodes": len(spec.graph.nodes), "new_workloads": lut.measured - before,
                     "estimate_ms": round(estimate, 4), "measured_ms": round(measured, 4),
                     "lut_s": round(lut_s, 3), "measure_s": round(time.perf_counter() - started, 3)})
    rho = spearmanr([r["estimate_ms"] for r in rows], [r["measured_ms"] for r in rows]).statistic
    return {"networks": rows, "spearman": round(float(rho), 4),
            "nodes": sum(r["nodes"] for r in rows), "workloads_timed": sum(r["new_workloads"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20, help="networks per space")
    parser.add_argument("--backend", default="eager")
    parser.add_argument("--target", default="x86")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "results" / "latency_lut.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lut = LatencyLUT(LatencyMeter(args.backend, args.target), LatencyCache.in_memory())
    whole = LatencyMeter(args.backend, args.target, repeats=50, warmup=5)
    results = {name: validate(name, args.count, lut, whole, args.seed) for name in SPACES}
    pooled = [r for res in results.values() for r in res["networks"]]
    rho = spearmanr([r["estimate_ms"] for r in pooled], [r["measured_ms"] for r in pooled]).statistic
    report = {"backend": args.backend, "target": args.target, "threads": args.threads, "host": host_id(),
              "torch": torch.__version__, "python": platform.python_version(), "count_per_space": args.count,
              "spearman_pooled": round(float(rho), 4), "spaces": results}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    for name, res in results.items():
        print(f"{name}: Spearman {res['spearman']:.3f} over {args.count} networks; "
              f"{res['workloads_timed']} workloads timed for {res['nodes']} nodes")
    print(f"pooled: Spearman {rho:.3f}; wrote {args.output}")


if __name__ == "__main__":
    main()
