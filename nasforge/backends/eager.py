"""The eager backend: the GraphModule itself, run in inference mode.

It is the reference every other backend is compared with, and the baseline of every speed ratio.
Saving never pickles code or modules: the weights go to ``weights.safetensors`` and the artifact keeps
the concrete spec, so loading rebuilds the network from the spec (and re-runs the graph passes when the
artifact says they ran) and then loads the weights into it, strictly: a rebuilt network whose parameters
do not match the saved ones is an error, not a silent partial load.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import fx

from nasforge.backends.base import Backend, CompileInfo, CompiledModule, TensorSpec
from nasforge.backends.registry import host_target, require_available
from nasforge.backends.torchio import describe_io, device_for, lowering_error, run_on_numpy
from nasforge.errors import Location, SpecError

WEIGHTS = "weights.safetensors"


class EagerModule(CompiledModule):
    """The GraphModule behind the common interface; subclasses change how it is prepared to run."""

    backend = "eager"
    rebuilds_from_spec = True

    def __init__(self, gm: fx.GraphModule, target: str, inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec], info: CompileInfo | None = None,
                 options: dict[str, Any] | None = None) -> None:
        super().__init__(target, inputs, outputs, info)
        self.device = device_for(target)
        self.gm = gm.to(self.device).eval()
        self.options = dict(options or {})
        self.fn = self.prepare(self.gm)

    def prepare(self, gm: fx.GraphModule) -> Any:
        """The callable that runs the network (eager: the module itself)."""
        return gm

    def run_numpy(self, *arrays: np.ndarray) -> list[np.ndarray]:
        return run_on_numpy(self.fn, arrays, self.device)

    def __call__(self, *inputs: Any) -> Any:
        if inputs and all(isinstance(x, torch.Tensor) for x in inputs):
            with torch.inference_mode():
                return self.fn(*(x.to(self.device) for x in inputs))
        return super().__call__(*inputs)

    def warm_up(self, examples: Sequence[torch.Tensor]) -> None:
        """Run once before timing or returning from compile (a lazy compiler compiles here)."""

    def save(self, directory: Path) -> dict[str, Any]:
        # save_model (not save_file) keeps one copy of a tied parameter and restores the tie on load.
        save_model(self.gm, str(directory / WEIGHTS), force_contiguous=True)
        return {"weights": WEIGHTS, "options": self.options}

    @classmethod
    def load(cls, directory: Path, metadata: dict[str, Any]) -> "EagerModule":
        target = metadata["target"]["name"]
        if target == "cuda" and not torch.cuda.is_available():
            raise SpecError(f"this {cls.backend} artifact runs on a CUDA GPU and torch sees none here",
                            location=Location(str(directory)), expected="a machine with a CUDA GPU",
                            found=f"torch {torch.__version__} without a CUDA device",
                            hint="recompile for this machine: nasforge compile SPEC --target x86")
        gm = rebuild(directory, metadata)
        try:
            missing, unexpected = load_model(gm, str(directory / metadata["backend_files"]["weights"]), strict=False)
        except RuntimeError as err:  # the same names with other shapes
            raise weights_mismatch(directory, str(err).strip().splitlines()[-1]) from None
        if missing or unexpected:
            raise weights_mismatch(directory, f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        inputs = [TensorSpec.from_dict(d) for d in metadata["inputs"]]
        outputs = [TensorSpec.from_dict(d) for d in metadata["outputs"]]
        info = CompileInfo(**metadata["compile"])
        return cls(gm, target, inputs, outputs, info, metadata["backend_files"].get("options"))


def weights_mismatch(directory: Path, found: str) -> SpecError:
    return SpecError("the saved weights do not fit the network rebuilt from the artifact's spec",
                     location=Location(str(directory)), expected="the same parameter names and shapes", found=found,
                     hint="recompile the artifact; from Python, write_artifact(..., extra={'graph_passes': "
                          "{'applied': True}}) records that nasforge.compiler.passes.optimize ran before compiling")


def rebuild(directory: Path, metadata: dict[str, Any]) -> fx.GraphModule:
    """The GraphModule of an artifact, rebuilt from its copy of the spec (weights still random)."""
    import nasforge

    spec_info = metadata.get("spec")
    if not spec_info:
        raise SpecError("this artifact has no spec to rebuild its network from", location=Location(str(directory)),
                        expected="an artifact written with its spec (nasforge compile always writes one)",
                        found="metadata.json: spec is null")
    path = directory / spec_info["file"]
    gm = nasforge.loads(path.read_text(encoding="utf-8"), name=str(path)).build()
    if metadata.get("graph_passes", {}).get("applied"):
        from nasforge.compiler.passes import optimize

        gm = optimize(gm)
    gm.meta["output_names"] = [o["name"] for o in metadata["outputs"]]
    return gm


class EagerBackend(Backend):
    name = "eager"
    description = "the torch.fx GraphModule itself in inference mode (the reference and the baseline)"
    module_class: type[EagerModule] = EagerModule
    option_names: tuple[str, ...] = ()
    """The options this backend reads; the others (tuning budgets, ...) belong to other backends."""

    def availability(self, target: str) -> tuple[bool, str]:
        ok, why = host_target(target)
        if ok and target == "cuda" and not torch.cuda.is_available():
            return False, "torch sees no CUDA device"
        return ok, why

    def compile(self, graph_module: Any, example_inputs: Sequence[Any], target: str,
                options: dict[str, Any] | None = None) -> CompiledModule:
        require_available(self, target)
        options = dict(options or {})
        own = {k: v for k, v in options.items() if k in self.option_names}
        device = device_for(target)
        gm = graph_module.to(device).eval()
        examples = [x.to(device) for x in example_inputs]
        started = time.perf_counter()
        inputs, outputs, _ = describe_io(gm, examples)
        own = self.check_options(own)
        try:
            compiled = self.module_class(gm, target, inputs, outputs, options=own)
            compiled.warm_up(examples)
        except SpecError:
            raise
        except Exception as err:  # the compiler's own failure on an op: say which spec node it was
            raise lowering_error(self.name, gm, examples, err) from err
        compiled.info.compile_s = time.perf_counter() - started
        ignored = sorted(k for k, v in options.items() if k not in own and v is not None)
        if ignored:
            compiled.info.notes.append(f"{self.name} ignores options it has no use for: {', '.join(ignored)}")
        return compiled

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Validate this backend's own options (SpecError for a bad value); eager has none."""
        return options
