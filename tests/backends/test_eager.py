"""The eager backend: the reference module behind the common interface, saved without pickles and
rebuilt from the artifact's spec (graph passes included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nasforge import backends
from nasforge.backends.artifact import write_artifact
from nasforge.compiler.passes import optimize
from nasforge.errors import SpecError
from tests.backends.nets import CONV_BN, MLP, inputs_for, run_python, spec_and_module


def test_compile_describes_io_and_runs_like_the_module() -> None:
    spec, gm = spec_and_module(MLP)
    x = inputs_for(spec)
    compiled = backends.compile(gm, x, "eager", "x86")
    assert compiled.backend == "eager"
    assert [(s.name, s.shape, s.dtype) for s in compiled.inputs] == [("x", (2, 8), "float32")]
    assert [(s.name, s.shape, s.dtype) for s in compiled.outputs] == [("logits", (2, 3), "float32")]
    expected = gm(*x).detach().numpy()
    np.testing.assert_array_equal(compiled(*(t.numpy() for t in x))[0], expected)
    out = compiled(*x)  # torch in, torch out (no numpy round trip)
    assert isinstance(out, torch.Tensor) and torch.equal(out, torch.from_numpy(expected))
    assert compiled.latency(warmup=1, repeats=3).repeats == 3


def test_options_of_other_backends_are_noted_not_used() -> None:
    spec, gm = spec_and_module(MLP)
    compiled = backends.compile(gm, inputs_for(spec), "eager", "x86", {"tune_trials": 8})
    assert any("ignores" in n and "tune_trials" in n for n in compiled.info.notes)


@pytest.mark.parametrize("target, why", [("arm64", "tvm"), ("c", "C source")])
def test_targets_the_host_cannot_run_point_to_tvm(target: str, why: str) -> None:
    spec, gm = spec_and_module(MLP)
    with pytest.raises(SpecError) as err:
        backends.compile(gm, inputs_for(spec), "eager", target)
    assert "cannot compile" in err.value.message
    assert why in err.value.format()


def test_unknown_backend_suggests_the_name() -> None:
    with pytest.raises(SpecError) as err:
        backends.get_backend("onnxruntim")
    assert "onnxruntime" in (err.value.hint or "")


def folded_artifact(tmp_path: Path) -> tuple[tuple[torch.Tensor, ...], list[np.ndarray]]:
    """A conv-BN network compiled after BN folding and written as an artifact; its inputs and the
    unfolded module's outputs."""
    spec, gm = spec_and_module(CONV_BN, seed=3)
    x = inputs_for(spec)
    expected = [t.detach().numpy() for t in gm(*x)]
    folded = optimize(gm)
    folded.meta["output_names"] = list(spec.graph.outputs)
    assert not any("bn" in name for name, _ in folded.named_modules())  # the pass did fold: weights differ
    compiled = backends.compile(folded, x, "eager", "x86")
    write_artifact(compiled, tmp_path / "art", spec=spec, extra={"graph_passes": {"applied": True}})
    assert (tmp_path / "art" / "weights.safetensors").is_file()
    return x, expected


def test_artifact_rebuilds_from_the_spec_with_folded_weights(tmp_path) -> None:
    x, expected = folded_artifact(tmp_path)
    loaded = backends.load_artifact(tmp_path / "art")
    assert [s.name for s in loaded.outputs] == ["logits", "features"]
    for got, want in zip(loaded.run_numpy(x[0].numpy()), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_artifact_loads_in_a_fresh_process(tmp_path) -> None:
    x, expected = folded_artifact(tmp_path)
    np.save(tmp_path / "x.npy", x[0].numpy())
    proc = run_python("""
        import sys, numpy as np, nasforge
        m = nasforge.load_artifact(sys.argv[1])
        assert type(m).__name__ == "EagerModule", type(m)
        out = m.run_numpy(np.load(sys.argv[2]))
        np.savez(sys.argv[3], *out)
        """, str(tmp_path / "art"), str(tmp_path / "x.npy"), str(tmp_path / "y.npz"))
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "y.npz")
    for k, want in enumerate(expected):
        np.testing.assert_allclose(got[f"arr_{k}"], want, rtol=1e-5, atol=1e-6)


def test_weights_that_do_not_fit_the_rebuilt_network_are_an_error(tmp_path) -> None:
    spec, gm = spec_and_module(CONV_BN)
    compiled = backends.compile(optimize(gm), inputs_for(spec), "eager", "x86")
    # Claim the passes did not run: the rebuilt network then has BN parameters the folded weights lack.
    write_artifact(compiled, tmp_path / "art", spec=spec, extra={"graph_passes": {"applied": False}})
    with pytest.raises(SpecError) as err:
        backends.load_artifact(tmp_path / "art")
    assert "do not fit" in err.value.message and "bn" in (err.value.found or "")


def test_an_eager_artifact_needs_its_spec(tmp_path) -> None:
    spec, gm = spec_and_module(MLP)
    compiled = backends.compile(gm, inputs_for(spec), "eager", "x86")
    with pytest.raises(SpecError, match="rebuilds its network from the spec"):
        write_artifact(compiled, tmp_path / "art")
    assert not (tmp_path / "art").exists()
