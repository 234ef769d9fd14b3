"""The meaning of the spec language: what a spec expands to.

Parameters and overrides, default inputs, block inputs, multi-output references, repeats and their
index variables, nested blocks and their node paths, ``if:``, imports, the symbolic batch, several
inputs and outputs, choice points, and the round trip through ``to_yaml``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

import nasforge
from nasforge.compiler.ir import Graph
from tests.dsl.helpers import FIXTURES, ir_signature

TINY = FIXTURES / "models" / "tiny.yaml"


def spec_of(text: str, **overrides: object) -> nasforge.Spec:
    return nasforge.loads(textwrap.dedent(text), "test.yaml", **overrides)


def graph_of(text: str, **overrides: object) -> Graph:
    return spec_of(text, **overrides).graph


def inputs_of(graph: Graph) -> dict[str, list[str]]:
    return {n.path: [str(v) for v in n.inputs] for n in graph}


# ------------------------------------------------------------------------------------- parameters

PARAMS = """
params: {width: 8, hidden: "${width * 4}", ratio: 0.5, half: "${int(hidden * ratio)}"}
inputs: {x: [B, 16]}
graph:
  - {id: fc1, op: linear, out: $hidden}
  - {id: fc2, op: linear, out: $half}
"""


@pytest.mark.parametrize("overrides,hidden,half", [
    ({}, 32, 16),
    ({"width": 4}, 16, 8),                      # derived parameters follow the override
    ({"hidden": 10}, 10, 5),                    # a derived parameter can be overridden itself
    ({"width": 4, "ratio": 0.25}, 16, 4),
])
def test_params_and_overrides(overrides: dict[str, object], hidden: int, half: int) -> None:
    graph = graph_of(PARAMS, **overrides)
    assert graph.nodes["fc1"].attrs["out"] == hidden
    assert graph.nodes["fc2"].attrs["out"] == half
    assert graph.meta["params"]["hidden"] == hidden


def test_load_passes_overrides(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PARAMS)
    assert nasforge.load(path, width=2).graph.nodes["fc1"].attrs["out"] == 8


# ------------------------------------------------------------------------------------ references

def test_default_input_is_the_previous_node_and_first_takes_first_input() -> None:
    graph = graph_of("""
        inputs: {a: [B, 8], b: [B, 8]}
        graph:
          - {id: first, op: relu}
          - {id: second, op: sigmoid}
          - {id: other, op: relu, in: b}
          - {id: joined, op: add, in: [second, other]}
          - {op: tanh}
    """)
    assert inputs_of(graph) == {"first": ["a"], "second": ["first"], "other": ["b"],
                                "joined": ["second", "other"], "tanh4": ["joined"]}


def test_block_inputs_named_and_default() -> None:
    graph = graph_of("""
        inputs: {x: [B, 8], y: [B, 8]}
        blocks:
          gate:
            inputs: [value, gate]
            nodes:
              - {id: sig, op: sigmoid, in: $gate}
              - {id: prod, op: mul, in: [$value, sig]}
          res:
            - {id: fc, op: linear, out: 8}
            - {id: sum, op: add, in: [$input, fc]}
        graph:
          - {id: g, block: gate, in: [x, y]}
          - {id: r, block: res}
    """)
    assert inputs_of(graph) == {"g.sig": ["y"], "g.prod": ["x", "g.sig"], "r.fc": ["g.prod"],
                                "r.sum": ["g.prod", "r.fc"]}


@pytest.mark.parametrize("op,attrs", [("split", "sizes: 4"), ("chunk", "chunks: 3")])
def test_multi_output_references(op: str, attrs: str) -> None:
    graph = graph_of(f"""
        inputs: {{x: [B, 12, 4, 4]}}
        graph:
          - {{id: parts, op: {op}, {attrs}}}
          - {{id: swapped, op: concat, in: ["parts:2", "parts:0", "parts:1"]}}
          - {{id: all, op: concat, in: parts}}
        outputs: {{second: "parts:1", swapped: swapped, all: all}}
    """)
    assert inputs_of(graph)["swapped"] == ["parts:2", "parts", "parts:1"]
    assert inputs_of(graph)["all"] == ["parts", "parts:1", "parts:2"]  # every output, in order
    assert [str(t) for t in graph.nodes["parts"].outputs] == ["[B, 4, 4, 4]"] * 3
    assert str(graph.type_of(graph.outputs["second"])) == "[B, 4, 4, 4]"
    assert str(graph.type_of(graph.outputs["all"])) == "[B, 12, 4, 4]"


def test_a_multi_output_node_as_the_output_gives_numbered_outputs() -> None:
    graph = graph_of("""
        inputs: {x: [B, 6]}
        graph:
          - {id: halves, op: chunk, chunks: 2}
        outputs: {half: halves}
    """)
    assert list(graph.outputs) == ["half_0", "half_1"]


# ----------------------------------------------------------------------------------------- repeat

@pytest.mark.parametrize("index_key,var", [("", "i"), ("as: k, ", "k")])
def test_repeat_names_instances_and_binds_the_index(index_key: str, var: str) -> None:
    graph = graph_of(f"""
        inputs: {{x: [B, 4]}}
        graph:
          - {{id: layers, repeat: 3, {index_key}op: linear, out: "${{8 * ({var} + 1)}}"}}
    """)
    assert [(n.path, n.attrs["out"]) for n in graph] == [("layers.0", 8), ("layers.1", 16), ("layers.2", 24)]
    assert inputs_of(graph) == {"layers.0": ["x"], "layers.1": ["layers.0"], "layers.2": ["layers.1"]}


def test_nested_repeats_of_blocks_name_nodes_by_path() -> None:
    graph = graph_of("""
        params: {depths: [1, 2, 2]}
        inputs: {image: [B, 8, 8, 8]}
        blocks:
          unit:
            - {id: dw, op: conv2d, out: 8, kernel: 3, padding: 1, groups: 8}
            - {id: pw, op: conv2d, out: 8, kernel: 1}
          stage:
            args: [depth]
            nodes:
              - {id: block, repeat: $depth, block: unit}
        graph:
          - {id: stages, repeat: "${len(depths)}", as: s, block: stage, depth: "${depths[s]}"}
    """)
    assert list(graph.nodes) == [
        "stages.0.block.0.dw", "stages.0.block.0.pw",
        "stages.1.block.0.dw", "stages.1.block.0.pw", "stages.1.block.1.dw", "stages.1.block.1.pw",
        "stages.2.block.0.dw", "stages.2.block.0.pw", "stages.2.block.1.dw", "stages.2.block.1.pw",
    ]
    assert inputs_of(graph)["stages.2.block.1.dw"] == ["stages.2.block.0.pw"]
    assert inputs_of(graph)["stages.1.block.0.dw"] == ["stages.0.block.0.pw"]


# --------------------------------------------------------------------------------------------- if

@pytest.mark.parametrize("stride,has_down", [(1, False), (2, True)])
def test_if_skips_a_node_whose_output_becomes_its_first_input(stride: int, has_down: bool) -> None:
    graph = graph_of("""
        params: {stride: 1}
        inputs: {x: [B, 8, 8, 8]}
        graph:
          - {id: body, op: conv2d, out: 8, kernel: 3, padding: 1, stride: $stride}
          - {id: down, op: avg_pool2d, kernel: 2, in: x, if: "${stride != 1}"}
          - {id: sum, op: add, in: [body, down]}
    """, stride=stride)
    assert ("down" in graph.nodes) is has_down
    assert inputs_of(graph)["sum"] == ["body", "down" if has_down else "x"]


# ---------------------------------------------------------------------------------------- imports

def test_imports_resolve_relative_to_the_importing_file(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # nowhere near the fixtures: paths must not depend on the cwd
    spec = nasforge.load(TINY)
    assert set(spec.document.blocks) == {"conv_bn", "residual", "stage"}  # residual.yaml imports conv.yaml
    assert spec.document.blocks["conv_bn"].file == str((FIXTURES / "blocks" / "conv.yaml").resolve())
    graph = spec.graph
    assert "stages.2.block.2.body.conv" in graph.nodes
    assert inputs_of(graph)["stages.0.block.0.sum"] == ["stem.act", "stages.0.block.0.body.act"]


def test_import_selects_blocks(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "acts.yaml").write_text("blocks:\n  a: [{op: relu}]\n  b: [{op: gelu}]\n")
    (tmp_path / "net.yaml").write_text(textwrap.dedent("""
        imports: [{file: lib/acts.yaml, blocks: [b]}]
        inputs: {x: [B, 4]}
        graph: [{id: act, block: b}]
    """))
    spec = nasforge.load(tmp_path / "net.yaml")
    assert list(spec.document.blocks) == ["b"]
    assert [n.op for n in spec.graph] == ["gelu"]


def test_blocks_see_spec_params_and_their_arguments() -> None:
    graph = graph_of("""
        params: {base: 4}
        inputs: {x: [B, 4]}
        blocks:
          fc:
            args: [mult, {extra: "${mult + 1}"}]
            nodes: [{id: lin, op: linear, out: "${base * mult + extra}"}]
        graph:
          - {id: a, block: fc, mult: 2}
          - {id: b, block: fc, mult: 2, extra: 0}
    """)
    assert graph.nodes["a.lin"].attrs["out"] == 11
    assert graph.nodes["b.lin"].attrs["out"] == 8


# ---------------------------------------------------------------------------- types, inputs, outputs

def test_symbolic_batch_flows_through_to_outputs_counts_and_the_module() -> None:
    spec = nasforge.load(TINY)
    assert str(spec.graph.type_of(spec.graph.outputs["logits"])) == "[B, 10]"
    one, four = spec.check({"B": 1}).totals, spec.check({"B": 4}).totals
    assert four.macs == 4 * one.macs and four.params == one.params
    for batch in (1, 3):
        assert spec.build()(torch.randn(batch, 3, 16, 16)).shape == (batch, 10)


def test_several_inputs_and_outputs_keep_names_dtypes_and_order() -> None:
    spec = spec_of("""
        inputs:
          tokens: {shape: [B, 6], dtype: int64}
          extra: [B, 6, 16]
        graph:
          - {id: embed, op: embedding, num: 100, dim: 16, in: tokens}
          - {id: sum, op: add, in: [embed, extra]}
          - {id: pooled, op: mean, axes: [1]}
        outputs: {features: sum, pooled: pooled}
    """)
    graph = spec.graph
    assert {k: str(v) for k, v in graph.inputs.items()} == {"tokens": "[B, 6] int64", "extra": "[B, 6, 16]"}
    assert {k: str(graph.type_of(v)) for k, v in graph.outputs.items()} == {
        "features": "[B, 6, 16]", "pooled": "[B, 16]"}
    features, pooled = spec.build()(torch.randint(0, 100, (2, 6)), torch.randn(2, 6, 16))
    assert features.shape == (2, 6, 16) and pooled.shape == (2, 16)


@pytest.mark.parametrize("outputs,names", [
    ("", ["output"]),                       # default: the last node
    ("outputs: b", ["b"]),
    ("outputs: [a, b]", ["a", "b"]),
    ("outputs: {first: a, second: b}", ["first", "second"]),
])
def test_output_forms(outputs: str, names: list[str]) -> None:
    graph = graph_of(f"""
        inputs: {{x: [B, 4]}}
        graph:
          - {{id: a, op: relu}}
          - {{id: b, op: sigmoid}}
        {outputs}
    """)
    assert list(graph.outputs) == names


# ---------------------------------------------------------------------------------------- choices

SPACE = """
params:
  width: {choice: [8, 16]}
  depth: {int: [1, 3], default: 2}
  drop: {float: [0.001, 0.5], log: true}
