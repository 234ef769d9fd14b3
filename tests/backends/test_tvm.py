"""The TVM backend: agrees with eager, loads in a torch-free process, names what it cannot lower, and
reports a TVM failure with the stage it happened in instead of dying with it.

tests/conftest.py points every test at its own empty tuning database (``NASFORGE_TUNING_DB``): no test reads or
writes the user's cache.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

import nasforge
from nasforge.backends import tvm_worker, write_artifact
from nasforge.backends.tvm import TVMBackend
from nasforge.errors import SpecError
from tests.backends.nets import FFT, MLP, RANDOM_MASKING, TORCH_BLOCKED, inputs_for, run_python, spec_and_module

pytest.importorskip("tvm")

MIX = """
name: conv_bn_gelu_attention
inputs: {image: [B, 3, 16, 16]}
graph:
  - {id: stem, op: conv2d, out: 16, kernel: 3, padding: 1, bias: false}
  - {id: bn, op: batch_norm2d}
  - {id: act, op: gelu}
  - {id: patch, op: conv2d, out: 32, kernel: 4, stride: 4}
  - {id: tokens, op: flatten, start: 2}
  - {id: seq, op: transpose, dim0: 1, dim1: 2}
  - {id: norm, op: layer_norm}
  - {id: attn, op: attention, heads: 4}
  - {id: res, op: add, in: [seq, attn]}
  - {id: pool, op: mean, axes: 1}
  - {id: head, op: linear, out: 10}
outputs: {logits: head}
"""


def eager(gm, x) -> list[np.ndarray]:
    out = gm(*x)
    return [t.detach().numpy() for t in (out if isinstance(out, tuple) else (out,))]


def test_mlp_matches_eager_and_reports_its_compile() -> None:
    spec, gm = spec_and_module(MLP)
    x = inputs_for(spec, batch=3)
    compiled = TVMBackend().compile(gm, x, "x86")
    np.testing.assert_allclose(compiled.run_numpy(x[0].numpy())[0], eager(gm, x)[0], atol=1e-4)
    assert [s.name for s in compiled.outputs] == ["logits"] and compiled.outputs[0].shape == (3, 3)
    assert compiled.info.compile_s > 0 and compiled.info.tuning_s == 0
    applied = compiled.info.tuning["applied"][""]
    assert applied["tasks_total"] >= 1 and applied["tasks_from_database"] == 0
    assert compiled.files["transform_params"]  # weight transposes run once at load, not per call


@pytest.mark.parametrize("name", ["lenet5", "mix"])
def test_lenet5_and_a_conv_bn_gelu_attention_mix_match_eager(name: str) -> None:
    if name == "lenet5":
        spec = nasforge.load("specs/models/lenet5.yaml")
        gm = spec.build()
    else:
        spec, gm = spec_and_module(MIX)
    x = inputs_for(spec, batch=2)
    compiled = TVMBackend().compile(gm, x, "x86")
    for got, want in zip(compiled.run_numpy(*(t.numpy() for t in x)), eager(gm, x)):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_dynamic_batch_runs_every_batch_size() -> None:
    spec, gm = spec_and_module(MLP)
    compiled = TVMBackend().compile(gm, inputs_for(spec, batch=2), "x86", {"dynamic_batch": True})
    for batch in (1, 5):
        x = inputs_for(spec, batch=batch)
        np.testing.assert_allclose(compiled.run_numpy(x[0].numpy())[0], eager(gm, x)[0], atol=1e-4)


def test_artifact_loads_and_runs_in_a_torch_free_process(tmp_path) -> None:
    spec, gm = spec_and_module(MIX)
    x = inputs_for(spec, batch=1)
    out = write_artifact(TVMBackend().compile(gm, x, "x86"), tmp_path / "art", spec=spec)
    np.save(tmp_path / "x.npy", x[0].numpy())
    proc = run_python(TORCH_BLOCKED + """
