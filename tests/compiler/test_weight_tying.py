"""Weight tying: ``tie: {weight: NODE.weight}`` shares one parameter between two nodes."""

from __future__ import annotations

import pytest
import torch

import nasforge

TIED = """
inputs: {ids: {shape: [B, 5], dtype: int64}}
graph:
  - {id: wte, op: embedding, num: 50, dim: 8}
  - {id: act, op: gelu}
  - {id: lm_head, op: linear, out: 50, bias: false, tie: {weight: wte.weight}}
"""


def test_tied_parameter_is_one_tensor_counted_once():
    spec = nasforge.loads(TIED, "tied.yaml")
    assert spec.check().totals.params == 50 * 8
    gm = spec.build()
    assert gm.lm_head.weight is gm.wte.weight
    assert sum(p.numel() for p in gm.parameters()) == 50 * 8
    ids = torch.randint(0, 50, (2, 5))
    torch.testing.assert_close(gm(ids), torch.nn.functional.gelu(gm.wte(ids)) @ gm.wte.weight.T)
    program = torch.export.export(gm, (ids,))
    torch.testing.assert_close(program.module()(ids), gm(ids))


def test_tie_round_trips_in_the_flat_form():
    spec = nasforge.loads(TIED.replace("out: 50, bias", "out: {choice: [50]}, bias"), "tied.yaml")
    again = nasforge.loads(spec.to_yaml())
    assert again.graph.nodes["lm_head"].ties == {"weight": "wte.weight"}
    assert again.check().totals.params == 400


@pytest.mark.parametrize("tie,message", [
    ("{weight: wte.weight2}", "node 'wte' owns no parameter 'weight2'"),
    ("{bias: wte.weight}", "op 'linear' has no parameter 'bias' to tie"),
    ("{weight: nowhere.weight}", "tie target 'nowhere.weight' is not another node's parameter"),
    ("{weight: lm_head.weight}", "tie target 'lm_head.weight' is not another node's parameter"),
    ("[wte]", "'tie' maps this node's parameters"),
])
def test_bad_ties_are_located(tie, message):
    with pytest.raises(nasforge.SpecError) as info:
        nasforge.loads(TIED.replace("{weight: wte.weight}", tie), "tied.yaml").check()
    assert message in info.value.message
    assert info.value.location.line == 6 and info.value.node_path == "lm_head"


def test_tied_shapes_must_agree():
    with pytest.raises(nasforge.SpecError) as info:
        nasforge.loads(TIED.replace("out: 50", "out: 40"), "tied.yaml").check()
    assert "tied parameters have different shapes" in info.value.message
    assert info.value.found == "wte.weight shaped [50, 8]"


def test_a_null_target_leaves_the_parameter_untied():
    text = TIED.replace("params_placeholder", "").replace(
        "inputs:", "params: {tied: false}\ninputs:").replace(
        "{weight: wte.weight}", "{weight: \"${'wte.weight' if tied else null}\"}")
    assert nasforge.loads(text).check().totals.params == 50 * 8 * 2
    assert nasforge.loads(text, tied=True).check().totals.params == 50 * 8
