"""Weight prepacking in the TVM backend: the default asks the tuning database which form it knows, a
prepacked tuned module agrees with eager, and its weights go through the whole transform chain at load."""

from __future__ import annotations

import numpy as np
import pytest

from nasforge.backends.tvm import TVMBackend
from nasforge.backends.tvm_prepack import PREPACK_PARAMS, default_for
from nasforge.errors import SpecError
from tests.backends.nets import CONV_BN, inputs_for, spec_and_module


def chosen(compiled) -> str:
    (note,) = [n for n in compiled.info.notes if n.startswith("prepack ")]
    return note


def test_cpu_code_lets_the_database_choose_and_cuda_never_prepacks() -> None:
    assert default_for("llvm") is None and default_for("cuda") is False


def test_prepack_must_be_a_boolean() -> None:
    with pytest.raises(SpecError, match="prepack"):
        TVMBackend().check_options({"prepack": 1})


def test_an_untuned_compile_with_an_empty_database_stays_plain(tmp_path) -> None:
    spec, gm = spec_and_module(CONV_BN)
    x = inputs_for(spec, batch=1)
    compiled = TVMBackend().compile(gm, x, "x86", {"tuning_db": str(tmp_path)})
    assert chosen(compiled) == "prepack off: no tuning database for this target yet"
    assert PREPACK_PARAMS not in compiled.files["transform_params"]
    np.testing.assert_allclose(compiled.run_numpy(x[0].numpy())[1], gm(*x)[1].detach().numpy(), atol=1e-4)


@pytest.mark.slow
def test_tuning_prepacks_and_later_compiles_follow_the_database(tmp_path) -> None:
    spec, gm = spec_and_module(CONV_BN)
    x = inputs_for(spec, batch=1)
    want = [t.detach().numpy() for t in gm(*x)]
    tuned = TVMBackend().compile(gm, x, "x86", {"tuning_db": str(tmp_path), "tune_trials": 6})
    assert chosen(tuned).startswith("prepack on: the tuning database knows 0 of")  # none known: tuning prepacks
    # the tuned convolution reads its weights in a layout tuning chose, made once at load
    assert tuned.files["transform_params"] == ["main_transform_params", PREPACK_PARAMS]
    for got, expected in zip(tuned.run_numpy(x[0].numpy()), want):
        np.testing.assert_allclose(got, expected, atol=1e-4)

    later = TVMBackend().compile(gm, x, "x86", {"tuning_db": str(tmp_path)})
    assert chosen(later).startswith("prepack on") and chosen(later).split(" and ")[1].startswith("0 of")
    plain = TVMBackend().compile(gm, x, "x86", {"tuning_db": str(tmp_path), "prepack": False})
    assert not any(n.startswith("prepack ") for n in plain.info.notes)  # told, not chosen
    assert plain.info.tuning["applied"][""]["tasks_from_database"] == 0
    for module in (later, plain):
        for got, expected in zip(module.run_numpy(x[0].numpy()), want):
            np.testing.assert_allclose(got, expected, atol=1e-4)
