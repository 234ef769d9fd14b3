"""Weight prepacking in the TVM backend: the default asks the tuning database which form it knows, a
prepacked tuned module agrees with eager, its weights go through the whole transform chain at load, and each
kernel takes the form the database measured faster."""

from __future__ import annotations

import numpy as np
import pytest

from nasforge.backends.tvm import TVMBackend
from nasforge.backends.tvm_prepack import LAYOUT_FREE, PREPACK_PARAMS, default_for, per_kernel
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


def test_marked_but_untuned_kernels_change_no_layout_so_no_second_load_function(tmp_path) -> None:
    spec, gm = spec_and_module(CONV_BN)
    x = inputs_for(spec, batch=1)
    compiled = TVMBackend().compile(gm, x, "x86", {"tuning_db": str(tmp_path), "prepack": True})
    assert compiled.files["transform_params"] == ["main_transform_params"]
    np.testing.assert_allclose(compiled.run_numpy(x[0].numpy())[1], gm(*x)[1].detach().numpy(), atol=1e-4)


def layout_free(mod) -> set[str]:
    """The kernels of ``mod`` whose weights tuning may lay out."""
    from tvm import tirx

    return {gv.name_hint for gv, f in mod.functions_items()
            if isinstance(f, tirx.PrimFunc) and f.attrs is not None and LAYOUT_FREE in f.attrs}


def tuned_names(compiled) -> set[str]:
    return {t["name"] for t in compiled.info.tuning["tasks"] if t["best_ms"] is not None}


@pytest.mark.slow
def test_tuning_prepacks_then_each_kernel_takes_the_form_the_database_measured_faster(tmp_path) -> None:
    import tvm
    import tvm_ffi

    from nasforge.backends import targets, tvm_export, tvm_tuning, tvm_worker

    spec, gm = spec_and_module(CONV_BN)
    x = inputs_for(spec, batch=1)
    want = [t.detach().numpy() for t in gm(*x)]

    def agrees(module) -> None:
        for got, expected in zip(module.run_numpy(x[0].numpy()), want):
            np.testing.assert_allclose(got, expected, atol=1e-4)

    options = {"tuning_db": str(tmp_path)}
    tuned = TVMBackend().compile(gm, x, "x86", {**options, "tune_trials": 6})
    assert chosen(tuned).startswith("prepack on: the tuning database knows 0 of")  # none known: tuning prepacks
    # the tuned convolution reads its weights in a layout tuning chose, made once at load
    assert tuned.files["transform_params"] == ["main_transform_params", PREPACK_PARAMS]
    agrees(tuned)
    later = TVMBackend().compile(gm, x, "x86", options)
    assert chosen(later).startswith("prepack on") and chosen(later).split(" and ")[1].startswith("0 of")
    kernels = len(tuned_names(tuned))
    assert any(n.startswith(f"kernel by kernel: {kernels} of {kernels} tuned kernels read prepacked weights and 0 "
                            "plain") for n in later.info.notes)
    plain = TVMBackend().compile(gm, x, "x86", {**options, "prepack": False})
    assert not any(n.startswith(("prepack ", "kernel by kernel")) for n in plain.info.notes)  # told, not chosen
    assert plain.info.tuning["applied"][""]["tasks_from_database"] == 0
    agrees(later)
    agrees(plain)

    # kernel by kernel, against the database itself
    profile = targets.resolve("x86")
    target = profile.tvm_target(None)
    program = tvm_export.to_relax(tvm_export.export(gm, x), gm)
    marked = tvm_worker.lower(tvm.ir.load_json(program.module_json), target, {"prepack": True})
    unmarked = tvm_worker.lower(tvm.ir.load_json(program.module_json), target, {"prepack": False})
    twin = {name: gv.name_hint for name in layout_free(marked) for gv, f in unmarked.functions_items()
            if tvm_ffi.structural_equal(marked[name].without_attr(LAYOUT_FREE), f)}  # marking renames kernels
    database = tvm_tuning.TuningDatabase(tvm_tuning.database_dir(profile, str(tmp_path)))
    packed_only, _ = per_kernel(marked, database.snapshot(tmp_path / "one"), prepack=False)
    assert layout_free(packed_only) == tuned_names(tuned)  # known prepacked only: those keep their marks

    plain_tuned = TVMBackend().compile(gm, x, "x86", {**options, "prepack": False, "tune_trials": 6})
    tuned_plain = {name for name, plain_name in twin.items() if plain_name in tuned_names(plain_tuned)}
    assert any(name.startswith("fused_conv2d") for name in tuned_plain)
    both = database.snapshot(tmp_path / "two")
    mixed, note = per_kernel(marked, both, prepack=False)
    workload = tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")
    for name in tuned_plain:  # found under the plain workload, and the faster form kept
        packed_ms = tvm_tuning.best_ms(both, workload(marked[name]))
        plain_ms = tvm_tuning.best_ms(both, workload(marked[name].without_attr(LAYOUT_FREE)))
        assert plain_ms is not None
        assert (name in layout_free(mixed)) == (packed_ms is not None and packed_ms <= plain_ms)
    known, packed = len(tuned_names(tuned) | tuned_plain), len(layout_free(mixed))
    assert note == (f"kernel by kernel: {packed} of {known} tuned kernels read prepacked weights and "
                    f"{known - packed} plain, each the form the tuning database measured faster")

    chosen_per_kernel = TVMBackend().compile(gm, x, "x86", options)
    assert note in chosen_per_kernel.info.notes
    agrees(chosen_per_kernel)


MOE = """
name: moe_net
inputs: {x: [B, 4, 16]}
graph:
  - {id: fc, op: linear, out: 64}
  - {id: moe, op: moe, experts: 4, hidden: 32, k: 2}
"""
"""Its routing kernels (top-k, scatter) are built without blocks, which TVM's layout-change splitter cannot read."""


@pytest.mark.slow
def test_a_prepacked_kernel_beside_kernels_without_blocks_lifts_its_layout_change(tmp_path) -> None:
    spec, gm = spec_and_module(MOE)
    x = inputs_for(spec, batch=1)
    options = {"tuning_db": str(tmp_path), "prepack": True, "tune_trials": 2, "trials_per_task": 2}
    compiled = TVMBackend().compile(gm, x, "x86", options)  # the hottest kernel, an expert's matmul, is tuned
    assert compiled.info.tuning["tasks_tuned"] == 1
    assert compiled.files["transform_params"] == ["main_transform_params", PREPACK_PARAMS]
    np.testing.assert_allclose(compiled.run_numpy(x[0].numpy())[0], gm(*x).detach().numpy(), atol=1e-4)
