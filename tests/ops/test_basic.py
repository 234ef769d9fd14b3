"""``identity`` and ``zero`` beyond the generic harness: DARTS' strided ``none`` op, bad inputs, export."""

from __future__ import annotations

import pytest
import torch

from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.registry import OpContext
from nasforge.types import Sym, TensorType

B = Sym.of("B")


def infer(name: str, attrs: dict, x: TensorType) -> tuple:
    op = get_op(name)
    ctx = OpContext(op.validate_attrs(attrs), [x])
    ctx.outputs = op.infer(ctx)
    return op, ctx


class Zero(torch.nn.Module):
    def __init__(self, stride: int) -> None:
        super().__init__()
        op, ctx = infer("zero", {"stride": stride}, TensorType((B, 3, 8, 8)))
        self.call = op.lower(ctx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.call.fn(x, *self.call.args)


@pytest.mark.parametrize("stride,shape", [(1, (2, 3, 5, 7)), (2, (2, 3, 5, 7)), (3, (2, 4, 7)), (2, (1, 2, 3, 4, 5))])
def test_zero_matches_darts_none_op(stride, shape):
    x = torch.randn(shape)
    op, ctx = infer("zero", {"stride": stride}, TensorType(shape))
    call = op.lower(ctx)
    y = call.fn(x, *call.args)
    darts = x[(slice(None), slice(None)) + (slice(None, None, stride),) * (x.dim() - 2)].mul(0.0)
    assert torch.equal(y, darts)
    assert ctx.outputs[0].concrete_shape() == tuple(y.shape)


def test_zero_keeps_the_dtype_and_a_symbolic_batch():
    _, ctx = infer("zero", {"stride": 2}, TensorType((B, 3, 8, 8), "int64"))
    assert ctx.outputs[0] == TensorType((B, 3, 4, 4), "int64")
    assert infer("zero", {}, TensorType((B, 5)))[1].outputs[0] == TensorType((B, 5))


@pytest.mark.parametrize("x,message", [
    (TensorType((2, 3)), "needs spatial axes"),
    (TensorType((2, 3, Sym.of("H"), 8)), "static spatial sizes"),
])
def test_zero_rejects_bad_inputs(x, message):
    with pytest.raises(ShapeError, match=message):
        infer("zero", {"stride": 2}, x)


def test_zero_stride_must_be_positive():
    with pytest.raises(SpecError, match="'stride' must be positive"):
        get_op("zero").validate_attrs({"stride": 0})


def test_zero_exports_with_dynamic_batch():
    program = torch.export.export(Zero(2), (torch.randn(2, 3, 8, 8),),
                                  dynamic_shapes=[{0: torch.export.Dim("batch")}])
    y = program.module()(torch.randn(5, 3, 8, 8))
    assert y.shape == (5, 3, 4, 4) and not y.any()


def test_identity_returns_its_input():
    op, ctx = infer("identity", {}, TensorType((2, 3)))
    x = torch.randn(2, 3)
    assert op.lower(ctx)(x) is x
