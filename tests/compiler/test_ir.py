"""The IR: values, users, networkx view, unused-node warnings."""

from __future__ import annotations

import networkx as nx

import nasforge
from nasforge.compiler.ir import Value


def test_graph_structure(residual_spec):
    g = residual_spec.graph
    assert list(g.inputs) == ["image", "bias_in"]
    assert list(g.nodes)[:3] == ["stem", "units.0.conv", "units.0.bn"]
    assert g.nodes["joined"].inputs == [Value("halves", 1), Value("halves", 0)]
    assert str(Value("halves", 1)) == "halves:1"
    assert str(g.type_of(Value("halves", 1))) == "[B, 4, 16, 16]"
    assert g.outputs == {"logits": Value("head"), "features": Value("pool")}
    assert g.users()["units.0.sum"] == ["units.1.conv", "units.1.sum"]


def test_networkx_view_is_a_dag_in_graph_order(residual_spec):
    g = residual_spec.graph
    nxg = g.to_networkx()
    assert nx.is_directed_acyclic_graph(nxg)
    order = list(g.inputs) + list(g.nodes)
    position = {n: i for i, n in enumerate(order)}
    assert all(position[u] < position[v] for u, v in nxg.edges())
    assert nxg.nodes["units.0.conv"]["op"] == "conv2d"


def test_unused_nodes_and_inputs_are_warnings():
    spec = nasforge.loads("""
inputs: {x: [B, 4], unused: [B, 2]}
graph:
  - {id: dead, op: relu}
  - {id: live, op: linear, in: x, out: 3}
""", "dead.yaml")
    warnings = spec.check().warnings
    assert any("input 'unused' is never used" in w for w in warnings)
    assert any(w.startswith("dead.yaml:4:5: dead:") for w in warnings)
