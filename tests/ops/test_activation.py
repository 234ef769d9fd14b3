"""Activation entries beyond the generic harness: bad inputs, gated units, axes and numerics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.registry import OpContext
from nasforge.types import Sym, TensorType

B = Sym.of("B")


def apply(name: str, attrs: dict, x: torch.Tensor) -> torch.Tensor:
    """Infer on ``x``'s type, run the lowering and check the result against the shape rule."""
    op = get_op(name)
    ctx = OpContext(op.validate_attrs(attrs), [TensorType(tuple(x.shape), str(x.dtype).removeprefix("torch."))])
    ctx.outputs = op.infer(ctx)
    call = op.lower(ctx)
    y = call.fn(x, *call.args, **call.kwargs)
    assert tuple(y.shape) == ctx.outputs[0].concrete_shape()
    return y


def infer(name: str, attrs: dict, *shape, dtype: str = "float32") -> list[TensorType]:
    op = get_op(name)
    ctx = OpContext(op.validate_attrs(attrs), [TensorType(tuple(shape), dtype)])
    return op.infer(ctx)


def test_swiglu_is_silu_of_first_half_times_second():
    x = torch.randn(2, 3, 8)
    a, b = x[..., :4], x[..., 4:]
    torch.testing.assert_close(apply("swiglu", {}, x), F.silu(a) * b)
    torch.testing.assert_close(apply("swiglu", {"axis": 1}, x.transpose(1, 2)),
                               (F.silu(a) * b).transpose(1, 2))


def test_glu_halves_the_gated_axis_symbolically():
    assert infer("glu", {}, B, 5, 6) == [TensorType((B, 5, 3))]
    assert infer("glu", {"axis": -2}, B, 4, 3) == [TensorType((B, 2, 3))]
    x = torch.randn(2, 6)
    torch.testing.assert_close(apply("glu", {}, x), x[:, :3] * torch.sigmoid(x[:, 3:]))


@pytest.mark.parametrize("name", ["glu", "swiglu"])
def test_gated_units_need_an_even_static_axis(name):
    with pytest.raises(ShapeError, match=f"{name} splits axis -1 into two halves"):
        infer(name, {}, 2, 5)
    with pytest.raises(ShapeError, match="must be even") as err:
        infer(name, {"axis": 0}, B, 4)
    assert err.value.found == "[B, 4]"


def test_softmax_axis_and_range():
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(apply("softmax", {"axis": 1}, x).sum(1), torch.ones(2, 4))
    torch.testing.assert_close(apply("log_softmax", {}, x), torch.log_softmax(x, -1))
    with pytest.raises(ShapeError, match="axis 3 is out of range for a rank-3 tensor"):
        infer("softmax", {"axis": 3}, 2, 3, 4)


def test_attribute_kwargs_reach_torch():
    x = torch.randn(4, 5)
    torch.testing.assert_close(apply("gelu", {"approximate": "tanh"}, x), F.gelu(x, approximate="tanh"))
    torch.testing.assert_close(apply("leaky_relu", {"slope": 0.2}, x), F.leaky_relu(x, 0.2))
    torch.testing.assert_close(apply("elu", {"alpha": 0.5}, x), F.elu(x, 0.5))
    torch.testing.assert_close(apply("softplus", {"beta": 2, "threshold": 5}, x), F.softplus(x, 2.0, 5.0))


def test_bad_attributes_and_dtypes():
    with pytest.raises(SpecError, match="unsupported value") as err:
        get_op("gelu").validate_attrs({"approximate": "tan"})
    assert "did you mean 'tanh'" in err.value.hint
    with pytest.raises(SpecError, match="softplus needs a positive beta"):
        get_op("softplus").validate_attrs({"beta": 0})
    with pytest.raises(ShapeError, match="relu input must be a floating-point tensor"):
        infer("relu", {}, 2, 3, dtype="int64")


def test_flop_costs():
    op = get_op("gelu")
    for approximate, cost in (("none", 5), ("tanh", 9)):
        ctx = OpContext(op.validate_attrs({"approximate": approximate}), [TensorType((2, 3))])
        ctx.outputs = op.infer(ctx)
        assert op.flops(ctx) == 6 * cost
    op = get_op("swiglu")
    ctx = OpContext(op.validate_attrs({}), [TensorType((2, 8))])
    ctx.outputs = op.infer(ctx)
    assert op.flops(ctx) == 8 * 6
