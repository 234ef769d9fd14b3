"""The auto backend: every candidate compiled, checked against eager and timed the same way; the fastest
kept, with the table and the reason recorded."""

from __future__ import annotations

import numpy as np
import pytest

from nasforge import backends
from nasforge.backends.auto import agrees, max_abs_error
from nasforge.errors import SpecError
from tests.backends.nets import MLP, RMS_NORM, inputs_for, spec_and_module

pytest.importorskip("onnxruntime")
QUICK = {"auto_backends": ["eager", "onnxruntime"], "auto_max_seconds": 0.5}


def test_keeps_the_fastest_and_says_why(tmp_path) -> None:
    spec, gm = spec_and_module(MLP)
    x = inputs_for(spec)
    compiled = backends.compile(gm, x, "auto", "x86", QUICK)
    table = compiled.info.tuning["auto"]
    rows = {r["backend"]: r for r in table["candidates"]}
    assert set(rows) == {"eager", "onnxruntime"} and all(r["status"] == "ok" for r in rows.values())
    fastest = min(rows, key=lambda name: rows[name]["median_ms"])
    assert compiled.backend == table["chosen"] == fastest
    assert any(n.startswith(f"auto chose {fastest}: fastest of 2") for n in compiled.info.notes)
    np.testing.assert_allclose(compiled.run_numpy(x[0].numpy())[0], gm(*x).detach().numpy(), rtol=1e-5, atol=1e-6)
    # The artifact is the chosen backend's, with the table in its metadata.
    backends.write_artifact(compiled, tmp_path / "art", spec=spec)
    meta = backends.artifact.read_metadata(tmp_path / "art")[1]
    assert meta["backend"] == fastest and meta["compile"]["tuning"]["auto"]["candidates"] == table["candidates"]
    assert type(backends.load_artifact(tmp_path / "art")).backend == fastest


def test_a_candidate_that_cannot_lower_the_network_is_recorded_not_fatal() -> None:
    spec, gm = spec_and_module(RMS_NORM)
    compiled = backends.compile(gm, inputs_for(spec), "auto", "x86", QUICK)
    rows = {r["backend"]: r for r in compiled.info.tuning["auto"]["candidates"]}
    assert compiled.backend == "eager"
    assert rows["onnxruntime"]["status"] == "failed" and "rms_norm" in rows["onnxruntime"]["reason"]
    assert any(n.startswith("auto: onnxruntime failed") for n in compiled.info.notes)


def test_unavailable_candidates_are_listed_with_the_reason() -> None:
    spec, gm = spec_and_module(MLP)
    with pytest.raises(SpecError) as err:
        backends.compile(gm, inputs_for(spec), "auto", "arm64", {"auto_backends": ["eager", "onnxruntime"]})
    assert "no backend compiled" in err.value.message and "does not run on this machine" in (err.value.found or "")
    with pytest.raises(SpecError, match="unknown backend"):
        backends.compile(gm, inputs_for(spec), "auto", "x86", {"auto_backends": ["eagre"]})


def test_agreement_is_relative_to_the_output_scale() -> None:
    ref = [np.array([1000.0, -2.0], np.float32)]
    assert agrees([ref[0] + np.float32(0.05)], ref)  # 5e-5 of the largest magnitude
    assert not agrees([ref[0] + np.float32(5.0)], ref)
    assert not agrees([ref[0][:1]], ref) and max_abs_error([ref[0][:1]], ref) == float("inf")
    assert max_abs_error([np.array([1, 2])], [np.array([1, 3])]) == 1.0
