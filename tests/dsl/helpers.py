"""Helpers shared by the spec-language tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nasforge.compiler.ir import Graph

FIXTURES = Path(__file__).parent / "fixtures"


def ir_signature(graph: Graph) -> dict[str, Any]:
    """What two specs must share to mean the same network: nodes (path, op, attrs, input refs, output
    types) in order, input and output names with their types."""
    return {
        "inputs": {name: str(t) for name, t in graph.inputs.items()},
        "nodes": [(n.path, n.op, n.attrs, [str(v) for v in n.inputs], [str(t) for t in n.outputs])
                  for n in graph],
        "outputs": {name: (str(v), str(graph.type_of(v))) for name, v in graph.outputs.items()},
    }
