"""Static analysis of a typed IR: parameters, MACs, FLOPs and activation memory per node and in total.

Counts are for one sample: symbolic dimensions (the batch ``B``) are bound to 1 unless the caller binds
them. MACs are multiply-accumulates of convolutions, matmuls and attention (what papers call "FLOPs");
FLOPs are 2 x MACs plus the element-wise arithmetic each op declares.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

from nasforge.compiler.infer import context_for
from nasforge.compiler.ir import Graph, Node
from nasforge.ops.registry import OpContext, get_op
from nasforge.types import TensorType


@dataclass(frozen=True)
class NodeCost:
    """What one node costs: parameters, MACs, FLOPs and the bytes of its outputs."""

    path: str
    op: str
    output: str
    params: int
    macs: int
    flops: int
    out_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Totals:
    """Whole-graph totals; ``activation_bytes`` sums every node output (what training keeps),
    ``peak_bytes`` is the largest set of live tensors when running nodes in order (inference)."""

    params: int
    macs: int
    flops: int
    activation_bytes: int
    peak_bytes: int
    input_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


def _bind(t: TensorType, bindings: Mapping[str, int]) -> TensorType:
    return TensorType(t.concrete_shape(bindings), t.dtype)


def concrete_context(graph: Graph, node: Node, bindings: Mapping[str, int]) -> OpContext:
    """The op context with symbols bound, so cost rules see integers only."""
    ctx = context_for(graph, node)
    return OpContext(ctx.attrs, [_bind(t, bindings) for t in ctx.inputs],
                     [_bind(t, bindings) for t in ctx.outputs], node.path)


def node_costs(graph: Graph, bindings: Mapping[str, int] | None = None) -> list[NodeCost]:
    """Per-node costs in graph order (types must have been inferred)."""
    bindings = dict(bindings or {})
    rows = []
    for node in graph:
        op = get_op(node.op)
        ctx = concrete_context(graph, node, bindings)
        params = sum(math.prod(shape) for name, shape in op.params(ctx).items() if name not in node.ties)
        out = ", ".join(str(t) for t in node.outputs)
        rows.append(NodeCost(node.path, node.op, out, params, op.macs(ctx), op.flops(ctx),
                             sum(t.nbytes() for t in ctx.outputs)))
    return rows


def totals(graph: Graph, bindings: Mapping[str, int] | None = None,
           costs: list[NodeCost] | None = None) -> Totals:
    """Sum the per-node costs and compute the peak of live activations by liveness in graph order."""
    bindings = dict(bindings or {})
    costs = costs if costs is not None else node_costs(graph, bindings)
    input_bytes = sum(t.nbytes(bindings) for t in graph.inputs.values())
    last_use: dict[str, int] = {}
    order = list(graph.nodes)
    for i, node in enumerate(graph):
        for v in node.inputs:
            last_use[v.node] = i
    for v in graph.outputs.values():
        last_use[v.node] = len(order)
    size = {c.path: c.out_bytes for c in costs}
    size.update({name: t.nbytes(bindings) for name, t in graph.inputs.items()})
    live = dict.fromkeys(graph.inputs, True)
    current = input_bytes
    peak = current
    for i, path in enumerate(order):
        current += size[path]
        live[path] = True
        peak = max(peak, current)
        for name in list(live):
            if last_use.get(name, -1) <= i:
                current -= size[name]
                del live[name]
    return Totals(
        params=sum(c.params for c in costs),
        macs=sum(c.macs for c in costs),
        flops=sum(c.flops for c in costs),
        activation_bytes=sum(c.out_bytes for c in costs),
        peak_bytes=peak,
        input_bytes=input_bytes,
    )
