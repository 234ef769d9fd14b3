"""Variants: named family members with their own parameter settings and paper numbers."""

from __future__ import annotations

import pytest

import nasforge

FAMILY = """
name: fam
paper: {title: A family, params: 16}
params: {width: 4, depth: 1}
variants:
  wide: {set: {width: 8}, paper: {params: 32, notes: wider}}
  deep: {set: {depth: 2}, doc: two layers}
inputs: {x: [B, 3]}
graph:
  - {id: fc, op: linear, out: $width}
  - {id: more, repeat: $depth, op: linear, out: $width}
"""


def test_variant_sets_params_and_paper():
    spec = nasforge.loads(FAMILY, "fam.yaml", variant="wide")
    assert spec.name == "wide" and spec.graph.name == "wide"
    assert spec.graph.meta["params"]["width"] == 8
    assert spec.paper == {"title": "A family", "params": 32, "notes": "wider"}
    assert spec.variants == ["wide", "deep"]


def test_explicit_overrides_win_over_the_variant():
    spec = nasforge.loads(FAMILY, "fam.yaml", variant="wide", width=5)
    assert spec.graph.meta["params"]["width"] == 5


def test_default_member_is_the_spec_itself():
    spec = nasforge.loads(FAMILY, "fam.yaml")
    assert spec.name == "fam" and spec.variant is None
    assert spec.paper["params"] == 16


def test_variant_round_trips_as_a_standalone_spec():
    spec = nasforge.loads(FAMILY, "fam.yaml", variant="deep")
    text = spec.to_yaml()
    assert "variants" not in text
    again = nasforge.loads(text)
    assert again.name == "deep"
    assert list(again.graph.nodes) == list(spec.graph.nodes) == ["fc", "more.0", "more.1"]


@pytest.mark.parametrize("text,message,line", [
    (FAMILY.replace("wide: {set", "wide: {sett"), "unknown key 'sett' in variant 'wide'", 6),
    (FAMILY.replace("{set: {width: 8}", "{set: [8]"), "'set' of variant 'wide' must be a mapping", 6),
    (FAMILY.replace("wide: {set: {width: 8}, paper: {params: 32, notes: wider}}", "wide: 3"),
     "variant 'wide' must be a mapping", 6),
])
def test_malformed_variants_are_located(text, message, line):
    with pytest.raises(nasforge.SpecError) as info:
        nasforge.loads(text, "fam.yaml", variant="wide")
    assert message in info.value.message
    assert info.value.location.line == line


def test_unknown_variant_suggests_a_name():
    with pytest.raises(nasforge.SpecError) as info:
        nasforge.loads(FAMILY, "fam.yaml", variant="wid")
    assert "no variant 'wid'" in info.value.message
    assert "did you mean 'wide'" in info.value.hint


def test_variant_setting_an_unknown_parameter_fails():
    with pytest.raises(nasforge.SpecError, match="cannot override unknown parameter 'widht'"):
        nasforge.loads(FAMILY.replace("{width: 8}", "{widht: 8}"), "fam.yaml", variant="wide").check()
