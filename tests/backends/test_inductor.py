"""The Inductor backend: torch.compile behind the common interface; its artifact recompiles on load."""

from __future__ import annotations

import numpy as np
import pytest

from nasforge import backends
from nasforge.errors import SpecError
from tests.backends.nets import CONV_BN, inputs_for, spec_and_module


def test_is_available_for_the_host_but_not_for_other_machines() -> None:
    backend = backends.get_backend("inductor")
    assert backend.availability("x86") == (True, "")
    ok, why = backend.availability("arm64")
    assert not ok and "aarch64" in why


def test_an_unknown_mode_is_refused_before_compiling() -> None:
    spec, gm = spec_and_module(CONV_BN)
    with pytest.raises(SpecError) as err:
        backends.compile(gm, inputs_for(spec), "inductor", "x86", {"mode": "max-autotun"})
    assert "max-autotune" in (err.value.hint or "")


@pytest.mark.slow
def test_agrees_with_eager_and_round_trips(tmp_path) -> None:
    spec, gm = spec_and_module(CONV_BN)
    x = inputs_for(spec)
    expected = [t.detach().numpy() for t in gm(*x)]
    compiled = backends.compile(gm, x, "inductor", "x86")
    assert compiled.backend == "inductor" and compiled.info.compile_s > 0
    for got, want in zip(compiled.run_numpy(*(t.numpy() for t in x)), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    backends.write_artifact(compiled, tmp_path / "art", spec=spec)
    loaded = backends.load_artifact(tmp_path / "art")
    meta = backends.artifact.read_metadata(tmp_path / "art")[1]
    assert meta["backend_files"]["recompiles_on_load"] is True
    assert type(loaded).__name__ == "InductorModule"
    for got, want in zip(loaded.run_numpy(*(t.numpy() for t in x)), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
