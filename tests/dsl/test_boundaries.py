"""Boundary marks (``Expander(boundaries=True)``): identity nodes after every block instance, which the
one-shot supernet builder compares across members; the network they mark computes the same."""

from __future__ import annotations

import textwrap

import torch

import nasforge
from nasforge.compiler.fx_builder import build_graph_module, example_inputs
from nasforge.compiler.infer import infer_types
from nasforge.dsl.expand import Expander

SPEC = """
params: {skip: true}
inputs: {image: [B, 3, 8, 8]}
blocks:
  maybe:
    args: [dim]
    nodes: [{id: conv, op: conv2d, out: $dim, kernel: 1, if: "${not skip}"}]
  unit:
    args: [dim]
    nodes:
      - {id: a, op: conv2d, out: $dim, kernel: 3, padding: 1}
      - {id: b, block: maybe, dim: $dim}
      - {id: halves, op: chunk, chunks: 2, in: b}
    outputs: [a, halves]
graph:
  - {id: stem, op: conv2d, in: image, out: 4, kernel: 1}
  - {id: u, block: unit, dim: 4}
  - {id: sum, op: add, in: "u:1"}
  - {id: cat, op: concat, in: [u:0, sum]}
"""


def test_marks_follow_every_block_instance_and_change_no_result():
    spec = nasforge.loads(textwrap.dedent(SPEC))
    plain = infer_types(Expander(spec.document).expand())
    marked = infer_types(Expander(spec.document, boundaries=True).expand())
    marks = [p for p in marked.nodes if "/out" in p]
    assert marks == ["u.b/out0", "u/out0"]  # a skipped block hands its input on through its mark
    assert marked.nodes["u.b/out0"].inputs[0].node == "u.a"
    assert marked.nodes["u/out0"].op == "identity"
    assert set(marked.nodes) - set(marks) == set(plain.nodes)
    a, b = build_graph_module(plain), build_graph_module(marked)
    b.load_state_dict(a.state_dict())
    x = example_inputs(plain)
    torch.testing.assert_close(a(*x), b(*x))


def test_a_sequence_output_is_handed_on_unmarked():
    spec = nasforge.loads(textwrap.dedent(SPEC))
    marked = infer_types(Expander(spec.document, boundaries=True).expand())
    assert "u/out1" not in marked.nodes  # `chunk` has outputs only inference can count
    assert [str(v) for v in marked.nodes["sum"].inputs] == ["u.halves", "u.halves:1"]
