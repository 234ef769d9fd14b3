"""Named target profiles: the hardware a compiled module is for, in one place.

A profile maps a short name (``x86``, ``arm64``, ``cuda``...) to a TVM target (TVM 0.27 takes JSON-dict
targets), the compiler that links the library, and a test of whether this machine can run the result. A
profile that cannot run here still builds (cross-compilation) and says why it cannot run.

Why ``x86`` asks TVM for the host CPU's name instead of ``mcpu: native``: LLVM's ``native`` silently falls back
to generic SSE code under TVM, which measured several times slower than naming the CPU (``znver5``). Why
``num-cores``: MetaSchedule sizes parallel loops by it and the runtime must use every core the process may
use (see :func:`nasforge.backends.base.host_cores`).

This module imports tvm only inside the functions that need it, so listing profiles stays cheap.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasforge.backends.base import host_cores
from nasforge.errors import Location, SpecError, did_you_mean

HOST = "host"
"""``mcpu`` placeholder: the host CPU's own name, detected by TVM."""


@dataclass(frozen=True)
class TargetProfile:
    """One named hardware target.

    ``kind`` is the TVM target kind (``llvm``, ``cuda``, ``c``). ``mcpu`` is an LLVM CPU name or
    :data:`HOST`. ``cross_compiler`` links the library when it is not the host's ``gcc``. ``cpu_flags`` are
    the ``/proc/cpuinfo`` flags the generated code needs and ``machine`` the architecture it runs on.
    ``cuda_archs`` lists the GPU architectures a ``cuda`` build generates kernels for.
    """

    name: str
    description: str
    kind: str
    mtriple: str | None = None
    mcpu: str | None = None
    cross_compiler: str | None = None
    machine: str = "x86_64"
    cpu_flags: tuple[str, ...] = ()
    cuda_archs: tuple[str, ...] = ()

    # -- the TVM target -------------------------------------------------------------------------
    def target_dict(self, arch: str | None = None) -> dict[str, Any]:
        """The TVM target as a JSON dict (for a ``cuda`` profile: one of its ``cuda_archs``, default the first)."""
        if self.kind == "cuda":
            return {"kind": "cuda", "arch": arch or self.cuda_archs[0]}
        if self.kind == "c":
            return {"kind": "c"}
        spec: dict[str, Any] = {"kind": "llvm"}
        if self.mtriple:
            spec["mtriple"] = self.mtriple
        mcpu = host_cpu() if self.mcpu == HOST else self.mcpu
        if mcpu:
            spec["mcpu"] = mcpu
        if self.runs_on_this_architecture():
            spec["num-cores"] = host_cores()
        return spec

    def host_dict(self) -> dict[str, Any] | None:
        """The host side of a device target (a generic x86-64 host for ``cuda``); None for CPU targets."""
        if self.kind == "cuda":
            return {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}
        return None

    def tvm_target(self, arch: str | None = None) -> Any:
        """The ``tvm.target.Target`` (with its host for device targets)."""
        tvm = import_tvm()
        host = self.host_dict()
        spec = self.target_dict(arch)
        return tvm.target.Target(spec, host=host) if host else tvm.target.Target(spec)

    def variants(self) -> tuple[str | None, ...]:
        """What one build produces a library for: each cuda arch, or the one CPU target (None)."""
        return self.cuda_archs if self.kind == "cuda" else (None,)

    def key(self, arch: str | None = None) -> str:
        """A directory-safe identity of the exact target (its kind, CPU, core count and a hash of the rest):
        tuning records are valid only for the target they were measured on."""
        spec = self.target_dict(arch)
        cpu = spec.get("mcpu") or spec.get("arch") or "generic"
        cores = f"-{spec['num-cores']}c" if "num-cores" in spec else ""
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
        return f"{spec['kind']}-{cpu}{cores}-{digest}"

    # -- this machine ---------------------------------------------------------------------------
    def runs_on_this_architecture(self) -> bool:
        return self.kind == "c" or (self.kind == "llvm" and platform.machine() == self.machine)

    def runs_here(self) -> tuple[bool, str]:
        """Whether code built for this profile runs on this machine, and why not if it does not."""
        if self.kind == "cuda":
            if cuda_device_present():
                return True, ""
            return False, ("no CUDA device is visible to TVM here (it builds; it runs where a GPU and a "
                           "CUDA-enabled TVM runtime are)")
        if not self.runs_on_this_architecture():
            return False, f"it is {self.machine} code and this machine is {platform.machine()} (cross-compiled)"
        missing = [f for f in self.cpu_flags if f not in cpu_flags()]
        if missing:
            return False, f"this CPU lacks {', '.join(missing)}"
        return True, ""

    def builds_here(self) -> tuple[bool, str]:
        """Whether the toolchain this profile links with is installed."""
        if self.cross_compiler and shutil.which(self.cross_compiler) is None:
            return False, (f"the cross compiler {self.cross_compiler} is not installed "
                           f"(Debian: apt-get install gcc-{self.cross_compiler.removesuffix('-gcc')})")
        if self.kind in ("llvm", "c") and not self.cross_compiler and shutil.which("gcc") is None \
                and shutil.which("cc") is None:
            return False, "no host C compiler (gcc) to link the library"
        return True, ""

    def as_dict(self) -> dict[str, Any]:
        """What ``nasforge targets`` and artifact metadata show."""
        runs, why = self.runs_here()
        builds, why_not_built = self.builds_here()
        return {"name": self.name, "description": self.description,
                "tvm_target": [self.target_dict(a) for a in self.variants()],
                "builds_here": builds, "build_note": why_not_built, "runs_here": runs, "run_note": why}


