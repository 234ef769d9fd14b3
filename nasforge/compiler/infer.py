"""Shape and dtype inference over the IR, one registry rule per node, in topological order."""

from __future__ import annotations

from nasforge.compiler.ir import Graph, Node
from nasforge.errors import SpecError
from nasforge.ops.registry import OpContext, get_op
from nasforge.types import TensorType


def infer_types(graph: Graph) -> Graph:
    """Fill ``node.outputs`` for every node; the first misfit becomes a located SpecError."""
    for node in graph:
        ctx = context_for(graph, node)
        op = get_op(node.op)
        try:
            outputs = op.infer(ctx)
        except SpecError as err:
            raise err.with_context(node.location, node.path) from None
        if node.declared_shape is not None:
            check_declared(node, outputs[0])
        node.outputs = outputs
    return graph


def context_for(graph: Graph, node: Node) -> OpContext:
    """The context an op's rules see for ``node`` (input types from the graph)."""
    return OpContext(dict(node.attrs), [graph.type_of(v) for v in node.inputs], list(node.outputs), node.path)


def check_declared(node: Node, inferred: TensorType) -> None:
    """A node's ``shape:`` is a claim the author makes; a different inferred shape is their mistake."""
    declared = tuple(node.declared_shape or ())
    if declared != tuple(inferred.shape):
        raise SpecError(
            "declared shape does not match the inferred shape",
            location=node.attr_locations.get("shape", node.location),
            node_path=node.path,
            expected=f"[{', '.join(map(str, declared))}] (declared)",
            found=f"{inferred} (inferred)",
        )
