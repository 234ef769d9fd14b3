"""Analysis: per-node costs, totals, batch binding, liveness peak, folding."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

import nasforge
from nasforge.compiler.fx_builder import example_inputs


def test_totals_agree_with_the_built_module_and_torch_counter(residual_spec):
    report = residual_spec.check()
    gm = residual_spec.build()
    assert report.totals.params == sum(p.numel() for p in gm.parameters())
    with FlopCounterMode(display=False) as counter:
        gm(*example_inputs(residual_spec.graph, batch=1))
    assert counter.get_total_flops() == 2 * report.totals.macs
    assert report.totals.flops > 2 * report.totals.macs  # element-wise work is counted on top


def test_batch_binding_scales_macs_not_params(residual_spec):
    one = residual_spec.check({"B": 1}).totals
    four = residual_spec.check({"B": 4}).totals
    assert four.params == one.params
    assert four.macs == 4 * one.macs
    assert four.activation_bytes == 4 * one.activation_bytes


def test_peak_memory_by_liveness():
    spec = nasforge.loads("""
inputs: {x: [B, 1000]}
graph:
  - {id: a, op: relu}
  - {id: b, op: relu}
  - {id: c, op: relu}
""")
    t = spec.check().totals
    assert t.input_bytes == 4000
    assert t.activation_bytes == 3 * 4000
    # at most two tensors are alive at any step of a chain (the input of a node and its output)
    assert t.peak_bytes == 2 * 4000


def test_peak_memory_keeps_skip_connections_alive():
    spec = nasforge.loads("""
inputs: {x: [B, 1000]}
graph:
  - {id: a, op: relu}
  - {id: b, op: relu}
  - {id: c, op: relu}
  - {id: s, op: add, in: [x, c]}
""")
    assert spec.check().totals.peak_bytes == 3 * 4000


def test_summary_folds_by_path_depth(residual_spec):
    flat = residual_spec.summary()
    folded = residual_spec.summary(depth=1)
    assert [r.path for r in folded.rows] == ["stem", "units", "halves", "joined", "pool", "shifted", "head"]
    units = folded.rows[1]
    assert units.op == "(8 nodes)"
    assert units.params == sum(r.params for r in flat.rows if r.path.startswith("units."))
    assert folded.totals == flat.totals
    assert [r.path for r in residual_spec.summary(depth=2).rows][1:3] == ["units.0", "units.1"]


def test_summary_json_shape(residual_spec):
    data = residual_spec.summary().as_dict()
    assert data["inputs"] == {"image": "[B, 3, 16, 16]", "bias_in": "[B, 8]"}
    assert data["outputs"] == {"logits": "[B, 5]", "features": "[B, 8]"}
    assert data["layers"][0]["path"] == "stem"
    assert data["totals"]["params"] == residual_spec.check().totals.params


def test_counts_are_exact_for_a_known_layer():
    spec = nasforge.loads("""
inputs: {x: [B, 3, 32, 32]}
graph:
  - {id: conv, op: conv2d, out: 16, kernel: 3, padding: 1, bias: false}
""")
    t = spec.check().totals
    assert t.params == 16 * 3 * 9
    assert t.macs == 16 * 32 * 32 * 3 * 9
    gm = spec.build()
    with FlopCounterMode(display=False) as counter:
        gm(torch.randn(1, 3, 32, 32))
    assert counter.get_total_flops() == 2 * t.macs
