"""What the graph passes share: modules and tensor types read off fx nodes, and clean-up of attributes.

Passes work on any ``torch.fx.GraphModule``. Types come from nasforge's own node metadata
(``meta["nasforge_type"]``, written by the fx builder) or, for a graph traced elsewhere and run through
``torch.fx.passes.shape_prop.ShapeProp``, from ``meta["tensor_meta"]``; a pass that needs a type and finds
none leaves the node alone.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import fx, nn

from nasforge.compiler.fx_builder import example_inputs
from nasforge.compiler.ir import Graph
from nasforge.types import DTYPES, TensorType


def module_of(gm: fx.GraphModule, node: Any) -> nn.Module | None:
    """The submodule a ``call_module`` node calls; None for anything else."""
    if isinstance(node, fx.Node) and node.op == "call_module":
        return gm.get_submodule(str(node.target))
    return None


def call_counts(gm: fx.GraphModule) -> dict[int, int]:
    """How many ``call_module`` nodes call each module object (by ``id``): a pass that rewrites a module's
    weights must know the module computes nothing else (the same object may sit under two names)."""
    counts: dict[int, int] = {}
    for node in gm.graph.nodes:
        module = module_of(gm, node)
        if module is not None:
            counts[id(module)] = counts.get(id(module), 0) + 1
    return counts


def node_type(node: Any) -> TensorType | None:
    """The tensor type of a node's value, from nasforge's metadata or from ``ShapeProp``'s."""
    if not isinstance(node, fx.Node):
        return None
    ttype = node.meta.get("nasforge_type")
    if isinstance(ttype, TensorType):
        return ttype
    meta = node.meta.get("tensor_meta")
    shape, dtype = getattr(meta, "shape", None), str(getattr(meta, "dtype", "")).removeprefix("torch.")
    if shape is None or dtype not in DTYPES:
        return None
    return TensorType(tuple(int(d) for d in shape), dtype)


def random_inputs(types: Sequence[TensorType], seed: int, batch: int = 1) -> tuple[torch.Tensor, ...]:
    """Random tensors of the given types (symbols bound to ``batch``), drawn as the fx builder's examples are."""
    graph = Graph("inputs", {f"x{i}": t for i, t in enumerate(types)}, {}, {})
    return example_inputs(graph, batch=batch, seed=seed)


def target_name(node: fx.Node) -> str:
    """The name of what a node calls: the method name, or the function's ``__name__``."""
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")


def has_side_effect(node: fx.Node) -> bool:
    """Whether a node must run even when its result goes unused: placeholders, the output, random ops, calls
    fx knows to have side effects, and in-place calls (``x.add_(y)``, ``x.bernoulli_()``)."""
    name = target_name(node) if node.op in ("call_method", "call_function") else ""
    return (name.endswith("_") and not name.endswith("__")) or node.is_impure()


def replace_node(node: fx.Node, by: fx.Node) -> None:
    """Point every user of ``node`` at ``by`` and erase ``node``."""
    node.replace_all_uses_with(by)
    node.graph.erase_node(node)


def remove_unused_attributes(gm: fx.GraphModule) -> tuple[int, int]:
    """Delete submodules no node calls and parameters/buffers no node reads; ``(modules, tensors)`` removed.

    A tensor is in use when a ``get_attr`` node reads it (or a module holding it) or when it belongs to a
    module a ``call_module`` node calls.
    """
    before = sum(1 for _ in gm.named_modules(remove_duplicate=False))
    gm.delete_all_unused_submodules()
    modules = before - sum(1 for _ in gm.named_modules(remove_duplicate=False))
    used = [str(n.target) for n in gm.graph.nodes if n.op in ("call_module", "get_attr")]
    tensors = 0
    names = [name for name, _ in gm.named_parameters(remove_duplicate=False)]
    names += [name for name, _ in gm.named_buffers(remove_duplicate=False)]
    for name in names:
        if any(name == u or name.startswith(u + ".") for u in used):
            continue
        owner, _, leaf = name.rpartition(".")
        delattr(gm.get_submodule(owner), leaf)
        tensors += 1
    return modules, tensors


def finish(gm: fx.GraphModule) -> None:
    """Check the rewritten graph and regenerate the module's code."""
    gm.graph.lint()
    gm.recompile()
