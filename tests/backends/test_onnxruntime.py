"""The ONNX Runtime backend: agrees with eager, loads without torch, reports what it cannot lower."""

from __future__ import annotations

import numpy as np
import pytest

from nasforge import backends
from nasforge.backends.base import host_cores
from nasforge.errors import SpecError
from tests.backends.nets import CONV_BN, FFT, MLP, RMS_NORM, TORCH_BLOCKED, inputs_for, run_python, spec_and_module

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("text", [MLP, CONV_BN], ids=["mlp", "conv_bn"])
def test_agrees_with_eager(text: str) -> None:
    spec, gm = spec_and_module(text)
    x = inputs_for(spec, batch=3)
    expected = gm(*x)
    expected = [t.detach().numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
    compiled = backends.compile(gm, x, "onnxruntime", "x86")
    assert compiled.backend == "onnxruntime"
    assert [s.name for s in compiled.outputs] == list(spec.graph.outputs)
    for got, want in zip(compiled.run_numpy(*(t.numpy() for t in x)), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert compiled.session.get_session_options().intra_op_num_threads == host_cores()
    assert any("opset 18" in n for n in compiled.info.notes)


def test_opset_and_threads_are_options() -> None:
    spec, gm = spec_and_module(MLP)
    compiled = backends.compile(gm, inputs_for(spec), "onnxruntime", "x86", {"opset": 17, "threads": 1})
    assert compiled.session.get_session_options().intra_op_num_threads == 1
    assert any("opset 17" in n for n in compiled.info.notes)


def test_an_op_the_exporter_cannot_lower_is_named_with_its_node_path(capfd) -> None:
    spec, gm = spec_and_module(RMS_NORM)
    with pytest.raises(SpecError) as err:
        backends.compile(gm, inputs_for(spec), "onnxruntime", "x86")
    assert err.value.message == "the onnxruntime backend cannot lower op 'rms_norm'"
    assert err.value.node_path == "norm"
    assert "rms_norm" in (err.value.found or "")
    assert "Torch IR graph" not in capfd.readouterr().out  # torch's graph dump does not reach stdout


def test_long_convolutions_export_directly_and_say_so() -> None:
    spec, gm = spec_and_module(FFT)
    x = inputs_for(spec)
    compiled = backends.compile(gm, x, "onnxruntime", "x86")
    np.testing.assert_allclose(compiled.run_numpy(*[t.numpy() for t in x])[0], gm(*x).detach().numpy(), atol=1e-5)
    assert any(n.startswith("1 long convolution (fft_conv, s4d) computed directly") for n in compiled.info.notes)


def test_artifact_loads_and_runs_without_torch(tmp_path) -> None:
    spec, gm = spec_and_module(MLP)
    x = inputs_for(spec)
    compiled = backends.compile(gm, x, "onnxruntime", "x86")
    backends.write_artifact(compiled, tmp_path / "art", spec=spec)
    np.save(tmp_path / "x.npy", x[0].numpy())
    proc = run_python(TORCH_BLOCKED + """
import numpy as np, nasforge
m = nasforge.load_artifact(sys.argv[1])
np.save(sys.argv[3], m.run_numpy(np.load(sys.argv[2]))[0])
print(type(m).__name__, sorted(k for k in sys.modules if k.split(".")[0] in ("torch", "tvm")))
""", str(tmp_path / "art"), str(tmp_path / "x.npy"), str(tmp_path / "y.npy"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["OnnxRuntimeModule", "['torch']"]  # only the blocking None entry
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), gm(*x).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_without_onnxruntime_the_backend_says_how_to_install_it(tmp_path) -> None:
    spec, gm = spec_and_module(MLP)
    compiled = backends.compile(gm, inputs_for(spec), "onnxruntime", "x86")
    backends.write_artifact(compiled, tmp_path / "art", spec=spec)
    proc = run_python(TORCH_BLOCKED + """
sys.modules["onnxruntime"] = None  # as if the extra were not installed
from nasforge.backends.registry import get_backend
from nasforge.errors import SpecError
import nasforge
print(get_backend("onnxruntime").availability("x86"))
try:
    nasforge.load_artifact(sys.argv[1])
except SpecError as err:
    print("hint:", err.hint)
""", str(tmp_path / "art"))
    assert proc.returncode == 0, proc.stderr
    assert "(False, \"onnxruntime is not installed (pip install 'nasforge[onnx]'" in proc.stdout
    assert "hint: pip install 'nasforge[onnx]'" in proc.stdout
