"""Compile time and latency of every backend, side by side in one run: eager, Inductor, ONNX Runtime, TVM.

For each network and batch the script builds the spec, runs eager PyTorch (the network as built, in
inference mode: what a user runs without nasforge), then compiles the graph-pass-optimized network (BN
folded, as ``nasforge compile`` does) with each backend, checks every output against eager (max abs error)
and times the modules back to back on the same inputs with the same loop (:meth:`CompiledModule.latency`).

TVM appears twice. *TVM untuned* compiles against an empty tuning database (default schedules).
*TVM tuned* compiles against the persistent database (``--tuning-db``, default the user's), which a
separate tuning run filled, plus ``--tune-trials`` more trials for the tasks of this network it lacks (the
hottest first); the table says how many of the network's tasks had records. Where the database has no
record for a network and no trials are asked for, the tuned module is the untuned one and is not compiled
twice.

    TVM_NUM_THREADS=2 python benchmarks/compile_latency.py                          # every model, batch 1 and 8
    TVM_NUM_THREADS=2 python benchmarks/compile_latency.py --models resnet50 convnext_tiny --batches 1
    python benchmarks/compile_latency.py --models specs/models/lenet5.yaml --backends eager onnxruntime
    python benchmarks/compile_latency.py --threads 1 ...   # on a loaded machine: two-thread runtimes stall there

Writes ``benchmarks/results/compile_latency.json`` (machine, versions, load average at start and end, every
row with its latency spread, compile and tuning details) and prints the markdown table of
``docs/performance.md``. Never a timed test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "resnet18": ("specs/models/resnet.yaml", "resnet18"),
    "resnet50": ("specs/models/resnet.yaml", "resnet50"),
    "mobilenet_v2": ("specs/models/mobilenet_v2.yaml", None),
    "convnext_tiny": ("specs/models/convnext.yaml", "convnext_tiny"),
    "deit_small": ("specs/models/deit.yaml", "deit_small"),
}
BACKENDS = ("eager", "inductor", "onnxruntime", "tvm_untuned", "tvm_tuned")
MAX_SECONDS = 20.0
"""Untuned TVM runs a network in seconds: a timing loop stops after this many seconds (at least 3 calls)."""


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, thread settings, versions."""
    from nasforge.backends.base import host_cores

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    versions = {}
    for package in ("torch", "apache-tvm", "apache-tvm-ffi", "onnxruntime", "onnx", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu, "cores": host_cores(), "machine": platform.machine(), "python": platform.python_version(),
            "TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS"), "versions": versions}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def resolve_model(name: str) -> tuple[str, str | None]:
    """A model of the table by name, or any spec as ``path.yaml`` or ``path.yaml:variant``."""
    if name in MODELS:
        path, variant = MODELS[name]
        return str(ROOT / path), variant
    path, _, variant = name.partition(":")
    return path, variant or None


