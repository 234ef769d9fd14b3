"""Shape and dtype inference over the IR, one registry rule per node, in topological order."""

from __future__ import annotations

from nasforge.compiler.ir import ALL_OUTPUTS, Graph, Node, Value
from nasforge.errors import SpecError, did_you_mean
from nasforge.ops.registry import OpContext, get_op
from nasforge.types import TensorType


def infer_types(graph: Graph) -> Graph:
    """Fill ``node.outputs`` for every node; the first misfit becomes a located SpecError.

    References are made exact on the way: "every output of X" becomes X's real outputs and ``X:N`` is
    checked against them, so op arity is checked here, on the inputs the op really gets.
    """
    for node in graph:
        op = get_op(node.op)
        try:
            node.inputs = resolve_values(graph, node.inputs)
            op.check_arity(len(node.inputs))
            outputs = op.infer(context_for(graph, node))
        except SpecError as err:
            where = node.attr_locations.get("in", node.location) if err.key == "in" else node.location
            raise err.with_context(where, node.path) from None
        if node.declared_shape is not None:
            check_declared(node, outputs[0])
        node.outputs = outputs
    check_ties(graph)
    try:
        values = resolve_values(graph, list(graph.outputs.values()))
    except SpecError as err:
        raise err.with_context(graph.outputs_location, "outputs") from None
    names = list(graph.outputs)
    if len(values) != len(names):  # a multi-output node named as one output: number its outputs
        graph.outputs = {f"{names[0]}_{k}" if len(names) == 1 else f"output{k}": v for k, v in enumerate(values)}
    else:
        graph.outputs = dict(zip(names, values))
    return graph


def resolve_values(graph: Graph, values: list[Value]) -> list[Value]:
    """Replace all-output references by each output, and check ``X:N`` indices against real counts."""
    out: list[Value] = []
    for v in values:
        count = 1 if v.node in graph.inputs else len(graph.nodes[v.node].outputs)
        if v.index == ALL_OUTPUTS:
            out.extend(Value(v.node, k) for k in range(count))
        elif v.index >= count:
            raise SpecError(f"{v.node!r} has no output {v.index}", expected=f"an output index in 0..{count - 1}",
                            found=f"{v.node}:{v.index}", key="in")
        else:
            out.append(v)
    return out


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


def tied_target(graph: Graph, node: Node, param: str) -> tuple[Node, str]:
    """The node and parameter name that ``node``'s ``param`` is tied to (its owner)."""
    target = node.ties[param]
    path, _, name = target.rpartition(".")
    return graph.nodes[path], name


def check_ties(graph: Graph) -> None:
    """Every tie names an existing parameter of another node, of the same shape, owned by that node."""
    for node in graph:
        if not node.ties:
            continue
        own = get_op(node.op).params(context_for(graph, node))
        where = node.attr_locations.get("tie", node.location)
        for param, target in node.ties.items():
            path, _, name = target.rpartition(".")
            if param not in own:
                raise SpecError(f"op {node.op!r} has no parameter {param!r} to tie", location=where,
                                node_path=node.path, expected="one of " + (", ".join(own) or "(no parameters)"),
                                found=repr(param), hint=did_you_mean(param, list(own)))
            if path not in graph.nodes or path == node.path:
                raise SpecError(f"tie target {target!r} is not another node's parameter", location=where,
                                node_path=node.path, expected="NODE_PATH.PARAM of another node", found=repr(target),
                                hint=did_you_mean(path, list(graph.nodes)))
            owner = graph.nodes[path]
            theirs = get_op(owner.op).params(context_for(graph, owner))
            if name not in theirs or name in owner.ties:
                raise SpecError(f"node {path!r} owns no parameter {name!r}", location=where, node_path=node.path,
                                expected="one of " + ", ".join(k for k in theirs if k not in owner.ties),
                                found=repr(name))
            if tuple(theirs[name]) != tuple(own[param]):
                raise SpecError("tied parameters have different shapes", location=where, node_path=node.path,
                                expected=f"{param} shaped {list(own[param])}",
                                found=f"{target} shaped {list(theirs[name])}")
