"""Target profiles: names, TVM targets, what runs here, and a tiny network built for every profile.

The builds check what each profile promises on disk: an x86-64 or AArch64 ELF library, C source that the
host compiler turned into a library that runs, PTX and cubin for both CUDA architectures.
"""

from __future__ import annotations

import platform
import shutil

import numpy as np
import pytest

from nasforge.backends import targets
from nasforge.backends.base import host_cores
from nasforge.backends.tvm import TVMBackend
from nasforge.errors import SpecError
from tests.backends.nets import MLP, inputs_for, spec_and_module

EM_X86_64, EM_AARCH64, EM_CUDA = 62, 183, 190


def elf_machine(path) -> int:
    """The ELF header's machine field (what CPU the file is code for)."""
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", f"{path.name} is not an ELF file"
    return int.from_bytes(head[18:20], "little")


def test_unknown_target_suggests_a_name() -> None:
    with pytest.raises(SpecError) as err:
        targets.resolve("x68")
    assert "x86" in (err.value.hint or "") and "arm64" in (err.value.expected or "")


def test_every_profile_has_a_json_dict_tvm_target() -> None:
    assert set(targets.PROFILES) == {"x86", "x86-avx2", "x86-avx512", "arm64", "cuda", "c"}
    for profile in targets.PROFILES.values():
        for arch in profile.variants():
            spec = profile.target_dict(arch)
            assert spec["kind"] == profile.kind and profile.tvm_target(arch).kind.name == profile.kind


def test_host_profile_names_the_real_cpu_and_every_core() -> None:
    spec = targets.resolve("x86").target_dict()
    assert spec["mcpu"] not in ("native", "generic", "")  # 'native' silently means generic SSE code under TVM
    assert spec["num-cores"] == host_cores()
    key = targets.resolve("x86").key()
    assert spec["mcpu"] in key and f"-{host_cores()}c-" in key


def test_keys_differ_per_exact_target() -> None:
    keys = {targets.resolve(n).key(arch) for n in targets.PROFILES for arch in targets.resolve(n).variants()}
    assert len(keys) == sum(len(p.variants()) for p in targets.PROFILES.values())


def test_what_runs_here_is_said_with_a_reason() -> None:
    arm, ok = targets.resolve("arm64").runs_here(), platform.machine() == "aarch64"
    assert arm[0] == ok and (ok or "aarch64" in arm[1])
    flags = targets.cpu_flags()
    avx512 = targets.resolve("x86-avx512").runs_here()
    assert avx512[0] == (platform.machine() == "x86_64" and all(f in flags for f in targets.AVX512))
    cuda = targets.resolve("cuda").runs_here()
    assert cuda[0] or "CUDA" in cuda[1]
    assert targets.resolve("c").runs_here() == (True, "")


def test_a_missing_cross_compiler_is_named_with_its_package(monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    ok, why = targets.resolve("arm64").builds_here()
    assert not ok and "apt-get install gcc-aarch64-linux-gnu" in why


# -- builds -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlp():
    """A two-layer MLP, its example inputs and its eager output."""
    spec, gm = spec_and_module(MLP)
    x = inputs_for(spec)
    return gm, x, gm(*x).detach().numpy()


def build(mlp, target: str):
    gm, x, _ = mlp
    return TVMBackend().compile(gm, x, target)


@pytest.mark.parametrize("target", ["x86", "x86-avx2", "x86-avx512"])
def test_x86_profiles_build_x86_64_code_that_matches_eager_where_it_runs(mlp, target: str) -> None:
    compiled = build(mlp, target)
    assert elf_machine(compiled.directory / compiled.files["libraries"][""]) == EM_X86_64
    assert compiled.files["tvm_targets"][""]["mcpu"] == targets.resolve(target).target_dict()["mcpu"]
    if targets.resolve(target).runs_here()[0]:
        np.testing.assert_allclose(compiled.run_numpy(mlp[1][0].numpy())[0], mlp[2], atol=1e-4)


def test_arm64_is_cross_compiled_and_linked_into_an_aarch64_library(mlp) -> None:
    if not targets.resolve("arm64").builds_here()[0]:
        pytest.skip(targets.resolve("arm64").builds_here()[1])
    compiled = build(mlp, "arm64")
    assert elf_machine(compiled.directory / compiled.files["libraries"][""]) == EM_AARCH64
    if platform.machine() != "aarch64":
        assert any("does not run here" in n for n in compiled.info.notes)
        with pytest.raises(SpecError, match="does not run here"):
            compiled.run_numpy(mlp[1][0].numpy())


def test_c_profile_writes_c_source_the_host_compiler_built_and_it_matches_eager(mlp) -> None:
    compiled = build(mlp, "c")
    source = (compiled.directory / "module.c").read_text()
    assert "#include" in source and "TVM" in source
    assert elf_machine(compiled.directory / compiled.files["libraries"][""]) in (EM_X86_64, EM_AARCH64)
    np.testing.assert_allclose(compiled.run_numpy(mlp[1][0].numpy())[0], mlp[2], atol=1e-4)


@pytest.mark.slow
def test_cuda_generates_kernels_for_sm80_and_sm90(mlp) -> None:
    compiled = build(mlp, "cuda")
    assert set(compiled.files["libraries"]) == {"sm_80", "sm_90"}
    for arch in ("sm_80", "sm_90"):
        assert "__global__" in (compiled.directory / f"kernels_{arch}.cu").read_text()
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed: the artifact holds CUDA source only (noted in its compile info)")
    for arch in ("sm_80", "sm_90"):
        assert f".target {arch}" in (compiled.directory / f"kernels_{arch}.ptx").read_text()
        assert elf_machine(compiled.directory / f"kernels_{arch}.cubin") == EM_CUDA
    if targets.resolve("cuda").runs_here()[0]:
        np.testing.assert_allclose(compiled.run_numpy(mlp[1][0].numpy())[0], mlp[2], atol=1e-4)
