"""The fx builder: modules at spec paths, readable code, multi-output ops, export with a symbolic batch."""

from __future__ import annotations

import operator

import torch
from torch import fx

import nasforge
from nasforge.compiler.fx_builder import class_name, example_inputs, fx_name


def test_state_dict_keys_follow_node_paths_in_graph_order(residual_spec):
    gm = residual_spec.build()
    keys = [k for k in gm.state_dict() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert keys == ["stem.weight", "stem.bias",
                    "units.0.conv.weight", "units.0.conv.bias", "units.0.bn.weight", "units.0.bn.bias",
                    "units.1.conv.weight", "units.1.conv.bias", "units.1.bn.weight", "units.1.bn.bias",
                    "head.weight", "head.bias"]


def test_generated_code_reads_like_the_spec(residual_spec):
    gm = residual_spec.build()
    code = gm.code
    for name in ("stem", "units_0_conv", "units_1_sum", "halves", "joined", "pool", "head"):
        assert name in code
    assert type(gm).__name__ == "ResidualNet"
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert operator.add in targets and torch.cat in targets and operator.getitem in targets
    # stateless ops are functions, not modules
    assert {n.target for n in gm.graph.nodes if n.op == "call_module"} == {
        "stem", "units.0.conv", "units.0.bn", "units.1.conv", "units.1.bn", "head"}


def test_outputs_keep_declared_order_and_values_match_reference(residual_spec):
    gm = residual_spec.build()
    image, bias_in = example_inputs(residual_spec.graph, batch=3)
    logits, features = gm(image, bias_in)
    assert logits.shape == (3, 5) and features.shape == (3, 8)
    # recompute by hand from the built submodules
    x = gm.stem(image)
    for k in ("0", "1"):
        unit = getattr(gm.units, k)
        x = x + torch.relu(unit.bn(unit.conv(x)))
    a, b = torch.chunk(x, 2, dim=1)
    pooled = torch.cat([b, a], dim=1).mean(dim=(2, 3))
    torch.testing.assert_close(features, pooled)
    torch.testing.assert_close(logits, gm.head(pooled + bias_in))


def test_export_with_dynamic_batch(residual_spec):
    gm = residual_spec.build()
    inputs = example_inputs(residual_spec.graph, batch=2)
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(gm, inputs, dynamic_shapes=({0: batch}, {0: batch}))
    out = ep.module()(*example_inputs(residual_spec.graph, batch=5))
    assert out[0].shape == (5, 5)


def test_build_gives_a_fresh_module_each_time(residual_spec):
    a, b = residual_spec.build(), residual_spec.build()
    assert isinstance(a, fx.GraphModule) and a is not b
    assert a.stem.weight.data_ptr() != b.stem.weight.data_ptr()
    assert not a.training


def test_names():
    assert fx_name("stages.2.block.5.dw") == "stages_2_block_5_dw"
    assert fx_name("0.conv") == "n_0_conv"
    assert class_name("convnext_tiny") == "ConvnextTiny"
    assert class_name("2net") == "Net2net"


def test_train_only_ops_follow_module_mode():
    spec = nasforge.loads("""
inputs: {x: [B, 64]}
graph:
  - {id: drop, op: dropout, p: 0.5}
  - {id: fc, op: linear, out: 4}
""")
    gm = spec.build()
    x = torch.ones(8, 64)
    torch.testing.assert_close(gm(x), gm.fc(x))
    gm.train()
    assert not torch.allclose(gm(x), gm.fc(x))


def test_single_piece_split_is_unwrapped():
    """torch.split returns a tuple even for one piece; the builder must index into it."""
    spec = nasforge.loads("""
inputs: {x: [B, 4, 8]}
graph:
  - {id: parts, op: split, sizes: 4}
  - {id: act, op: relu}
""")
    gm = spec.build()
    x = torch.randn(2, 4, 8)
    torch.testing.assert_close(gm(x), torch.relu(x))
