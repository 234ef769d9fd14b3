"""Search spaces: choice discovery, sampling, exact size, options that never type-check."""

from __future__ import annotations

import random

import pytest

import nasforge
from nasforge.cli import main
from nasforge.search.space import Space, check_space

SPACE = """
params: {width: 8}
inputs: {x: [B, 3, 16, 16]}
blocks:
  layer:
    args: [dim]
    nodes:
      - {id: conv, op: conv2d, out: $dim, kernel: {choice: [1, 3]}, padding: {choice: [0, 1]}}
      - {id: act, op: {op_choice: [relu, gelu, identity]}}
graph:
  - {id: stem, op: conv2d, out: $width, kernel: 3, padding: 1}
  - {id: body, repeat: {int: [1, 3]}, block: layer, dim: $width}
  - {id: pool, op: global_avg_pool, keepdim: false}
  - {id: head, op: linear, out: {choice: [10, 20]}}
"""

BROKEN = """
inputs: {x: [B, 8, 16, 16]}
graph:
  - {id: conv, op: conv2d, out: {choice: [8, 16]}, kernel: 3, padding: 1}
  - {id: res, op: add, in: [x, conv]}
"""


@pytest.fixture
def space() -> Space:
    return Space(nasforge.loads(SPACE, "space.yaml"))


def test_choices_are_discovered_with_labels(space):
    assert [c.label for c in space.choices] == [
        "body.repeat", "body.0.conv.kernel", "body.0.conv.padding", "body.0.act.op", "head.out"]
    assert [c.label for c in space.structural()] == ["body.repeat"]


def test_size_counts_the_conditional_space_exactly(space):
    per_layer = 2 * 2 * 3
    assert space.size() == 2 * (per_layer + per_layer ** 2 + per_layer ** 3)


def test_samples_decide_exactly_the_choices_they_create(space):
    rng = random.Random(7)
    depths = set()
    for _ in range(30):
        a = space.sample(rng)
        depth = a["body.repeat"]
        depths.add(depth)
        layer_labels = {k for k in a if k.startswith("body.") and k != "body.repeat"}
        assert layer_labels == {f"body.{i}.conv.{x}" for i in range(depth) for x in ("kernel", "padding")} | {
            f"body.{i}.act.op" for i in range(depth)}
        spec = space.concrete(a)
        assert spec.check().totals.params > 0
        assert {c.label: c.value for c in spec.choices} == a
    assert depths == {1, 2, 3}


def test_sampling_is_seeded(space):
    assert list(space.samples(5, seed=3)) == list(space.samples(5, seed=3))
    assert list(space.samples(5, seed=3)) != list(space.samples(5, seed=4))


def test_a_sample_is_a_concrete_spec_that_loads_as_it_is(space):
    a = space.sample(random.Random(1))
    text = space.concrete(a).to_yaml()
    again = nasforge.loads(text)
    assert again.choices == [] and again.check().totals == space.concrete(a).check().totals


def test_option_that_breaks_the_next_layer_is_reported():
    report = check_space(nasforge.loads(BROKEN, "broken.yaml"), samples=4)
    assert not report.ok
    assert [(p.label, p.value) for p in report.problems] == [("conv.out", 16)]
    assert "do not broadcast" in report.problems[0].error.message
    assert report.size == 2


def test_continuous_choices_make_the_size_uncountable():
    text = SPACE.replace("out: {choice: [10, 20]}", "out: 10").replace(
        "{id: pool, op: global_avg_pool, keepdim: false}",
        "{id: pool, op: global_avg_pool, keepdim: false}\n  - {id: drop, op: dropout, p: {float: [0.0, 0.5]}}")
    assert Space(nasforge.loads(text)).size() is None


def test_cli_check_and_sample(tmp_path, capsys):
    good = tmp_path / "space.yaml"
    good.write_text(SPACE)
    assert main(["check", str(good), "--samples", "3"]) == 0
    out = capsys.readouterr().out
    assert "5 choice point(s) at the defaults, 1 of them structural; 3,768 networks" in out
    assert "3/3 random samples type-check" in out
    bad = tmp_path / "broken.yaml"
    bad.write_text(BROKEN)
    assert main(["check", str(bad)]) == 1
    captured = capsys.readouterr()
    assert "option conv.out = 16 never type-checks" in captured.out
    assert "Traceback" not in captured.err
    target = tmp_path / "s.yaml"
    assert main(["sample", str(good), "--seed", "3", "-o", str(target)]) == 0
    assert main(["check", str(target)]) == 0
