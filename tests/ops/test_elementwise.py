"""Element-wise entries beyond the generic harness: scalar forms, dtype promotion and bad inputs."""

from __future__ import annotations

import operator

import pytest
import torch

from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.registry import OpContext
from nasforge.types import Sym, TensorType

B = Sym.of("B")


def infer(name: str, attrs: dict, *inputs: TensorType) -> list[TensorType]:
    op = get_op(name)
    op.check_arity(len(inputs))
    return op.infer(OpContext(op.validate_attrs(attrs), list(inputs)))


def t(*shape, dtype: str = "float32") -> TensorType:
    return TensorType(tuple(shape), dtype)


def test_broadcasting_is_symbolic_and_reports_both_operands():
    assert infer("mul", {}, t(B, 1, 4), t(3, 1)) == [t(B, 3, 4)]
    with pytest.raises(ShapeError, match="do not broadcast") as err:
        infer("sub", {}, t(B, 3, 4), t(5, 4))
    assert err.value.found == "[B, 3, 4] and [5, 4]"


@pytest.mark.parametrize("name,fn", [("add", operator.add), ("sub", operator.sub),
                                     ("mul", operator.mul), ("div", operator.truediv)])
def test_scalar_form_lowers_to_the_operator(name, fn):
    op = get_op(name)
    ctx = OpContext(op.validate_attrs({"scalar": 4}), [t(2, 3)])
    ctx.outputs = op.infer(ctx)
    call = op.lower(ctx)
    x = torch.randn(2, 3)
    torch.testing.assert_close(call.fn(x, *call.args), fn(x, 4.0))


def test_scalar_needs_exactly_one_input():
    with pytest.raises(SpecError, match="'add' takes `scalar` only with a single input"):
        infer("add", {"scalar": 1.0}, t(2, 3), t(2, 3))
    with pytest.raises(SpecError, match="'mul' with one input needs the `scalar` attribute"):
        infer("mul", {}, t(2, 3))
    with pytest.raises(SpecError, match="takes 1 to 2 input"):
        infer("add", {}, t(2), t(2), t(2))


def test_dtype_promotion_follows_torch():
    assert infer("add", {}, t(2, 3, dtype="int64"), t(3))[0].dtype == "float32"
    assert infer("mul", {}, t(2, 3, dtype="float16"), t(dtype="float32"))[0].dtype == "float16"
    assert infer("div", {}, t(2, 3, dtype="int64"), t(3, dtype="int32"))[0].dtype == "float32"
    assert infer("mul", {"scalar": 2}, t(2, dtype="int64"))[0].dtype == "float32"
    assert infer("add", {}, t(2, dtype="bool"), t(2, dtype="bool"))[0].dtype == "bool"
    with pytest.raises(ShapeError, match="sub does not take bool tensors"):
        infer("sub", {}, t(2, dtype="bool"), t(2))


def test_unary_dtypes():
    assert infer("abs", {}, t(B, 3, dtype="int32")) == [t(B, 3, dtype="int32")]
    with pytest.raises(ShapeError, match="neg does not take bool tensors"):
        infer("neg", {}, t(2, dtype="bool"))
    with pytest.raises(ShapeError, match="sqrt input must be a floating-point tensor"):
        infer("sqrt", {}, t(2, dtype="int64"))


def test_clamp_bounds():
    with pytest.raises(SpecError, match="clamp needs at least one bound"):
        get_op("clamp").validate_attrs({})
    with pytest.raises(SpecError, match="clamp bounds are reversed"):
        get_op("clamp").validate_attrs({"min": 2, "max": 1})
    op = get_op("clamp")
    ctx = OpContext(op.validate_attrs({"max": 6}), [t(2, 3)])
    ctx.outputs = op.infer(ctx)
    call = op.lower(ctx)
    assert dict(call.kwargs) == {"max": 6.0}
    assert op.flops(ctx) == 6


def test_pow_needs_an_exponent():
    with pytest.raises(SpecError, match="needs attribute 'exponent'"):
        get_op("pow").validate_attrs({})
    op = get_op("pow")
    call = op.lower(OpContext(op.validate_attrs({"exponent": 3}), [t(2)]))
    x = torch.randn(4)
    torch.testing.assert_close(call.fn(x, *call.args), x ** 3)
