"""The compile/latency benchmark runs end to end on a tiny network (no timing is asserted: speed is judged
in the benchmark's results, never in a test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "compile_latency.py"
# a ConvNeXt cut down to one block per stage at 32x32: GELU, channels-first LayerNorm, depthwise conv
TINY = ["--models", "specs/models/convnext.yaml:convnext_tiny",
        "--set", "depths=[1,1,1,1]", "dims=[8,16,32,64]", "image_size=32"]


def run_benchmark(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--batches", "1", "--repeats", "2", "--warmup", "1",
                           "--threads", "1", "--out", str(out), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["markdown"] in proc.stdout
    return result


def test_eager_and_onnxruntime_side_by_side(tmp_path: Path) -> None:
    result = run_benchmark(tmp_path, "--backends", "eager", "onnxruntime")
    assert result["machine"]["cores"] >= 1 and result["machine"]["versions"]["torch"]
    assert len(result["load_average_start"]) == 3 and len(result["load_average_end"]) == 3
    rows = {r["backend"]: r for r in result["rows"]}
    assert set(rows) == {"eager", "onnxruntime"}
    for row in rows.values():
        assert "error" not in row
        assert row["repeats"] == 2 and row["p10_ms"] <= row["median_ms"] <= row["p90_ms"]
        assert row["speedup_vs_eager"] > 0 and row["agrees"]
    assert rows["eager"]["speedup_vs_eager"] == 1.0
    assert rows["onnxruntime"]["max_abs_err"] < 1e-4
    assert "| onnxruntime |" in result["markdown"]


@pytest.mark.slow
def test_tvm_untuned_and_tuned_with_a_two_trial_budget(tmp_path: Path) -> None:
    db = tmp_path / "tuning-db"
    result = run_benchmark(tmp_path, "--backends", "eager", "tvm_untuned", "tvm_tuned",
                           "--tune-trials", "2", "--tuning-db", str(db))
    rows = {r["backend"]: r for r in result["rows"]}
    for name in ("tvm_untuned", "tvm_tuned"):
        assert "error" not in rows[name], rows[name].get("error")
        assert rows[name]["agrees"] and rows[name]["max_abs_err"] < 1e-4  # fast-erf GELU included
    tuned = rows["tvm_tuned"]
    assert tuned["tuning"]["trials"] >= 1 and tuned["tuning_s"] > 0
    assert tuned["database"]["tasks_from_database"] >= 1  # what it tuned, it applied
    assert rows["tvm_untuned"]["database"]["tasks_from_database"] == 0
    assert any(db.rglob("database_tuning_record.json"))


def test_batch_norm_calibration_makes_the_output_depend_on_the_input() -> None:
    """With fresh statistics MobileNetV2's output is its classifier's bias whatever the input (the error column
    would read 0 for every backend); measured statistics make the comparison mean something."""
    import importlib.util

    import torch

    import nasforge
    from nasforge.compiler.fx_builder import example_inputs

    module_spec = importlib.util.spec_from_file_location("compile_latency", SCRIPT)
    bench = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(bench)
    spec = nasforge.load(ROOT / "specs" / "models" / "mobilenet_v2.yaml")
    x = example_inputs(spec.graph, batch=2)
    with torch.inference_mode():
        fresh = spec.build().eval()(*x)
        assert (fresh[0] - fresh[1]).abs().max() < 1e-6  # the failure this guards against
        calibrated = bench.calibrate_batch_norm(spec.build(), [example_inputs(spec.graph, batch=4, seed=1)]).eval()
        out = calibrated(*x)
    assert (out[0] - out[1]).abs().max() > 1e-3
