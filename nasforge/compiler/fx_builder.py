"""Emit a ``torch.fx.GraphModule`` straight from the IR, without tracing any Python code.

Each IR node becomes one fx node: ``call_module`` for ops with parameters or state (the submodule lives
at the node's spec path, so ``state_dict`` keys read ``stages.2.block.5.dw.weight``) and
``call_function`` for stateless ops (``torch.relu``, ``operator.add``...), so ``print(gm.code)`` reads
like the spec. Multi-output ops are followed by ``getitem`` nodes. Graph outputs keep declared order.
"""

from __future__ import annotations

import operator
import re
from typing import Mapping

import torch
from torch import fx, nn

from nasforge.compiler.infer import context_for
from nasforge.compiler.ir import Graph, Value
from nasforge.errors import SpecError
from nasforge.ops.registry import Call, get_op


def fx_name(path: str) -> str:
    """A readable Python identifier for a node path: ``stages.2.dw`` -> ``stages_2_dw``."""
    name = re.sub(r"\W", "_", path)
    return name if not name[:1].isdigit() else f"n_{name}"


def class_name(name: str) -> str:
    """The generated module's class name, from the spec name (``resnet18`` -> ``Resnet18``)."""
    parts = [p for p in re.split(r"\W|_", name) if p]
    text = "".join(p[:1].upper() + p[1:] for p in parts) or "Network"
    return text if text[:1].isalpha() else f"Net{text}"


def build_graph_module(graph: Graph, given: Mapping[str, nn.Module] | None = None) -> fx.GraphModule:
    """Build the GraphModule for a typed IR graph (run inference first). A node whose path is in ``given``
    calls that module instead of its op's lowering (returning a tuple when the node has several outputs):
    how a one-shot supernet puts its mixed ops into a graph that the same builder emits."""
    fxg = fx.Graph()
    modules: dict[str, nn.Module] = {}
    values: dict[Value, fx.Node] = {}
    for name, ttype in graph.inputs.items():
        ph = fxg.placeholder(fx_name(name))
        ph.meta["nasforge_type"] = ttype
        values[Value(name)] = ph
    for node in graph:
        sequence = len(node.outputs) != 1
        if given is not None and node.path in given:
            lowered: nn.Module | Call = given[node.path]
        else:
            op = get_op(node.op)
            sequence = sequence or op.returns_sequence
            try:
                lowered = op.lower(context_for(graph, node))
            except SpecError as err:
                raise err.with_context(node.location, node.path) from None
        args = [values[v] for v in node.inputs]
        if isinstance(lowered, Call):
            call_args = ([args] if lowered.pack_inputs else args) + list(lowered.args)
            out = fxg.create_node("call_function", lowered.fn, tuple(call_args), dict(lowered.kwargs),
                                  name=fx_name(node.path))
        else:
            modules[node.path] = lowered
            out = fxg.create_node("call_module", node.path, tuple(args), {}, name=fx_name(node.path))
        out.meta["nasforge_path"] = node.path
        out.meta["nasforge_op"] = node.op
        if not sequence:
            values[Value(node.path)] = out
            out.meta["nasforge_type"] = node.outputs[0]
        else:
            for k, ttype in enumerate(node.outputs):
                item = fxg.call_function(operator.getitem, (out, k))
                item.meta["nasforge_type"] = ttype
                values[Value(node.path, k)] = item
    tie_parameters(graph, modules)
    results = [values[v] for v in graph.outputs.values()]
    fxg.output(results[0] if len(results) == 1 else tuple(results))
    fxg.lint()
    gm = fx.GraphModule(module_tree(modules), fxg, class_name=class_name(graph.name))
    gm.eval()
    return gm


def tie_parameters(graph: Graph, modules: dict[str, nn.Module]) -> None:
    """Make each tied parameter the very tensor its owner holds (one ``nn.Parameter``, two places)."""
    for node in graph:
        for param, target in node.ties.items():
            owner_path, _, owner_param = target.rpartition(".")
            owner = modules[owner_path].get_parameter(owner_param)
            prefix, _, leaf = param.rpartition(".")
            holder = modules[node.path].get_submodule(prefix) if prefix else modules[node.path]
            setattr(holder, leaf, owner)


def module_tree(modules: dict[str, nn.Module]) -> nn.Module:
    """Nest modules by their dotted paths in graph order, so ``state_dict`` lists them as the spec does."""
    root = nn.Module()
    for path, module in modules.items():
        parent = root
        *parents, leaf = path.split(".")
        for part in parents:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, module)
    return root


def example_inputs(graph: Graph, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs matching the graph's input types, symbols bound to ``batch``."""
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for t in graph.inputs.values():
        shape = t.concrete_shape({s: batch for d in t.shape for s in getattr(d, "symbols", ())})
        dtype = getattr(torch, t.dtype)
        if t.dtype in ("int64", "int32"):
            tensors.append(torch.randint(0, 2, shape, generator=gen, dtype=dtype))
        elif t.dtype == "bool":
            tensors.append(torch.rand(shape, generator=gen) > 0.5)
        else:
            tensors.append(torch.randn(shape, generator=gen).to(dtype))
    return tuple(tensors)
