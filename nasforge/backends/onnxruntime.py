"""The ONNX Runtime backend: an ONNX export of the GraphModule run by an ORT session (optional extra).

Export uses torch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``), which gave a 1.9x
faster ORT graph than the dynamo exporter on this project's benchmark machine. The session runs with
all graph optimizations and one intra-op thread per core this process may use. The artifact is the
``.onnx`` file itself, so loading needs only onnxruntime and numpy: this module imports torch only
inside :meth:`OnnxRuntimeBackend.compile`.
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from nasforge.backends.base import Backend, CompileInfo, CompiledModule, TensorSpec, host_cores
from nasforge.backends.registry import host_target, require_available
from nasforge.errors import Location, SpecError

MODEL = "model.onnx"
DEFAULT_OPSET = 18
INSTALL_HINT = "pip install 'nasforge[onnx]' (or: pip install onnxruntime onnx)"


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise SpecError("the onnxruntime backend needs the onnxruntime package", location=Location("--backend"),
                        expected="onnxruntime installed", found="no module named onnxruntime",
                        hint=INSTALL_HINT) from None
    return onnxruntime


def make_session(model: bytes, target: str, threads: int | None = None) -> Any:
    """An ORT session over a serialized model: all graph optimizations, one intra-op thread per core."""
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or host_cores()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if target == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(model, sess_options=options, providers=providers)


class OnnxRuntimeModule(CompiledModule):
    backend = "onnxruntime"

    def __init__(self, model: bytes, target: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                 info: CompileInfo | None = None, options: dict[str, Any] | None = None) -> None:
        super().__init__(target, inputs, outputs, info)
        self.model = model
        self.options = dict(options or {})
        self.session = make_session(model, target, self.options.get("threads"))
        # The exporter drops inputs the graph never reads; feed only those the session declares.
        self.feeds = {i.name for i in self.session.get_inputs()}

    def run_numpy(self, *arrays: np.ndarray) -> list[np.ndarray]:
        feeds = {spec.name: np.ascontiguousarray(a) for spec, a in zip(self.inputs, arrays) if spec.name in self.feeds}
        return list(self.session.run(None, feeds))

    def save(self, directory: Path) -> dict[str, Any]:
        (directory / MODEL).write_bytes(self.model)
        return {"model": MODEL, "options": self.options, "onnxruntime": _ort().__version__}

    @classmethod
    def load(cls, directory: Path, metadata: dict[str, Any]) -> "OnnxRuntimeModule":
        files = metadata["backend_files"]
        return cls((directory / files["model"]).read_bytes(), metadata["target"]["name"],
                   [TensorSpec.from_dict(d) for d in metadata["inputs"]],
                   [TensorSpec.from_dict(d) for d in metadata["outputs"]],
                   CompileInfo(**metadata["compile"]), files.get("options"))


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    description = "ONNX export (TorchScript exporter) run by an ONNX Runtime session (extra: nasforge[onnx])"
    option_names = ("opset", "threads")

    def availability(self, target: str) -> tuple[bool, str]:
        if importlib.util.find_spec("onnxruntime") is None:
            return False, f"onnxruntime is not installed ({INSTALL_HINT})"
        ok, why = host_target(target)
        if ok and target == "cuda" and "CUDAExecutionProvider" not in _ort().get_available_providers():
            return False, "this onnxruntime build has no CUDA provider (pip install onnxruntime-gpu)"
        return ok, why

    def compile(self, graph_module: Any, example_inputs: Sequence[Any], target: str,
                options: dict[str, Any] | None = None) -> CompiledModule:
        from nasforge.backends.torchio import describe_io, lowering_error
        from nasforge.ops.fft import direct_note

        require_available(self, target)
        own = {k: v for k, v in (options or {}).items() if k in self.option_names and v is not None}
        gm = graph_module.cpu().eval()
        examples = tuple(x.cpu() for x in example_inputs)
        inputs, outputs, _ = describe_io(gm, examples)
        started = time.perf_counter()
        try:
            model = export_onnx(gm, examples, inputs, outputs, int(own.get("opset", DEFAULT_OPSET)))
        except Exception as err:  # the exporter's failure on an op: say which spec node it was
            raise lowering_error(self.name, gm, examples, err) from err
        try:
            compiled = OnnxRuntimeModule(model, target, inputs, outputs, options=own)
        except SpecError:
            raise
        except Exception as err:  # ORT refuses the exported graph (a kernel it lacks for a type)
            raise SpecError("ONNX Runtime cannot load the exported graph", location=Location("--backend"),
                            expected="ONNX ops and types ONNX Runtime implements",
                            found=str(err).strip().splitlines()[0][:400],
                            hint="the eager, inductor and tvm backends may run it") from None
        compiled.info.compile_s = time.perf_counter() - started
        compiled.info.notes.append(f"ONNX opset {own.get('opset', DEFAULT_OPSET)}, TorchScript exporter; "
                                   f"{len(model) / 1e6:.2f} MB model; {compiled.session.get_providers()[0]}")
        compiled.info.notes.extend(filter(None, [direct_note(gm, "the ONNX exporter")]))
        return compiled


def export_onnx(gm: Any, examples: tuple[Any, ...], inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                opset: int) -> bytes:
    """The serialized ONNX model of ``gm`` at the examples' shapes (TorchScript exporter)."""
    import torch

    from nasforge.ops.fft import computed_directly

    buffer = io.BytesIO()
    # computed_directly: the TorchScript exporter exports no aten::fft_rfft at opset 18 (and ORT has no float64
    # Conv, so float64 ones stay FFTs and are refused by name)
    with warnings.catch_warnings(), _stdout_silenced(), computed_directly((torch.float32,)):
        # Choosing the TorchScript exporter on purpose (it is faster here): its deprecation notices are noise.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        torch.onnx.export(gm, examples, buffer, dynamo=False, opset_version=opset, do_constant_folding=True,
                          input_names=[s.name for s in inputs], output_names=[s.name for s in outputs])
    return buffer.getvalue()


@contextmanager
def _stdout_silenced() -> Iterator[None]:
    """Point file descriptor 1 at /dev/null for the duration.

    Why: torch 2.13's TorchScript exporter leaves its C++ ONNX log switched on (it tests the function
    ``_jit_is_onnx_log_enabled`` instead of calling it) and prints the whole TorchScript graph to stdout
    when an op fails to export; ``nasforge compile --json`` must print JSON only, and the SpecError says
    what failed.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
