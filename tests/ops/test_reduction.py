"""Reduction entries beyond the generic harness: axis checks, keepdim, dtypes and numerics."""

from __future__ import annotations

import pytest
import torch

from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.registry import OpContext
from nasforge.types import Sym, TensorType

B = Sym.of("B")


def infer(name: str, attrs: dict, *shape, dtype: str = "float32") -> TensorType:
    op = get_op(name)
    return op.infer(OpContext(op.validate_attrs(attrs), [TensorType(tuple(shape), dtype)]))[0]


def test_shapes_with_and_without_keepdim():
    assert infer("mean", {"axes": [2, 3]}, B, 64, 7, 7) == TensorType((B, 64))
    assert infer("mean", {"axes": [-2, -1], "keepdim": True}, B, 64, 7, 7) == TensorType((B, 64, 1, 1))
    assert infer("max", {"axes": 1}, B, 5, 8) == TensorType((B, 8))
    assert infer("sum", {"axes": 0}, B, 5) == TensorType((5,))


@pytest.mark.parametrize("axes,message", [
    ([1, -3], "names an axis twice"),
    ([4], "axis 4 is out of range for a rank-4 tensor"),
    (-5, "axis -5 is out of range for a rank-4 tensor"),
])
def test_bad_axes(axes, message):
    with pytest.raises(ShapeError, match=message):
        infer("sum", {"axes": axes}, 2, 3, 4, 5)


def test_bad_attributes_and_inputs():
    with pytest.raises(SpecError, match="mean needs at least one axis"):
        get_op("mean").validate_attrs({"axes": []})
    with pytest.raises(SpecError, match="needs attribute 'axes'"):
        get_op("max").validate_attrs({})
    with pytest.raises(ShapeError, match="cannot reduce a 0-d tensor"):
        infer("sum", {"axes": 0})
    with pytest.raises(ShapeError, match="mean input must be a floating-point tensor"):
        infer("mean", {"axes": 0}, 3, dtype="int64")


def test_dtypes_follow_torch():
    assert infer("sum", {"axes": 1}, 2, 3, dtype="bool").dtype == "int64"
    assert infer("sum", {"axes": 1}, 2, 3, dtype="int32").dtype == "int64"
    assert infer("sum", {"axes": 1}, 2, 3, dtype="float16").dtype == "float16"
    assert infer("max", {"axes": 1}, 2, 3, dtype="int32").dtype == "int32"


def test_max_returns_values_and_flops():
    op = get_op("max")
    ctx = OpContext(op.validate_attrs({"axes": [0, 2]}), [TensorType((2, 3, 4))])
    ctx.outputs = op.infer(ctx)
    call = op.lower(ctx)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(call.fn(x, **call.kwargs), x.amax(dim=(0, 2)))
    assert op.flops(ctx) == 24
    mean = get_op("mean")
    ctx = OpContext(mean.validate_attrs({"axes": [0, 2]}), [TensorType((2, 3, 4))])
    ctx.outputs = mean.infer(ctx)
    assert mean.flops(ctx) == 24 + 3