inputs: {x: [B, 3, 8, 8]}
blocks:
  unit:
    args: [dim]
    nodes:
      - {id: dw, op: conv2d, out: $dim, kernel: {choice: [3, 5]}, padding: same}
      - {id: act, op: {op_choice: [relu, gelu, {op: leaky_relu, slope: 0.2}]}}
graph:
  - {id: stem, op: conv2d, out: $width, kernel: 1}
  - {id: stage, repeat: $depth, block: unit, dim: $width}
  - {id: drop, op: dropout, p: $drop}
  - {id: pool, op: global_avg_pool, keepdim: false, in: {choice: [drop, stem]}}
"""


def test_choices_are_recorded_with_labels_kinds_and_defaults() -> None:
    choices = {c.label: c for c in spec_of(SPACE).choices}
    assert {label: (c.kind, c.value) for label, c in choices.items()} == {
        "params.width": ("choice", 8),
        "params.depth": ("int", 2),                  # default: given explicitly
        "params.drop": ("float", 0.001),             # default: the lower bound
        "pool.in": ("choice", "drop"),
        "stage.0.dw.kernel": ("choice", 3),          # separate per repeated instance
        "stage.0.act.op": ("op_choice", "relu"),
        "stage.1.dw.kernel": ("choice", 3),
        "stage.1.act.op": ("op_choice", "relu"),
    }
    assert choices["params.drop"].log and choices["params.depth"].options == (1, 3)
    assert choices["stage.1.act.op"].options == ("relu", "gelu", {"op": "leaky_relu", "slope": 0.2})
    assert (choices["params.width"].location.line, choices["params.width"].location.column) == (3, 10)


def test_with_choices_decides_points_and_leaves_the_space_alone() -> None:
    space = spec_of(SPACE)
    picked = space.with_choices({"params.width": 16, "params.depth": 3, "stage.2.dw.kernel": 5,
                                 "stage.1.act.op": {"op": "leaky_relu", "slope": 0.2}, "pool.in": "stem"})
    graph = picked.graph
    assert [n.attrs["out"] for n in graph if n.op == "conv2d"] == [16, 16, 16, 16]  # a param choice is shared
    assert [graph.nodes[f"stage.{k}.dw"].attrs["kernel"] for k in range(3)] == [3, 3, 5]
    assert (graph.nodes["stage.1.act"].op, graph.nodes["stage.1.act"].attrs) == ("leaky_relu", {"slope": 0.2})
    assert inputs_of(graph)["pool"] == ["stem"]
    assert {c.label: c.value for c in picked.choices}["stage.2.dw.kernel"] == 5
    assert "stage.2.dw" not in space.graph.nodes  # the space itself is unchanged


# ------------------------------------------------------------------------------------- round trip

ROUND_TRIPS = {
    "structured, imports inlined": lambda: nasforge.load(TINY),
    "structured, with overrides": lambda: nasforge.load(TINY, width=4, depths=[2, 1]),
    "structured, multi-output": lambda: spec_of("""
        name: "a: tricky name"
        inputs: {x: [B, 12, 4, 4], y: {shape: [B, 4], dtype: int64}}
        graph:
          - {id: parts, op: split, sizes: [4, 8]}
          - {id: joined, op: concat, in: ["parts:1", "parts:0"]}
        outputs: [joined, parts]
    """),
    "flat, space at its defaults": lambda: spec_of(SPACE),
    "flat, space decided": lambda: spec_of(SPACE).with_choices(
        {"params.depth": 3, "stage.2.act.op": {"op": "leaky_relu", "slope": 0.2}, "pool.in": "stem"}),
}


@pytest.mark.parametrize("make", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_to_yaml_loads_back_to_the_same_ir(make) -> None:  # type: ignore[no-untyped-def]
    spec = make()
    text = spec.to_yaml()
    again = nasforge.loads(text, "again.yaml")
    assert ir_signature(again.graph) == ir_signature(spec.graph)
    assert again.to_yaml() == text  # and writing is stable
    flat = bool(spec.choices)
    assert ("blocks:" not in text and "imports:" not in text) if flat else "imports:" not in text
    assert not again.choices


def test_state_dict_keys_follow_node_paths() -> None:
    spec = nasforge.load(TINY)
    keys = list(spec.build().state_dict())
    assert keys[:2] == ["stem.conv.weight", "stem.bn.weight"]
    assert "stages.2.block.1.body.conv.weight" in keys and "head.bias" == keys[-1]
    assert {k.rsplit(".", 1)[0] for k in keys} == {
        n.path for n in spec.graph if n.op in ("conv2d", "batch_norm2d", "linear")}