def import_tvm() -> Any:
    """``import tvm`` without importing torch when this process has not: a deployed artifact stays torch-free.

    TVM imports torch when it can; an entry of None in ``sys.modules`` tells it torch is absent. The entry
    lives only for the import, so the process can still import torch later (and libraries that test for a
    ``torch`` entry, as SciPy does, see none). ``TVM_NUM_THREADS`` defaults to every core this process may use
    (TVM's own default is half of them) unless the user set it; TVM reads it when its thread pool starts.
    """
    os.environ.setdefault("TVM_NUM_THREADS", str(host_cores()))
    if "tvm" in sys.modules or "torch" in sys.modules:
        import tvm

        return tvm
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        import tvm
        from tvm import relax  # noqa: F401  (the VM, imported while torch is hidden)
    finally:
        del sys.modules["torch"]
    return tvm


@functools.cache
def host_cpu() -> str:
    """The host CPU's LLVM name as TVM detects it (``znver5``, ``skylake-avx512``...), or ``generic``."""
    tvm = import_tvm()
    return str(tvm.target.Target.from_device(tvm.cpu()).attrs.get("mcpu", "generic"))


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this machine (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cuda_device_present() -> bool:
    """Whether TVM sees a CUDA device (False where the TVM runtime has no CUDA support)."""
    tvm = import_tvm()
    try:
        return bool(tvm.cuda().exist)
    except Exception:  # a runtime without the CUDA device API raises rather than answering
        return False


AVX512 = ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")

PROFILES: dict[str, TargetProfile] = {p.name: p for p in (
    TargetProfile("x86", "this machine's x86-64 CPU: its own LLVM CPU name and every core", "llvm",
                  mtriple="x86_64-linux-gnu", mcpu=HOST),
    TargetProfile("x86-avx2", "x86-64 with AVX2 and FMA (Haswell and later)", "llvm",
                  mtriple="x86_64-linux-gnu", mcpu="haswell", cpu_flags=("avx2", "fma")),
    TargetProfile("x86-avx512", "x86-64 with AVX-512 (Skylake-SP and later)", "llvm",
                  mtriple="x86_64-linux-gnu", mcpu="skylake-avx512", cpu_flags=AVX512),
    TargetProfile("arm64", "64-bit ARM Linux (Neoverse N1: Graviton2, Ampere Altra), cross-compiled", "llvm",
                  mtriple="aarch64-linux-gnu", mcpu="neoverse-n1", cross_compiler="aarch64-linux-gnu-gcc",
                  machine="aarch64"),
    TargetProfile("cuda", "NVIDIA GPUs: kernels for sm_80 (A100) and sm_90 (H100)", "cuda",
                  cuda_archs=("sm_80", "sm_90")),
    TargetProfile("c", "portable C source (any machine with a C compiler), built here with the host gcc", "c"),
)}


def resolve(name: str) -> TargetProfile:
    """The profile called ``name``; a SpecError with a did-you-mean for anything else."""
    try:
        return PROFILES[name]
    except KeyError:
        raise SpecError(f"unknown target {name!r}", location=Location("--target"),
                        expected="one of " + ", ".join(PROFILES), found=repr(name),
                        hint=did_you_mean(name, list(PROFILES)) or "`nasforge targets` lists them") from None
