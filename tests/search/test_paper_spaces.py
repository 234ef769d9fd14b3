"""The search spaces in ``specs/spaces``, held to their papers: size, members that build and run."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

import nasforge
from nasforge.compiler.fx_builder import example_inputs
from nasforge.search.space import Space, check_space

ROOT = Path(__file__).resolve().parents[2]
SPACES = sorted((ROOT / "specs" / "spaces").glob("*.yaml"))
NB201 = ROOT / "specs" / "spaces" / "nas_bench_201.yaml"


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_space_has_paper_metadata_and_published_size(path: Path):
    spec = nasforge.load(path)
    paper = spec.paper
    for key in ("title", "authors", "year", "venue", "url", "reference", "notes"):
        assert paper.get(key), f"paper: is missing {key}"
    report = check_space(spec, samples=0)
    assert report.ok, [p.describe() for p in report.problems]
    if "size" in paper:
        assert report.size == paper["size"]


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_random_members_build_and_run(path: Path):
    space = Space(nasforge.load(path))
    rng = random.Random(0)
    for _ in range(2):
        member = space.concrete(space.sample(rng))
        gm = member.build()
        with torch.no_grad():
            out = gm(*example_inputs(member.graph, batch=2))
        first = out[0] if isinstance(out, tuple) else out
        assert torch.isfinite(first).all()


def test_nas_bench_201_extremes():
    ops = ("edge_1_0", "edge_2_0", "edge_2_1", "edge_3_0", "edge_3_1", "edge_3_2")
    largest = nasforge.load(NB201).with_choices({f"params.{e}": "nor_conv_3x3" for e in ops})
    assert largest.check().totals.params == nasforge.load(NB201).paper["params_max"] == 1_531_546
    smallest = nasforge.load(NB201).with_choices({f"params.{e}": "none" for e in ops})
    # with every edge absent only the skeleton has parameters: stem, two reductions, last BN, classifier
    skeleton = (432 + 32) + (4608 + 64 + 9216 + 64 + 512) + (18432 + 128 + 36864 + 128 + 2048) + 128 + 650
    assert smallest.check().totals.params == skeleton
