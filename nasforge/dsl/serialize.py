"""Writing specs back to YAML: the structured form of a loaded document, or the flat form of an IR.

Both forms load back to the same IR: that round trip is what lets a search write its winners as specs
that the compiler takes as they are.
"""

from __future__ import annotations

from typing import Any, Mapping

import yaml

from nasforge.compiler.ir import Graph, Value
from nasforge.dsl.document import Document
from nasforge.ops.registry import get_op


def plain(value: Any) -> Any:
    """Loc containers (and tuples) to plain dicts and lists that yaml.safe_dump accepts."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def structured_document(doc: Document, params: Mapping[str, Any]) -> dict[str, Any]:
    """The document with effective parameter values and every imported block inlined."""
    out: dict[str, Any] = {}
    for key, value in doc.raw.items():
        if key == "imports":
            continue
        if key == "params":
            out["params"] = plain(params)
        elif key == "blocks":
            continue
        else:
            out[key] = plain(value)
    if doc.blocks:
        out["blocks"] = {name: plain(block.raw) for name, block in doc.blocks.items()}
        # keep the conventional order: blocks before the graph
        out = {k: out[k] for k in sorted(out, key=section_rank)}
    return out


_ORDER = ("nasforge", "name", "doc", "paper", "params", "let", "variants", "inputs", "blocks", "graph",
          "outputs")


def section_rank(key: str) -> int:
    """Position of a top-level key in the conventional order of a written spec."""
    return _ORDER.index(key) if key in _ORDER else len(_ORDER)


def graph_to_document(graph: Graph) -> dict[str, Any]:
    """The flat concrete spec of a typed IR: one node per op, ids equal to node paths."""
    multi = {node.path for node in graph if len(node.outputs) > 1}

    def ref(v: Value) -> str:
        return f"{v.node}:{v.index}" if v.node in multi else v.node

    nodes = []
    for node in graph:
        op = get_op(node.op)
        entry: dict[str, Any] = {"id": node.path, "op": node.op}
        refs = [ref(v) for v in node.inputs]
        entry["in"] = refs[0] if len(refs) == 1 else refs
        defaults = {a.name: a.default for a in op.attrs if not a.required}
        for key, value in node.attrs.items():
            if key not in defaults or defaults[key] != value:
                entry[key] = plain(value)
        if node.ties:
            entry["tie"] = dict(node.ties)
        nodes.append(entry)
    inputs = {}
    for name, t in graph.inputs.items():
        dims = [d if isinstance(d, int) else str(d) for d in t.shape]
        inputs[name] = dims if t.dtype == "float32" else {"shape": dims, "dtype": t.dtype}
    out: dict[str, Any] = {"nasforge": 1, "name": graph.name}
    for key in ("doc", "paper"):
        if key in graph.meta:
            out[key] = plain(graph.meta[key])
    out["inputs"] = inputs
    out["graph"] = nodes
    out["outputs"] = {name: ref(v) for name, v in graph.outputs.items()}
    return out


class _SpecDumper(yaml.SafeDumper):
    """Safe dumper that writes short lists and node entries in flow style, as people write specs."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(x, (dict, list)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    flow = "op" in data or "block" in data or all(not isinstance(v, (dict, list)) or
                                                  (isinstance(v, list) and all(not isinstance(x, (dict, list))
                                                                               for x in v))
                                                  for v in data.values()) and len(data) <= 6
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


class _Section(dict):
    """A one-key ``{section: value}`` wrapper, always written in block style (``outputs: [a, b]``)."""


def _represent_section(dumper: yaml.SafeDumper, data: _Section) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=False)


_SpecDumper.add_representer(list, _represent_list)
_SpecDumper.add_representer(dict, _represent_dict)
_SpecDumper.add_representer(_Section, _represent_section)


def document_to_yaml(data: Mapping[str, Any]) -> str:
    """YAML text for a spec document (top level in block style, nodes one per line)."""
    lines = []
    for key, value in data.items():
        if isinstance(value, (dict, list)) and value:
            body = yaml.dump(_Section({key: value}), Dumper=_SpecDumper, sort_keys=False, width=110,
                             default_flow_style=False, allow_unicode=True)
            if key in ("paper", "params", "inputs", "outputs") and isinstance(value, dict):
                body = yaml.dump({key: value}, Dumper=yaml.SafeDumper, sort_keys=False, width=110,
                                 default_flow_style=None, allow_unicode=True)
            lines.append(body.rstrip("\n"))
        else:
            lines.append(yaml.safe_dump({key: value}, sort_keys=False, width=110).rstrip("\n"))
    return "\n".join(lines) + "\n"
