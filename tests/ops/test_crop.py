"""The crop op beyond the generic harness: windows against plain slicing (fixed, per-axis and centred
offsets), shape errors, a symbolic batch, and torch.export of a spec that crops."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim

import nasforge
from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.registry import OpContext
from nasforge.types import Sym, TensorType

B = Sym.of("B")


def t(*shape) -> TensorType:
    return TensorType(tuple(shape))


def run(attrs: dict, x: torch.Tensor, like: torch.Tensor, symbolic: bool = False) -> torch.Tensor:
    op = get_op("crop")
    types = [t(*x.shape), t(*like.shape)]
    if symbolic:
        types = [ty.with_shape((B,) + ty.shape[1:]) for ty in types]
    ctx = OpContext(op.validate_attrs(attrs), types)
    ctx.outputs = op.infer(ctx)
    call = op.lower(ctx)
    out = call.fn(x, like, *call.args)
    bound = tuple(ctx.outputs[0].concrete_shape({"B": x.shape[0]}))
    assert tuple(out.shape) == bound
    return out


def test_fixed_offset_is_caffes_crop():
    x, like = torch.randn(2, 21, 44, 44), torch.randn(2, 21, 34, 34)
    torch.testing.assert_close(run({"offset": 5}, x, like), x[:, :, 5:39, 5:39])


def test_per_axis_offsets_from_axis_1():
    x, like = torch.randn(2, 6, 7, 8), torch.randn(2, 3, 5, 4)
    out = run({"axis": 1, "offset": [1, 0, 2]}, x, like)
    torch.testing.assert_close(out, x[:, 1:4, 0:5, 2:6])


@pytest.mark.parametrize("size, target, start", [(9, 4, 2), (10, 6, 2), (568, 392, 88), (8, 8, 0)])
def test_center_takes_the_floor_of_half_the_surplus(size, target, start):
    x, like = torch.randn(1, 2, size, size), torch.randn(1, 5, target, target)
    out = run({}, x, like, symbolic=True)
    torch.testing.assert_close(out, x[:, :, start:start + target, start:start + target])


def test_like_only_lends_its_shape():
    x = torch.randn(1, 3, 6, 6)
    a = run({"offset": 1}, x, torch.zeros(1, 7, 4, 4))
    b = run({"offset": 1}, x, torch.randn(1, 7, 4, 4))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("attrs, shapes, message", [
    ({"offset": 5}, [(2, 3, 10, 10), (2, 3, 8, 8)], "does not fit"),
    ({}, [(2, 3, 4, 4), (2, 3, 6, 6)], "does not fit"),
    ({"offset": [1, 2, 3]}, [(2, 3, 10, 10), (2, 3, 8, 8)], "needs 2 offset"),
    ({}, [(2, 3, 10, 10), (2, 8, 8)], "same rank"),
    ({"axis": 4}, [(2, 3, 10, 10), (2, 3, 8, 8)], "out of range"),
])
def test_shape_errors(attrs, shapes, message):
    op = get_op("crop")
    ctx = OpContext(op.validate_attrs(attrs), [t(*s) for s in shapes])
    with pytest.raises(ShapeError, match=message):
        op.infer(ctx)


def test_a_symbolic_axis_cannot_be_cut():
    op = get_op("crop")
    ctx = OpContext(op.validate_attrs({"axis": 0, "offset": 1}), [t(B, 3, 8), t(2, 3, 8)])
    with pytest.raises(ShapeError, match="static sizes"):
        op.infer(ctx)
    # an equal symbolic axis with nothing to cut passes through
    ctx = OpContext(op.validate_attrs({"axis": 0}), [t(B, 3, 8), t(B, 2, 6)])
    assert op.infer(ctx)[0].shape == (B, 2, 6)


@pytest.mark.parametrize("offset", ["middle", -1, [2, -3]])
def test_bad_offsets(offset):
    with pytest.raises(SpecError, match="offset"):
        get_op("crop").validate_attrs({"offset": offset})


def test_spec_with_crops_exports_with_a_dynamic_batch():
    spec = nasforge.loads("""
nasforge: 1
name: crop_and_concat
inputs: {x: [B, 3, 20, 20]}
graph:
  - {id: deep, op: conv2d, in: x, out: 4, kernel: 5}
  - {id: skip, op: crop, in: [x, deep]}
  - {id: cat, op: concat, in: [deep, skip]}
  - {id: fixed, op: crop, in: [x, cat], offset: 1}
  - {id: out, op: concat, in: [cat, fixed]}
""")
    gm = spec.build()
    x = torch.randn(2, 3, 20, 20)
    program = torch.export.export(gm, (x,), dynamic_shapes=({0: Dim("batch", min=1, max=8)},))
    y = torch.randn(5, 3, 20, 20)
    out = program.module()(y)
    assert out.shape == (5, 10, 16, 16)
    torch.testing.assert_close(out, gm(y))
    torch.testing.assert_close(out[:, 4:7], y[:, :, 2:18, 2:18])
    torch.testing.assert_close(out[:, 7:], y[:, :, 1:17, 1:17])
