"""A picture of the IR as Graphviz DOT text (rendered by graphviz's ``dot`` where installed)."""

from __future__ import annotations

from nasforge.compiler.ir import Graph

CATEGORY_COLORS = {"conv": "#cfe2ff", "linear": "#cfe2ff", "norm": "#e2f0d9", "activation": "#fff2cc",
                   "attention": "#f8cbad", "pooling": "#d9d2e9", "elementwise": "#eeeeee"}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(graph: Graph, depth: int | None = None) -> str:
    """DOT for the graph: one box per node (or per block folded at ``depth``), edges labelled by shape."""
    from nasforge.ops.registry import get_op

    def group(path: str) -> str:
        return ".".join(path.split(".")[:depth]) if depth else path

    lines = [f"digraph {_quote(graph.name)} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=8];']
    for name, t in graph.inputs.items():
        label = f"{name}\n{t}"
        lines.append(f"  {_quote(name)} [label={_quote(label)}, shape=oval, fillcolor=white];")
    members: dict[str, list[str]] = {}
    for node in graph:
        members.setdefault(group(node.path), []).append(node.path)
    for key, paths in members.items():
        if len(paths) == 1 and paths[0] == key:
            node = graph.nodes[key]
            color = CATEGORY_COLORS.get(get_op(node.op).category, "white")
            label = f"{key}\n{node.op}"
        else:
            color = "#f4f4f4"
            label = f"{key}\n({len(paths)} nodes)"
        lines.append(f"  {_quote(key)} [label={_quote(label)}, fillcolor={_quote(color)}];")
    seen = set()
    for node in graph:
        dst = group(node.path)
        for v in node.inputs:
            src = v.node if v.node in graph.inputs else group(v.node)
            if src == dst or (src, dst) in seen:
                continue
            seen.add((src, dst))
            lines.append(f"  {_quote(src)} -> {_quote(dst)} [label={_quote(str(graph.type_of(v)))}];")
    for name, v in graph.outputs.items():
        src = v.node if v.node in graph.inputs else group(v.node)
        lines.append(f"  {_quote('out:' + name)} [label={_quote(name)}, shape=oval, fillcolor=white];")
        lines.append(f"  {_quote(src)} -> {_quote('out:' + name)} [label={_quote(str(graph.type_of(v)))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
