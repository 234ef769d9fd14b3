"""Check distributed supernet training on a GPU machine: the NCCL path against one plain process.

Runs the same small DARTS search (NAS-Bench-201 cell, synthetic data, fixed seed) three ways and compares
the final supernet (architecture parameters and weights, from each run's checkpoint) with the first:

1. ``solo``: one process, no process group (the CPU);
2. ``torchrun-1``: ``torchrun --standalone --nproc-per-node 1``: the process joins a launcher's group, on the
   GPU with NCCL where CUDA is present (the collectives run, on a group of one);
3. ``nproc-2``: ``--nproc 2``: two spawned processes, NCCL with one GPU each where the machine has two GPUs,
   else gloo on the CPU.

    python benchmarks/nccl_check.py                 # writes $OUT/nccl_check.json (or benchmarks/results/)

NCCL refuses two ranks on one GPU, so on a one-GPU machine the two-rank case runs gloo on the CPU; the JSON
says which backend and device each run's process group used, as the search reported them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # nasforge from this checkout, installed or not
SEARCH = ["search", str(ROOT / "specs/spaces/nas_bench_201.yaml"), "--set", "C=8", "--set", "N=1",
          "--strategy", "darts", "--dataset", "synthetic:256", "--epochs", "2", "--batch-size", "32",
          "--hparam", "max_steps=4", "--storage", ":memory:", "--json"]


def run(name: str, prefix: list[str], extra: list[str], work: Path) -> dict[str, Any]:
    """One configuration's search: its report (backend and device as the process group had them), time and
    final checkpoint path."""
    run_dir = work / name
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    command = [*prefix, *SEARCH, "--run-dir", str(run_dir), *extra]
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    result: dict[str, Any] = {"command": " ".join(command[1:]), "returncode": proc.returncode,
                              "seconds": round(time.perf_counter() - started, 1)}
    if proc.returncode != 0:
        result["stderr_tail"] = proc.stderr[-3000:]
        return result
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    result.update(genotype=report["genotype"], processes=report["processes"], backend=report["backend"],
                  device=report["device"], checkpoint=str(run_dir / "checkpoint.pt"))
    return result


def compare(reference: str, other: str) -> dict[str, float]:
    """Largest absolute difference of the architecture parameters and of the weights between checkpoints."""
    a = torch.load(reference, weights_only=True, map_location="cpu")["supernet"]
    b = torch.load(other, weights_only=True, map_location="cpu")["supernet"]
    diffs = {"alphas": 0.0, "weights": 0.0}
    for key, tensor in a.items():
        if not torch.is_floating_point(tensor):
            continue
        kind = "alphas" if "alpha" in key else "weights"
        diffs[kind] = max(diffs[kind], float((tensor.double() - b[key].double()).abs().max()))
    return diffs


def main() -> int:
    from nasforge.search.oneshot.distributed import Group, device_for

    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "benchmarks" / "results"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    result: dict[str, Any] = {
        "torch": torch.__version__, "cuda": torch.version.cuda, "gpus": gpus,
        "gpu": torch.cuda.get_device_name(0) if gpus else None,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if gpus else None,
        "expected": {"torchrun-1": Group(0, 1, device_for(0, 1)).backend,
                     "nproc-2": Group(0, 2, device_for(0, 2)).backend}, "runs": {}}
    python = [sys.executable, "-m", "nasforge.cli"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m",
                "nasforge.cli"]
    with tempfile.TemporaryDirectory(prefix="nasforge-nccl-") as tmp:
        work = Path(tmp)
        result["runs"]["solo"] = run("solo", python, [], work)
        result["runs"]["torchrun-1"] = run("torchrun-1", torchrun, [], work)
        result["runs"]["nproc-2"] = run("nproc-2", python, ["--nproc", "2"], work)
        reference = result["runs"]["solo"].get("checkpoint")
        for name in ("torchrun-1", "nproc-2"):
            other = result["runs"][name].get("checkpoint")
            if reference and other:
                result["runs"][name]["max_abs_diff_vs_solo"] = compare(reference, other)
        for entry in result["runs"].values():
            entry.pop("checkpoint", None)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "nccl_check.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if all(r["returncode"] == 0 for r in result["runs"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