import sys
import numpy as np
import nasforge
module = nasforge.load_artifact(sys.argv[1])
np.save(sys.argv[3], module.run_numpy(np.load(sys.argv[2]))[0])
assert sys.modules.get("torch") is None, "torch was imported"
print(module.backend, module.target)
""", str(out), str(tmp_path / "x.npy"), str(tmp_path / "y.npy"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["tvm", "x86"]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), eager(gm, x)[0], atol=1e-4)


def test_the_backend_module_imports_without_torch() -> None:
    proc = run_python(TORCH_BLOCKED + "import nasforge.backends.tvm, nasforge.backends.tvm_tuning\n")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_an_op_tvm_cannot_import_is_named_with_its_node_path() -> None:
    spec, gm = spec_and_module(RANDOM_MASKING)
    with pytest.raises(SpecError) as err:
        TVMBackend().compile(gm, inputs_for(spec), "x86")
    assert err.value.node_path == "mask"
    assert "op 'random_masking'" in err.value.message and "rand" in (err.value.found or "")
    assert "eval_order" in (err.value.hint or "")  # the op entry's backend_limits


def test_long_convolutions_import_as_direct_convolutions_and_say_so() -> None:
    spec, gm = spec_and_module(FFT)
    x = inputs_for(spec)
    compiled = TVMBackend().compile(gm, x, "x86")
    np.testing.assert_allclose(compiled.run_numpy(*[t.numpy() for t in x])[0], eager(gm, x)[0], atol=1e-5)
    assert any(n.startswith("1 long convolution (fft_conv, s4d) computed directly") for n in compiled.info.notes)


MASKED = """
name: masked_tokens
inputs: {x: [B, 5, 6]}
graph:
  - {id: embed, op: linear, out: 6}
  - {id: decoder.fill, op: mask_token, length: 5}
  - {id: head, op: linear, out: 3}
"""


def test_an_op_a_target_cannot_generate_is_found_and_named() -> None:
    """TVM 0.27's CUDA schedule for mask_token divides by zero in codegen; the error names the spec node,
    found by building the network's nodes one by one, not the fused TIR function TVM names."""
    spec, gm = spec_and_module(MASKED)
    with pytest.raises(SpecError) as err:
        TVMBackend().compile(gm, inputs_for(spec), "cuda")
    assert err.value.node_path == "decoder.fill"
    assert "cannot generate cuda code for op 'mask_token'" in err.value.message
    assert "Divide by zero" in (err.value.found or "") and "\n" not in (err.value.found or "")


@pytest.mark.parametrize("options,word", [({"tune_trials": -1}, "tune_trials"), ({"tune_trials": 2.5}, "whole"),
                                          ({"tune_minutes": "ten"}, "tune_minutes"), ({"retune": "maybe"}, "retune")])
def test_bad_options_are_spec_errors(options: dict, word: str) -> None:
    with pytest.raises(SpecError, match=word):
        TVMBackend().check_options(options)


def test_tuning_a_dynamic_batch_is_refused_before_any_work() -> None:
    spec, gm = spec_and_module(MLP)
    with pytest.raises(SpecError, match="static shapes"):
        TVMBackend().compile(gm, inputs_for(spec), "x86", {"tune_trials": 4, "dynamic_batch": True})


def test_a_tvm_error_in_the_worker_names_the_stage() -> None:
    with pytest.raises(SpecError) as err:
        tvm_worker.run_worker({"mode": "compile", "target": "x86", "db_root": None, "tune": None}, ["{not json"])
    assert "loading the Relax module" in err.value.message and "'x86'" in err.value.message
    assert err.value.stage == "load"


def test_a_worker_killed_by_a_signal_is_reported_not_fatal() -> None:
    dead = subprocess.CompletedProcess([], -11, "", "TVM's backtrace\n  last line of it")
    err = tvm_worker._failure({"mode": "compile", "target": "arm64"}, "link", dead, None)
    assert "aborted while linking the shared library for target 'arm64'" in err.message
    assert "SIGSEGV" in err.message and "last line of it" in (err.found or "")
