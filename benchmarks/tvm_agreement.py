"""Does TVM agree with eager on every network of the library? One compile and one run per model spec.

For each spec in ``specs/models`` the member the graph-pass tests use (the defaults, or the smallest named
variant under 30M parameters; families with none are skipped) gets fan-in-scaled random weights and random
batch-norm statistics (so a wrongly wired layer shows), is compiled with the TVM backend for this CPU at
batch 1 against the persistent tuning database (tuned schedules where it has them: ResNet-50 and
ConvNeXt-T here), and its outputs are held to eager's within 1e-4 of each output's largest magnitude.

    TVM_NUM_THREADS=2 python benchmarks/tvm_agreement.py          # writes benchmarks/results/tvm_agreement.json
    TVM_NUM_THREADS=2 python benchmarks/tvm_agreement.py --large  # the families with no member under 30M
                                                                  # (their smallest member; tvm_agreement_large.json)
    TVM_NUM_THREADS=2 python benchmarks/tvm_agreement.py --only hyena s4d   # re-check some families in the file
    TVM_NUM_THREADS=2 python benchmarks/tvm_agreement.py --large --resume   # go on where a run stopped

A check with a results file rather than a test: about 50 compiles take longer than the test suite's budget;
the tests compile representatives (tests/backends/test_tvm.py) and every op (the coverage matrix).
"""

from __future__ import annotations

import argparse
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
from nasforge.dsl.document import load_document  # noqa: E402
from nasforge.dsl.variants import variants  # noqa: E402
from tests.compiler.test_passes import MODELS, _flat, library_member, randomized, run  # noqa: E402

RTOL = 1e-4


def smallest_member(path: Path) -> str | None:
    """The family's member with the fewest parameters (None: the defaults)."""
    members = [None, *variants(load_document(path))]
    return min(members, key=lambda m: nasforge.load(path, variant=m).check().totals.params)


def check(path: Path, large: bool = False) -> dict[str, Any]:
    """One library family: its member, tasks from the database, max error relative to the output scale.
    ``large``: only the families with no member under 30M parameters, each by its smallest member."""
    variant = library_member(path)
    if (variant is False) != large:
        return {"spec": path.stem, "skipped": "every member has 30M parameters or more" if not large
                else "checked in the default run (a member under 30M parameters)"}
    if large:
        variant = smallest_member(path)
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


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The results file: the tolerance, how many families were checked and agree, and every row."""
    checked = [r for r in rows if "skipped" not in r]
    return {"rtol": RTOL, "checked": len(checked), "agree": sum(bool(r.get("agrees")) for r in checked),
            "skipped": [r["spec"] for r in rows if "skipped" in r], "rows": rows}


def in_order(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the checked families in the library's order."""
    return [results[path.stem] for path in MODELS if path.stem in results]


def write(out: Path, result: dict[str, Any]) -> None:
    """Replace the results file whole (an interrupted run never leaves half of one)."""
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--large", action="store_true", help="the families with no member under 30M parameters")
    parser.add_argument("--only", nargs="+", metavar="FAMILY",
                        help="re-check these families and keep the file's other rows")
    parser.add_argument("--resume", action="store_true",
                        help="keep the file's finished rows and check only the families it lacks (the file is "
                             "rewritten after every family, so an interrupted run loses one family at most)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only or ()) - {path.stem for path in MODELS})
    if unknown:
        parser.error(f"no such model family: {', '.join(unknown)} (families: specs/models/*.yaml)")
    large = args.large
    out = ROOT / "benchmarks" / "results" / ("tvm_agreement_large.json" if large else "tvm_agreement.json")
    # family -> row; --only and --resume start from the file's rows and replace those they check
    results = {r["spec"]: r for r in json.loads(out.read_text())["rows"]} \
        if (args.only or args.resume) and out.exists() else {}
    torch.set_num_threads(2)
    for path in MODELS:
        if (args.only and path.stem not in args.only) or (args.resume and path.stem in results):
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {path.stem}", file=sys.stderr, flush=True)
        try:
            results[path.stem] = check(path, large)
        except Exception as err:  # a family that fails is a row, not the end of the run
            results[path.stem] = {"spec": path.stem, "error": f"{type(err).__name__}: {err}"[:600], "agrees": False}
        write(out, summary(in_order(results)))
    rows = in_order(results)
    result = summary(rows)
    write(out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    for r in rows:
        if not r.get("agrees") and "skipped" not in r:
            print(r, file=sys.stderr)
    return 0 if result["agree"] == result["checked"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
