"""Backends: compile a GraphModule for a target, and load compiled artifacts.

>>> import nasforge
>>> from nasforge import backends
>>> spec = nasforge.load("specs/models/lenet5.yaml")                                    # doctest: +SKIP
>>> from nasforge.compiler.fx_builder import example_inputs                             # doctest: +SKIP
>>> m = backends.compile(spec.build(), example_inputs(spec.graph, 1), "onnxruntime")   # doctest: +SKIP
>>> backends.write_artifact(m, "lenet-ort/", spec=spec)                                 # doctest: +SKIP
>>> nasforge.load_artifact("lenet-ort/")(*m.example_arrays())                          # doctest: +SKIP

Importing this package imports neither torch nor any backend: each backend module is imported when it
is asked for (see :mod:`nasforge.backends.registry`), so a deploy process loading an ONNX Runtime or TVM
artifact stays torch-free.
"""

from __future__ import annotations

from typing import Any, Sequence

from nasforge.backends.artifact import load_artifact, write_artifact
from nasforge.backends.base import Backend, CompileInfo, CompiledModule, Latency, TensorSpec, measure_latency
from nasforge.backends.registry import available_backends, compiled_class, get_backend


def compile(graph_module: Any, example_inputs: Sequence[Any], backend: str = "eager", target: str = "x86",
            options: dict[str, Any] | None = None) -> CompiledModule:
    """Compile a ``torch.fx.GraphModule`` (eval mode) with ``backend`` for the named ``target`` profile.

    ``example_inputs`` are torch tensors of the shapes to compile for; ``options`` go to the backend
    (``tune_trials``/``tune_minutes`` for tvm, ``mode`` for inductor, ``opset`` for onnxruntime).
    """
    return get_backend(backend).compile(graph_module, example_inputs, target, options)


__all__ = ["Backend", "CompileInfo", "CompiledModule", "Latency", "TensorSpec", "available_backends", "compile",
           "compiled_class", "get_backend", "load_artifact", "measure_latency", "write_artifact"]
