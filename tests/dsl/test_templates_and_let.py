"""Id templates (``layer${s + 1}``) and ``let:`` derived values."""

from __future__ import annotations

import pytest

import nasforge

STAGES = """
params: {depths: [1, 2]}
inputs: {x: [B, 4]}
blocks:
  stage:
    args: [d]
    nodes:
      - {id: "layer${i + 1}", repeat: $d, op: linear, out: 4}
graph:
  - {id: "stage${s + 1}", repeat: 2, as: s, block: stage, d: "${depths[s]}"}
  - {id: out, op: add, in: [stage1, stage2]}
  - {id: after, op: relu}
"""


def test_id_templates_name_instances_as_siblings():
    spec = nasforge.loads(STAGES, "t.yaml")
    g = spec.graph
    assert list(g.nodes) == ["stage1.layer1", "stage2.layer1", "stage2.layer2", "out", "after"]
    assert [str(v) for v in g.nodes["stage2.layer1"].inputs] == ["stage1.layer1"]   # chained
    assert [str(v) for v in g.nodes["out"].inputs] == ["stage1.layer1", "stage2.layer2"]  # named
    assert [str(v) for v in g.nodes["after"].inputs] == ["out"]
    assert list(spec.build().state_dict())[:2] == ["stage1.layer1.weight", "stage1.layer1.bias"]
    assert list(nasforge.loads(spec.to_yaml()).graph.nodes) == list(g.nodes)


def test_id_template_without_repeat_uses_params():
    spec = nasforge.loads("""
params: {k: 6}
inputs: {x: [B, 4]}
graph:
  - {id: "features.${k}", op: relu}
""")
    assert list(spec.graph.nodes) == ["features.6"]


@pytest.mark.parametrize("template,message", [
    ("layer${0}", "id template gives 'layer0', which is taken"),
    ("${1.5}", "an id template must give a name"),
])
def test_bad_id_templates_are_located(template, message):
    text = f"""
inputs: {{x: [B, 4]}}
graph:
  - {{id: "{template}", repeat: 2, op: relu}}
"""
    with pytest.raises(nasforge.SpecError) as info:
        nasforge.loads(text, "bad.yaml").check()
    assert message in info.value.message
    assert (info.value.location.line, info.value.location.column) == (4, 11)


LET = """
params: {width: 4}
let: {double: "${2 * width}"}
inputs: {x: [B, 4]}
blocks:
  b:
    args: [d]
    let: {hidden: "${d * 3}", more: "${hidden + 1}"}
    nodes:
      - {id: fc, op: linear, out: $more}
graph:
  - {id: a, op: linear, out: $double}
  - {id: blk, block: b, d: $double}
"""


def test_let_values_derive_from_params_and_args():
    spec = nasforge.loads(LET, "let.yaml", width=5)
    assert [str(n.outputs[0]) for n in spec.graph] == ["[B, 10]", "[B, 31]"]
    assert spec.graph.meta["params"] == {"width": 5}
    assert nasforge.loads(spec.to_yaml()).check().totals == spec.check().totals


def test_let_cannot_be_overridden_or_shadow():
    with pytest.raises(nasforge.SpecError, match="cannot override unknown parameter 'double'"):
        nasforge.loads(LET, "let.yaml", double=3).check()
    with pytest.raises(nasforge.SpecError) as info:
        nasforge.loads(LET.replace("let: {hidden", "let: {d"), "let.yaml").check()
    assert "let 'd' shadows a parameter or argument" in info.value.message
    assert info.value.location.line == 8


def test_outputs_may_be_conditional():
    text = """
params: {aux: false}
inputs: {x: [B, 4]}
graph:
  - {id: trunk, op: relu}
  - {id: aux_head, op: linear, out: 2, if: $aux}
  - {id: head, op: linear, in: trunk, out: 3}
outputs: {logits: head, aux: "${'aux_head' if aux else null}"}
"""
    assert list(nasforge.loads(text).graph.outputs) == ["logits"]
    assert list(nasforge.loads(text, aux=True).graph.outputs) == ["logits", "aux"]
