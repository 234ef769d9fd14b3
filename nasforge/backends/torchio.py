"""What the torch-based backends share: input/output descriptions, running on numpy, device choice,
and finding the spec node behind an aten op a backend refused.

Only compile paths (and the eager/inductor loaders) import this module: it imports torch.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import fx
from torch.utils._python_dispatch import TorchDispatchMode

from nasforge.backends.base import TensorSpec
from nasforge.errors import SpecError


def device_for(target: str) -> torch.device:
    """The torch device a host-run backend uses for a target profile name."""
    return torch.device("cuda" if target == "cuda" else "cpu")


def flatten_outputs(result: Any) -> list[torch.Tensor]:
    """A module's result as a flat list of tensors (one output, or a tuple/list of them)."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        return [t for item in result for t in flatten_outputs(item)]
    raise TypeError(f"a compiled network must return tensors, got {type(result).__name__}")


def output_names(gm: fx.GraphModule) -> list[str]:
    """Names of the graph's outputs: ``gm.meta["output_names"]`` (the spec's output keys, set by the CLI)
    or, for a module from elsewhere, the names of the fx nodes that produce them."""
    if gm.meta.get("output_names"):
        return list(gm.meta["output_names"])
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    nodes = out if isinstance(out, (tuple, list)) else [out]
    return [n.name if isinstance(n, fx.Node) else f"output{k}" for k, n in enumerate(nodes)]


def tensor_spec(name: str, tensor: torch.Tensor) -> TensorSpec:
    return TensorSpec(name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))


def describe_io(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]
                ) -> tuple[list[TensorSpec], list[TensorSpec], list[np.ndarray]]:
    """Input and output specs of ``gm`` at the example inputs' shapes, plus the eager outputs there
    (the reference every backend is compared with)."""
    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    if len(names) != len(example_inputs):
        raise ValueError(f"{len(example_inputs)} example inputs for a graph of {len(names)} inputs")
    inputs = [tensor_spec(str(n), t) for n, t in zip(names, example_inputs)]
    with torch.inference_mode():
        outs = flatten_outputs(gm(*example_inputs))
    labels = output_names(gm)
    if len(labels) != len(outs):
        labels = [f"output{k}" for k in range(len(outs))]
    outputs = [tensor_spec(n, t) for n, t in zip(labels, outs)]
    return inputs, outputs, [t.detach().cpu().numpy() for t in outs]


def run_on_numpy(fn: Callable[..., Any], arrays: Sequence[np.ndarray], device: torch.device) -> list[np.ndarray]:
    """Call a torch callable on numpy inputs (in inference mode) and return numpy outputs."""
    tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]
    with torch.inference_mode():
        outs = flatten_outputs(fn(*tensors))
    return [t.detach().cpu().numpy() for t in outs]


class _AtenRecorder(TorchDispatchMode):
    """Records, for each aten op dispatched, the fx nodes that ran it (in the order they first did)."""

    def __init__(self) -> None:
        super().__init__()
        self.current: fx.Node | None = None
        self.nodes: dict[str, dict[fx.Node, None]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch's signature)
        name = func.overloadpacket.__name__
        if self.current is not None:
            self.nodes.setdefault(name, {})[self.current] = None
        return func(*args, **(kwargs or {}))


class _NodeTracker(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, recorder: _AtenRecorder) -> None:
        super().__init__(gm)
        self.recorder = recorder

    def run_node(self, n: fx.Node) -> Any:
        self.recorder.current = n
        return super().run_node(n)


def locate_aten_op(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor],
                   message: str) -> tuple[str, str] | None:
    """The (nasforge op, spec node path) whose torch form runs the aten op a backend error names.

    Backends speak aten (``aten::fft_rfft``); users speak spec nodes. One forward pass under a dispatch
    mode maps each aten op to the first fx node that ran it, and fx nodes carry the spec's op and path.
    Returns None when the message names no aten op this graph runs; when several nodes run that op, the
    path lists them all ("one of a, b").
    """
    # "aten::roll" / "aten.roll" (dispatcher names), "export of operator roll" (the TorchScript ONNX exporter)
    wanted = re.findall(r"aten::(\w+)|aten\.(\w+)|export of operator (\w+)", message)
    names = [(a or b or c).lower() for a, b, c in wanted]
    if not names:
        return None
    recorder = _AtenRecorder()
    with torch.inference_mode(), recorder:
        _NodeTracker(gm, recorder).run(*example_inputs)
    for name in names:
        nodes = list(recorder.nodes.get(name, ()))
        if not nodes:
            continue
        ops = {str(n.meta.get("nasforge_op", n.target)) for n in nodes}
        paths = [str(n.meta.get("nasforge_path", n.name)) for n in nodes]
        # Several nodes run this aten op and the message does not say which failed: name them all rather
        # than blame the first (which may be one the backend lowers fine).
        return " or ".join(sorted(ops)), paths[0] if len(paths) == 1 else "one of " + ", ".join(paths)
    return None


def lowering_error(backend: str, gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor],
                   err: BaseException) -> SpecError:
    """A backend's failure to lower the network, as a SpecError naming the spec op and node when the
    backend's message names an aten op (instead of the backend's own traceback)."""
    message = str(err).strip() or type(err).__name__
    where = locate_aten_op(gm, example_inputs, message)
    first = next((line for line in message.splitlines() if line.strip()), message)
    return SpecError(f"the {backend} backend cannot lower " + (f"op {where[0]!r}" if where else "this network"),
                     node_path=where[1] if where else None, expected=f"ops the {backend} backend supports",
                     found=f"{type(err).__name__}: {first[:400]}",
                     hint="the eager backend runs every op; the tvm backend may lower it too")
