"""Every op through every backend, compared with eager; and docs/backend-coverage.md kept true.

The fast set runs the core ops (:data:`CORE_OPS`) through eager and ONNX Runtime, a clear TVM refusal, the
machinery (grouping, retries, comparison) and the document's shape. The slow set runs the whole vocabulary
through every backend (one compile per group of ops, see ``nasforge.backends.coverage``), one test per
(backend, op), and holds every cell of the committed document to that run's statuses. Error sizes are not
compared with the document: they move in the last digits between CPUs; statuses may not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pytest

from nasforge.backends.coverage import (BACKENDS, CORE_OPS, MISMATCH, OK, PASSING, RANDOM, UNCLEAR, UNSUPPORTED,
                                        ExampleResult, compare, run_backend)
from nasforge.backends.coverage_report import cell_status, environment, parse_markdown, to_markdown
from nasforge.cli import main
from nasforge.ops import all_ops
from tests.backends.coverage_cases import KNOWN_DEFECTS, cases, column

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "backend-coverage.md"
FAST_BACKENDS = ("eager", "onnxruntime")


def describe(results: Iterable[ExampleResult]) -> str:
    return "\n".join(f"  {r.op}.ex{r.index}: {r.status}: {r.error}" for r in results)


# -- fast ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_core_ops_match_eager(backend: str) -> None:
    run = column(backend, CORE_OPS)
    assert run.available, run.why_unavailable
    assert {r.op for r in run.results} == set(CORE_OPS)
    bad = [r for r in run.results if r.status != OK and (backend, r.op) not in KNOWN_DEFECTS]
    assert not bad, f"{backend}:\n{describe(bad)}"


def test_an_op_tvm_cannot_lower_is_refused_naming_op_and_node() -> None:
    run = column("tvm", ("random_masking",))
    refused = [r for r in run.results if r.status == UNSUPPORTED]
    assert [r.index for r in refused] == [2], describe(run.results)  # eval_order: random draws with aten.rand
    assert "op 'random_masking'" in refused[0].error and "rand" in refused[0].error
    assert all(r.status in PASSING for r in run.results if r.index != 2)


def test_a_refused_example_leaves_the_others_compiled_together() -> None:
    run = run_backend("onnxruntime", cases(("relu", "rms_norm", "add")))
    statuses = {(r.op, r.index): r.status for r in run.results}
    assert all(statuses[("rms_norm", i)] == UNSUPPORTED for i in range(len(all_ops()["rms_norm"].examples)))
    assert all(s == OK for (op, _), s in statuses.items() if op != "rms_norm")
    # one failed compile naming the rms_norm nodes as suspects, each suspect on its own (each refused), then
    # the rest at once
    assert run.compiles == len(all_ops()["rms_norm"].examples) + 2


def test_comparison_holds_shapes_dtypes_and_tolerance() -> None:
    case = next(c for c in cases(("gelu",)) if c.index == 0)
    want = case.expected[0]
    assert compare(case, [want.copy()]).status == OK
    assert compare(case, [want + 5e-5]).status == OK  # inside float32's atol 1e-4
    off = compare(case, [want + 1e-2])
    assert off.status == MISMATCH and off.max_abs_err == pytest.approx(1e-2, rel=1e-3)
    assert compare(case, [want.astype(np.float64)]).status == MISMATCH
    assert compare(case, [want[:1]]).status == MISMATCH
    assert compare(case, []).status == MISMATCH


def test_random_outputs_are_compared_by_shape_only_and_domains_respected() -> None:
    masking = {c.index: c for c in cases(("random_masking",))}
    assert masking[2].random and not masking[0].random  # eval_order: random draws noise even in eval mode
    assert all(c.positive_inputs for c in cases(("log", "sqrt")))
    assert all(np.isfinite(c.expected[0]).all() for c in cases(("log", "sqrt")))


def test_document_lists_every_op_and_backend_and_agrees_on_the_core_ops() -> None:
    table = parse_markdown(DOC.read_text())
    assert set(table) == set(all_ops()), "regenerate with: nasforge coverage -o docs/backend-coverage.md"
    assert all(list(row) == list(BACKENDS) for row in table.values())
    for backend in FAST_BACKENDS:
        for op in CORE_OPS:
            want = cell_status(column(backend, CORE_OPS).by_op()[op])
            assert table[op][backend] == want, f"{op} on {backend}: the document says {table[op][backend]}, not {want}"


def test_coverage_command_writes_the_table(tmp_path, capsys) -> None:
    out = tmp_path / "coverage.md"
    assert main(["coverage", "--backends", "eager,onnxruntime", "--ops", "relu,rms_norm", "-o", str(out)]) == 0
    table = parse_markdown(out.read_text())
    assert table["relu"] == {"eager": "ok", "onnxruntime": "ok"}
    assert table["rms_norm"] == {"eager": "ok", "onnxruntime": "not supported"}
    assert "rms_norm.ex0" in out.read_text()
    assert main(["coverage", "--backends", "eager", "--ops", "relu", "--json"]) == 0
    assert '"status": "ok"' in capsys.readouterr().out
    assert main(["coverage", "--backends", "auto"]) == 1
    assert "auto picks one" in capsys.readouterr().err
    assert main(["coverage", "--ops", "rellu"]) == 1
    assert "relu" in capsys.readouterr().err


# -- slow: the whole vocabulary through every backend ---------------------------------------------------

def _matrix_params() -> list:
    params = []
    for backend in BACKENDS:
        for op in all_ops():
            defect = KNOWN_DEFECTS.get((backend, op))
            marks = [pytest.mark.slow] + ([pytest.mark.xfail(reason=defect, strict=True)] if defect else [])
            params.append(pytest.param(backend, op, marks=marks, id=f"{backend}-{op}"))
    return params


@pytest.mark.parametrize("backend,op", _matrix_params())
def test_op_matches_eager_or_is_refused_clearly(backend: str, op: str) -> None:
    run = column(backend)
    assert run.available, run.why_unavailable
    results = run.by_op()[op]
    assert len(results) == len(all_ops()[op].examples)
    bad = [r for r in results if r.status in (MISMATCH, UNCLEAR)]
    assert not bad, f"{backend} on {op}:\n{describe(bad)}"
    assert all(r.status in (*PASSING, UNSUPPORTED) for r in results)
    if any(r.status == RANDOM for r in results):
        assert op == "random_masking", "only random_masking may give random outputs in eval mode"


@pytest.mark.slow
def test_document_agrees_with_a_fresh_run() -> None:
    fresh = parse_markdown(to_markdown([column(b) for b in BACKENDS], environment()))
    committed = parse_markdown(DOC.read_text())
    changed = {op: (committed.get(op), row) for op, row in fresh.items() if committed.get(op) != row}
    assert not changed, ("statuses changed (committed, fresh); regenerate with "
                         f"`nasforge coverage -o docs/backend-coverage.md`: {changed}")