def network(name: str, batch: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """The spec built, its graph-pass-optimized copy, inputs of the batch and eager's reference outputs."""
    import torch

    import nasforge
    from nasforge.compiler.fx_builder import example_inputs
    from nasforge.compiler.passes import optimize

    path, variant = resolve_model(name)
    spec = nasforge.load(path, variant=variant, **overrides)
    gm = calibrate_batch_norm(spec.build(), [example_inputs(spec.graph, batch=16, seed=s) for s in (1, 2, 3)]).eval()
    inputs = example_inputs(spec.graph, batch=batch)
    with torch.inference_mode():
        out = gm(*inputs)
    reference = [t.numpy() for t in (out if isinstance(out, (tuple, list)) else [out])]
    return {"spec": spec, "gm": gm, "optimized": optimize(gm), "inputs": inputs, "reference": reference,
            "arrays": [t.numpy() for t in inputs]}


def calibrate_batch_norm(gm: Any, batches: Sequence[Sequence[Any]]) -> Any:
    """Batch-norm statistics from a few random batches (cumulative averages), instead of fresh ones.

    Why: PyTorch's default initialization shrinks the signal layer by layer, and with fresh statistics
    (mean 0, variance 1) a deep plain stack passes almost nothing on: MobileNetV2's output was its
    classifier's bias whatever the input, so every backend "agreed" with eager to the last bit. Measured
    statistics put every layer's activations at unit scale, as trained weights do, and the error column means
    something. Networks without batch norm are returned as they are.
    """
    import torch

    norms = [m for m in gm.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return gm
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the passes
    gm.train()
    with torch.no_grad():
        for inputs in batches:
            gm(*inputs)
    return gm


def compile_backend(backend: str, net: dict[str, Any], tune_trials: int, tuning_db: str | None,
                    empty_db: str, threads: int, retune: bool = False) -> Any:
    """One backend's module: eager on the network as built, every other backend on the optimized copy."""
    from nasforge import backends

    if backend == "eager":
        return backends.compile(net["gm"], net["inputs"], "eager")
    if backend == "tvm_untuned":
        return backends.compile(net["optimized"], net["inputs"], "tvm", options={"tuning_db": empty_db})
    if backend == "tvm_tuned":
        options: dict[str, Any] = {"tuning_db": tuning_db}
        if tune_trials:
            options.update(tune_trials=tune_trials, retune=retune)
        return backends.compile(net["optimized"], net["inputs"], "tvm", options=options)
    if backend == "onnxruntime":
        return backends.compile(net["optimized"], net["inputs"], backend, options={"threads": threads})
    return backends.compile(net["optimized"], net["inputs"], backend)


def database_use(module: Any) -> dict[str, int] | None:
    """How many of a TVM module's tasks took a tuned schedule from the database (None for other backends)."""
    applied = module.info.tuning.get("applied", {}) if module.backend == "tvm" else {}
    if not applied:
        return None
    first = next(iter(applied.values()))
    return {"tasks_total": first.get("tasks_total", -1), "tasks_from_database": first.get("tasks_from_database", 0)}


def tvm_op_profile(module: Any, arrays: Sequence[np.ndarray], calls: int = 1) -> dict[str, Any]:
    """Where a TVM module spends its time: each kernel's milliseconds per network call, and the sum per kind
    of kernel (``fused_matmul3_add6`` counts as ``matmul_add``), timed by the Relax VM's instrument hook.

    Why here and not from the tuner: the tuner's per-task times are measured alone, with other numbers of
    threads and caches warm; this is the module as the table times it.
    """
    import re
    from collections import Counter, defaultdict

    import tvm

    module._ensure_loaded()  # the module's own VM and weights, exactly what latency() ran
    vm = module._vm
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), module._device) for a in arrays] + module._params
    seconds: dict[str, float] = defaultdict(float)
    counts: Counter[str] = Counter()
    started: dict[str, float] = {}

    def instrument(_func: Any, symbol: str, before: bool, _ret: Any, *_args: Any) -> int:
        if before:
            started[symbol] = time.perf_counter()
        elif not symbol.startswith("vm.builtin"):
            seconds[symbol] += time.perf_counter() - started.pop(symbol)
            counts[symbol] += 1
        return 0

    vm.set_instrument(instrument)
    try:
        for _ in range(calls):
            vm["main"](*args)
    finally:
        vm.set_instrument(lambda *_: 0)
    kinds: dict[str, float] = defaultdict(float)
    for symbol, total in seconds.items():
        kinds[re.sub(r"(?<=[a-z])\d+(?=_|$)", "", symbol.removeprefix("fused_"))] += total
    per_call = {k: round(1e3 * v / calls, 3) for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])}
    return {"kernels_ms": dict(list(per_call.items())[:25]),
            "kernel_calls": {k: counts[k] // calls for k in list(per_call)[:25]},
            "kinds_ms": {k: round(1e3 * v / calls, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "total_kernel_ms": round(1e3 * sum(seconds.values()) / calls, 3)}


def measure(modules: dict[str, Any], net: dict[str, Any], warmup: int, repeats: int) -> dict[str, Any]:
    """Latency of every module, timed against each other in interleaved rounds
    (:func:`nasforge.backends.base.measure_interleaved`: a slow spell of the shared machine falls on every
    backend alike, so the ratios to eager hold); a TVM module without tuned schedules (seconds per call) is
    timed alone afterwards, with no warm-up beyond its output check. Each is capped at :data:`MAX_SECONDS`."""
    from nasforge.backends.base import measure_interleaved

    arrays = net["arrays"]
    distinct: dict[str, Any] = {}
    for backend, module in modules.items():
        if all(module is not other for other in distinct.values()):
            distinct[backend] = module
    slow = {b for b, m in distinct.items() if (database_use(m) or {}).get("tasks_from_database", 1) == 0}
    fast = {b: (lambda m=m: m.run_numpy(*arrays)) for b, m in distinct.items() if b not in slow}
    timings: dict[str, Any] = measure_interleaved(fast, warmup, repeats, MAX_SECONDS * len(fast)) if fast else {}
    for backend in slow:
        timings[backend] = distinct[backend].latency(0, repeats, MAX_SECONDS, inputs=arrays)
    for backend, module in modules.items():  # one module under two names is timed once
        if backend not in timings:
            timings[backend] = next(timings[b] for b, m in distinct.items() if m is module)
    return timings


def bench_network(name: str, batch: int, backends: Sequence[str], args: argparse.Namespace,
                  empty_db: str) -> list[dict[str, Any]]:
    """Every backend's row for one network at one batch."""
    from nasforge.backends.auto import agrees, max_abs_error

    net = network(name, batch, args.overrides)
    modules: dict[str, Any] = {}
    rows = {backend: {"model": name, "batch": batch, "backend": backend} for backend in backends}
    # tuned before untuned: where the database knows none of the network's tasks they are one module
    for backend in sorted(backends, key=lambda b: b == "tvm_untuned"):
        row = rows[backend]
        if backend == "tvm_untuned" and "tvm_tuned" in modules and not args.tune_trials \
                and (database_use(modules["tvm_tuned"]) or {}).get("tasks_from_database") == 0:
            modules[backend] = modules["tvm_tuned"]
            row.update({k: v for k, v in rows["tvm_tuned"].items() if k != "backend"}, same_module_as="tvm_tuned")
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {name} batch {batch}: {backend}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            module = compile_backend(backend, net, args.tune_trials, args.tuning_db, empty_db, args.threads,
                                     args.retune)
            outputs = module.run_numpy(*net["arrays"])
        except Exception as err:  # one backend failing on one network is a row of the table, not the end
            row["error"] = f"{type(err).__name__}: {err}"[:500]
            continue
        row.update(wall_s=round(time.perf_counter() - started, 2), compile_s=round(module.info.compile_s, 2),
                   tuning_s=round(module.info.tuning_s, 2), max_abs_err=max_abs_error(outputs, net["reference"]),
                   agrees=agrees(outputs, net["reference"]), database=database_use(module))
        if module.info.notes:
            row["notes"] = list(module.info.notes)  # for TVM: the prepack choice and the database's coverage
        if module.info.tuning.get("trials"):
            row["tuning"] = {k: module.info.tuning.get(k) for k in
                             ("trials", "tasks_total", "tasks_from_database", "tasks_tuned", "tasks_left_untuned")}
        modules[backend] = module
    load_before = load_average()
    timings = measure(modules, net, args.warmup, args.repeats)
    eager = timings.get("eager")
    for backend, latency in timings.items():
        row = rows[backend]
        row.update(latency.as_dict(), load_average=[load_before, load_average()])
        if eager is not None:
            row["speedup_vs_eager"] = round(eager.median_ms / latency.median_ms, 3)
    tuned = modules.get("tvm_tuned")
    if tuned is not None and args.profile and (database_use(tuned) or {}).get("tasks_from_database"):
        try:
            rows["tvm_tuned"]["profile"] = tvm_op_profile(modules["tvm_tuned"], net["arrays"])
        except Exception as err:  # a diagnostic; the row's numbers stand without it
            rows["tvm_tuned"]["profile_error"] = f"{type(err).__name__}: {err}"[:300]
    return list(rows.values())


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table of ``docs/performance.md``: one line per network, batch and backend."""
    lines = ["| model | batch | backend | median ms (p10-p90) | vs eager | compile s | tuning s | TVM tasks tuned "
             "| max abs err |", "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            reason = " ".join(r["error"][:80].replace("|", "/").split())
            lines.append(f"| {r['model']} | {r['batch']} | {r['backend']} | failed: {reason} |||||")
            continue
        if "median_ms" not in r:
            continue
        db = r.get("database")
        tasks = f"{db['tasks_from_database']}/{max(db['tasks_total'], 0)}" if db else ""
        compile_s = "(same as tuned)" if r.get("same_module_as") else f"{r['compile_s']:.1f}"
        tuning_s = f"{r['tuning_s']:.0f}" if r.get("tuning_s") else ""
        err = "" if r["backend"] == "eager" else f"{r['max_abs_err']:.1e}"
        lines.append(f"| {r['model']} | {r['batch']} | {r['backend']} | {r['median_ms']:.1f} "
                     f"({r['p10_ms']:.1f}-{r['p90_ms']:.1f}) | {r.get('speedup_vs_eager', 0):.2f}x | {compile_s} "
                     f"| {tuning_s} | {tasks} | {err} |")
    return "\n".join(lines)


def write_json(path: Path, result: dict[str, Any]) -> None:
    """Atomically: a reader (or a killed run) sees the previous file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS),
                   help=f"names ({', '.join(MODELS)}) or spec paths (path.yaml or path.yaml:variant)")
    p.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="spec parameter overrides (all models)")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--tune-trials", type=int, default=0,
                   help="extra MetaSchedule trials per network and batch for TVM tuned (tasks the database lacks)")
    p.add_argument("--tuning-db", default=None, help="tuning database root (default: the persistent one)")
    p.add_argument("--retune", action="store_true",
                   help="let --tune-trials improve tasks the database knows too (hottest first)")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the per-kernel time profile of the tuned TVM module")
    p.add_argument("--threads", type=int, default=None,
                   help="threads of every backend (torch, ONNX Runtime, TVM); default $TVM_NUM_THREADS or all cores")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compile_latency.json")
    args = p.parse_args(argv)
    from nasforge.cli import parse_overrides

    args.overrides = parse_overrides(args.set)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from nasforge.backends.base import host_cores

    args.threads = args.threads or int(os.environ.get("TVM_NUM_THREADS") or host_cores())
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before tvm loads, here and in its workers
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"machine": machine_info(), "threads": args.threads,
                              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average_start": load_average(),
                              "settings": {"models": args.models, "batches": args.batches, "backends": args.backends,
                                           "tune_trials": args.tune_trials, "retune": args.retune,
                                           "tuning_db": args.tuning_db,
                                           "repeats": args.repeats, "warmup": args.warmup, "overrides": args.overrides,
                                           "max_seconds": MAX_SECONDS}}
    rows: list[dict[str, Any]] = []
    empty_db = tempfile.mkdtemp(prefix="nasforge-empty-tuning-db-")
    started = time.perf_counter()
    try:
        for name in args.models:
            for batch in args.batches:
                rows.extend(bench_network(name, batch, args.backends, args, empty_db))
                result.update(rows=rows, load_average_end=load_average(),
                              total_s=round(time.perf_counter() - started, 1), markdown=markdown(rows))
                write_json(args.out, result)  # after every network: a long run killed keeps what it measured
    finally:
        shutil.rmtree(empty_db, ignore_errors=True)
    print(result["markdown"])
    print(f"\nload average {result['load_average_start']} -> {result['load_average_end']}; "
          f"{result['total_s']} s; written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
