"""The Inductor backend: ``torch.compile`` of the GraphModule.

Inductor generates C++/OpenMP (CPU) or Triton (GPU) kernels into its own on-disk cache; there is no
portable compiled file to ship. An artifact therefore saves what the eager backend saves (the weights
and the spec) and compiles again on the first call after loading, which the metadata says
(``backend_files.recompiles_on_load``); Inductor's cache makes that recompile cheap on the same machine.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import fx

from nasforge.backends.eager import EagerBackend, EagerModule
from nasforge.errors import Location, SpecError, did_you_mean

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class InductorModule(EagerModule):
    backend = "inductor"

    def prepare(self, gm: fx.GraphModule) -> Any:
        return torch.compile(gm, mode=self.options.get("mode", "default"), dynamic=False)

    def warm_up(self, examples: Sequence[torch.Tensor]) -> None:
        with torch.inference_mode():
            self.fn(*examples)

    def save(self, directory: Path) -> dict[str, Any]:
        return {**super().save(directory), "recompiles_on_load": True}


class InductorBackend(EagerBackend):
    name = "inductor"
    description = "torch.compile (Inductor: C++/OpenMP kernels on CPU, Triton on GPU); recompiles on load"
    module_class = InductorModule
    option_names = ("mode",)

    def availability(self, target: str) -> tuple[bool, str]:
        ok, why = super().availability(target)
        if ok and target == "cuda" and importlib.util.find_spec("triton") is None:
            return False, "Inductor generates Triton kernels on GPU and triton is not installed"
        if ok and target != "cuda" and not (shutil.which("g++") or shutil.which("clang++")):
            return False, "Inductor compiles C++ on CPU and finds no C++ compiler (apt-get install g++)"
        return ok, why

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        mode = options.get("mode", "default")
        if mode not in MODES:
            raise SpecError(f"unknown torch.compile mode {mode!r}", location=Location("--option mode"),
                            expected="one of " + ", ".join(MODES), found=repr(mode), hint=did_you_mean(str(mode), MODES))
        return options
