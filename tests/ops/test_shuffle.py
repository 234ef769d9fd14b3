"""channel_shuffle: the ShuffleNet permutation, its shape errors, and SPOS's even/odd split built from it."""

from __future__ import annotations

import pytest
import torch

import nasforge
from nasforge.errors import ShapeError, SpecError
from nasforge.types import Sym
from tests.ops.test_conv import context


def test_groups_transpose_the_channel_matrix():
    # 6 channels in 2 groups of 3: [a0 a1 a2 | b0 b1 b2] -> [a0 b0 a1 b1 a2 b2]
    spec = nasforge.loads("""
        inputs: {x: [B, 6, 1, 1]}
        graph: [{id: shuffle, op: channel_shuffle, groups: 2}]
    """)
    out = spec.build()(torch.arange(6.0).reshape(1, 6, 1, 1))
    assert out.flatten().tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]


def test_half_channel_groups_then_chunk_split_even_and_odd_channels():
    """Single Path One-Shot's channel_shuffle returns x[:, 0::2] and x[:, 1::2]."""
    spec = nasforge.loads("""
        inputs: {x: [B, 8, 3, 3]}
        graph:
          - {id: shuffle, op: channel_shuffle, groups: 4}
          - {id: split, op: chunk, chunks: 2}
        outputs: [split:0, split:1]
    """)
    x = torch.randn(2, 8, 3, 3)
    even, odd = spec.build()(x)
    assert torch.equal(even, x[:, 0::2]) and torch.equal(odd, x[:, 1::2])


def test_symbolic_batch_and_spatial_sizes_pass_through():
    b, t = Sym.of("B"), Sym.of("T")
    assert context("channel_shuffle", {"groups": 2}, (b, 4, t)).outputs[0].shape == (b, 4, t)


@pytest.mark.parametrize("attrs,shape,message", [
    ({"groups": 3}, (1, 8, 2, 2), "3 groups do not divide 8 channels"),
    ({"groups": 2}, (4, 8), r"channel_shuffle needs \[N, C, \*spatial\]"),
    ({"groups": 2}, (1, Sym.of("C"), 4), "needs a static channel count"),
])
def test_bad_inputs_raise_shape_errors(attrs, shape, message):
    with pytest.raises(ShapeError, match=message):
        context("channel_shuffle", attrs, shape)


def test_groups_must_be_positive():
    with pytest.raises(SpecError, match="'groups' must be positive"):
        context("channel_shuffle", {"groups": 0}, (1, 4, 2, 2))
