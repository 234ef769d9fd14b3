"""`nasforge compile`, `nasforge run` and `nasforge targets`: artifacts from the command line, runs without
torch, and located errors (exit 1) for every user mistake."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from nasforge.cli import main
from tests.backends.nets import MLP, TORCH_BLOCKED, run_python, spec_and_module

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def ort_artifact(tmp_path_factory) -> Path:
    """`nasforge compile` of the tiny MLP with onnxruntime at batch 2."""
    root = tmp_path_factory.mktemp("cli")
    (root / "mlp.yaml").write_text(MLP)
    assert main(["compile", str(root / "mlp.yaml"), "--backend", "onnxruntime", "--batch", "2", "--repeats", "3",
                 "--set", "hidden=12", "-o", str(root / "art"), "--json"]) == 0
    return root / "art"


def run_json(capsys, argv: list[str]) -> tuple[int, dict]:
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def test_compile_writes_an_artifact_and_reports_it(ort_artifact) -> None:
    meta = json.loads((ort_artifact / "metadata.json").read_text())
    assert meta["backend"] == "onnxruntime" and meta["requested_backend"] == "onnxruntime"
    assert meta["inputs"] == [{"name": "x", "shape": [2, 8], "dtype": "float32"}]
    assert meta["agreement"]["ok"] and meta["agreement"]["max_abs_err"] < 1e-5
    assert meta["latency"]["repeats"] == 3 and meta["graph_passes"]["applied"]
    assert "hidden: 12" in (ort_artifact / "spec.yaml").read_text()  # the override is in the spec copy
    assert meta["batch"] == 2


def test_compile_json_is_the_only_output(tmp_path, capsys) -> None:
    (tmp_path / "mlp.yaml").write_text(MLP)
    code, report = run_json(capsys, ["compile", str(tmp_path / "mlp.yaml"), "--backend", "eager", "--repeats", "2",
                                     "--no-optimize", "-o", str(tmp_path / "art"), "--json"])
    assert code == 0 and report["ok"] and report["backend"] == "eager"
    assert report["graph_passes"] == {"applied": False, "reason": "--no-optimize"}
    assert report["latency"]["repeats"] == 2 and report["artifact"] == str(tmp_path / "art")


def test_compile_summary_for_people(tmp_path, capsys) -> None:
    (tmp_path / "mlp.yaml").write_text(MLP)
    assert main(["compile", str(tmp_path / "mlp.yaml"), "--repeats", "2", "-o", str(tmp_path / "art")]) == 0
    out = capsys.readouterr().out
    assert "compiled tiny_mlp with eager for x86 at batch 1" in out
    assert "latency" in out and "outputs agree with eager" in out and f"wrote {tmp_path / 'art'}" in out


def test_run_with_input_files_matches_eager(ort_artifact, tmp_path, capsys) -> None:
    _, gm = spec_and_module(MLP)
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, report = run_json(capsys, ["run", str(ort_artifact), "--input", str(tmp_path / "x.npy"),
                                     "-o", str(tmp_path / "y.npy"), "--bench", "--repeats", "3", "--json"])
    assert code == 0 and report["backend"] == "onnxruntime" and report["latency"]["repeats"] == 3
    assert report["outputs"][0]["name"] == "logits" and report["outputs"][0]["shape"] == [2, 3]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.array(report["outputs"][0]["values"], np.float32))


def test_run_does_not_import_torch(ort_artifact, tmp_path) -> None:
    proc = run_python(TORCH_BLOCKED + """
from nasforge.cli import main
code = main(["run", sys.argv[1], "-o", sys.argv[2], "--bench", "--repeats", "2"])
print("exit", code)
""", str(ort_artifact), str(tmp_path / "y.npz"))
    assert proc.returncode == 0, proc.stderr
    assert "exit 0" in proc.stdout and "latency" in proc.stdout and "random (seed 0)" in proc.stdout
    assert list(np.load(tmp_path / "y.npz")) == ["logits"]


def write_pickled_object_array(path: Path) -> None:
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)


@pytest.mark.parametrize("make, expected, found", [
    (lambda p: np.save(p, np.zeros((3, 8), np.float32)), "x: shape [2, 8] float32", "shape [3, 8] float32"),
    (lambda p: np.save(p, np.zeros((2, 8))), "x: shape [2, 8] float32", "shape [2, 8] float64"),
    (write_pickled_object_array, "x: shape [2, 8] float32", "allow_pickle=False"),
    (lambda p: p.write_bytes(pickle.dumps([1, 2])), "x: shape [2, 8] float32", ""),
])
def test_bad_input_files_are_user_errors(ort_artifact, tmp_path, capsys, make, expected, found) -> None:
    path = tmp_path / "x.npy"
    make(path)
    code, report = run_json(capsys, ["run", str(ort_artifact), "--input", str(path), "--json"])
    assert code == 1 and report["ok"] is False
    assert report["error"]["expected"] == expected and found in report["error"]["found"]


@pytest.mark.parametrize("argv, message", [
    (["--input", "a.npy", "--input", "b.npy"], "2 --input file(s) for a network with 1 input(s)"),
    (["--input", "x.txt"], "an --input must be a .npy file"),
    (["-o", "y.csv"], "unsupported output file"),
])
def test_run_usage_mistakes(ort_artifact, capsys, argv, message) -> None:
    assert main(["run", str(ort_artifact), *argv]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--backend", "onnxruntim"], "did you mean 'onnxruntime'"),
    (["--target", "x68"], "did you mean 'x86'"),
    (["--backend", "eager", "--target", "arm64"], "the tvm backend cross-compiles"),
    (["--option", "mode"], "an override must look like name=value"),
    (["--backend", "inductor", "--option", "mode=fast"], "unknown torch.compile mode 'fast'"),
])
def test_compile_mistakes_are_located_errors(tmp_path, capsys, argv, message) -> None:
    (tmp_path / "mlp.yaml").write_text(MLP)
    assert main(["compile", str(tmp_path / "mlp.yaml"), *argv, "-o", str(tmp_path / "art")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "art").exists()


def test_an_output_that_is_not_an_artifact_is_refused_before_compiling(tmp_path, capsys) -> None:
    (tmp_path / "mlp.yaml").write_text(MLP)
    assert main(["compile", str(tmp_path / "mlp.yaml"), "-o", str(tmp_path)]) == 1
    assert "is not a nasforge artifact; refusing to replace it" in capsys.readouterr().err
    assert (tmp_path / "mlp.yaml").exists()


def test_a_search_space_must_be_sampled_first(tmp_path, capsys) -> None:
    assert main(["compile", "specs/spaces/nas_bench_201.yaml", "-o", str(tmp_path / "art")]) == 1
    assert "decide its choices first" in capsys.readouterr().err


def test_targets_lists_the_profiles_and_their_backends(capsys) -> None:
    code, rows = run_json(capsys, ["targets", "--json"])
    by_name = {r["name"]: r for r in rows}
    assert code == 0 and {"x86", "x86-avx2", "x86-avx512", "arm64", "cuda", "c"} <= set(by_name)
    assert {"eager", "onnxruntime", "auto"} <= set(by_name["x86"]["backends"])
    assert "eager" not in by_name["arm64"]["backends"]
    assert main(["targets"]) == 0 and "arm64" in capsys.readouterr().out
