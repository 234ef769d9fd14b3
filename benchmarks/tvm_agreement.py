"""Does TVM agree with eager on every network of the library? One compile and one run per model spec.

For each spec in ``specs/models`` the member the graph-pass tests use (the defaults, or the smallest named
variant under 30M parameters; families with none are skipped) gets fan-in-scaled random weights and random
batch-norm statistics (so a wrongly wired layer shows), is compiled with the TVM backend for this CPU at
batch 1 against the persistent tuning database (tuned schedules where it has them: ResNet-50 and
ConvNeXt-T here), and its outputs are held to eager's within 1e-4 of each output's largest magnitude.

    TVM_NUM_THREADS=2 python benchmarks/tvm_agreement.py          # writes benchmarks/results/tvm_agreement.json

A check with a results file rather than a test: about 50 compiles take longer than the test suite's budget;
the tests compile representatives (tests/backends/test_tvm.py) and every op (the coverage matrix).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' helpers: the same members and weights as the graph-pass tests

import torch  # noqa: E402

import nasforge  # noqa: E402
from nasforge.backends.tvm import TVMBackend  # noqa: E402
from nasforge.compiler.fx_builder import example_inputs  # noqa: E402
from nasforge.compiler.passes import optimize  # noqa: E402
from tests.compiler.test_passes import MODELS, _flat, library_member, randomized, run  # noqa: E402

RTOL = 1e-4


def check(path: Path) -> dict[str, Any]:
    """One library family: its member, tasks from the database, max error relative to the output scale."""
    variant = library_member(path)
    if variant is False:
        return {"spec": path.stem, "skipped": "every member has 30M parameters or more"}
    spec = nasforge.load(path, variant=variant)
    gm = randomized(spec).eval()
    inputs = example_inputs(spec.graph, batch=1)
    expected = [t.numpy() for t in _flat(run(gm, inputs))]
    started = time.perf_counter()
    compiled = TVMBackend().compile(optimize(gm), inputs, "x86")
    found = compiled.run_numpy(*[t.numpy() for t in inputs])
    errors = [float(abs(e.astype("float64") - f).max() / max(abs(e).max(), 1e-6)) for e, f in zip(expected, found)]
    applied = next(iter(compiled.info.tuning.get("applied", {}).values()), {})
    return {"spec": path.stem, "variant": variant, "params": spec.check().totals.params,
            "tasks": f"{applied.get('tasks_from_database', 0)}/{applied.get('tasks_total', 0)}",
            "relative_error": max(errors), "agrees": max(errors) <= RTOL,
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> int:
    torch.set_num_threads(2)
    rows = []
    for path in MODELS:
        print(f"[{time.strftime('%H:%M:%S')}] {path.stem}", file=sys.stderr, flush=True)
        try:
            rows.append(check(path))
        except Exception as err:  # a family that fails is a row, not the end of the run
            rows.append({"spec": path.stem, "error": f"{type(err).__name__}: {err}"[:600], "agrees": False})
    checked = [r for r in rows if "skipped" not in r]
    result = {"rtol": RTOL, "checked": len(checked), "agree": sum(bool(r.get("agrees")) for r in checked),
              "skipped": [r["spec"] for r in rows if "skipped" in r], "rows": rows}
    out = ROOT / "benchmarks" / "results" / "tvm_agreement.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    for r in rows:
        if not r.get("agrees") and "skipped" not in r:
            print(r, file=sys.stderr)
    return 0 if result["agree"] == result["checked"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
