"""Element-wise arithmetic: binary ops with broadcasting (or one tensor and a constant) and unary math.

FLOP convention: one FLOP per output element per arithmetic step (``clamp`` with both bounds counts
two). Output dtypes follow torch's type promotion; ``div`` is true division, so integers give float32.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, ClassVar

import torch

from nasforge.errors import SpecError
from nasforge.ops.registry import (Attr, Call, Example, OpContext, OpDef, broadcast_shapes, register,
                                   require_float)
from nasforge.types import TensorType


def _probe(t: TensorType) -> torch.Tensor:
    """An empty tensor of ``t``'s rank and dtype, for torch's own type-promotion rules (which treat
    0-d tensors like Python scalars)."""
    return torch.empty((0,) * t.rank, dtype=getattr(torch, t.dtype))


class BinaryOp(OpDef):
    """Base of ``a <op> b``: two tensors with NumPy broadcasting, or one tensor and the ``scalar``
    attribute as the right operand. One FLOP per output element."""

    category = "elementwise"
    arity = (1, 2)
    attrs = (Attr("scalar", "float|none", None, "the right operand as a constant (one input only)"),)
    fn: ClassVar[Callable[[Any, Any], Any]] = staticmethod(operator.add)
    bool_ok: ClassVar[bool] = True
    """Whether torch accepts bool operands."""
    true_division: ClassVar[bool] = False
    """Whether integer results become float32 (``/`` in torch)."""
    examples = (
        Example({}, [(2, 3, 4), (2, 3, 4)]),
        Example({}, [(2, 3, 4), (3, 1)]),
        Example({"scalar": 0.5}, [(2, 3)]),
        Example({}, [((2, 3), "int64"), (3,)]),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        a, scalar = ctx.x, ctx["scalar"]
        if len(ctx.inputs) == 2:
            if scalar is not None:
                raise SpecError(f"op {self.name!r} takes `scalar` only with a single input",
                                expected="two inputs, or one input and `scalar`",
                                found=f"two inputs and scalar={scalar!r}")
            b = ctx.inputs[1]
            shape = broadcast_shapes(ctx, a.shape, b.shape)
            dtype = torch.result_type(_probe(a), _probe(b))
        else:
            if scalar is None:
                raise SpecError(f"op {self.name!r} with one input needs the `scalar` attribute",
                                expected="two inputs, or one input and `scalar`", found="one input, no scalar")
            b = None
            shape = a.shape
            dtype = torch.result_type(_probe(a), scalar)
        if not self.bool_ok and any(t is not None and t.dtype == "bool" for t in (a, b)):
            raise ctx.fail(f"{self.name} does not take bool tensors", expected="numeric inputs",
                           found=", ".join(str(t) for t in ctx.inputs), hint="use logical ops on masks")
        if self.true_division and not dtype.is_floating_point:
            dtype = torch.get_default_dtype()
        return [TensorType(shape, str(dtype).removeprefix("torch."))]

    def flops(self, ctx: OpContext) -> int:
        return ctx.outputs[0].numel()

    def lower(self, ctx: OpContext) -> Call:
        scalar = ctx["scalar"]
        return Call(self.fn, () if scalar is None else (scalar,))


@register
class Add(BinaryOp):
    """``a + b`` with broadcasting (residual connections), or ``x + scalar``."""

    name = "add"
    fn = staticmethod(operator.add)


@register
class Sub(BinaryOp):
    """``a - b`` with broadcasting, or ``x - scalar``. Bool tensors are rejected, as in torch."""

    name = "sub"
    fn = staticmethod(operator.sub)
    bool_ok = False


@register
class Mul(BinaryOp):
    """``a * b`` with broadcasting (gating, scaling), or ``x * scalar``."""

    name = "mul"
    fn = staticmethod(operator.mul)


@register
class Div(BinaryOp):
    """``a / b`` (true division) with broadcasting, or ``x / scalar``; integer inputs give float32."""

    name = "div"
    fn = staticmethod(operator.truediv)
    true_division = True
    examples = BinaryOp.examples + (Example({}, [((2, 3), "int64"), ((2, 1), "int64")], int_high=5),)


class UnaryOp(OpDef):
    """Base of element-wise ``fn(x)``: same shape and dtype, one FLOP per element."""

    category = "elementwise"
    fn: ClassVar[Callable[..., torch.Tensor]]
    float_only: ClassVar[bool] = True
    """Whether the input must be floating point (else any non-bool numeric dtype)."""
    examples = (
        Example({}, [(2, 3, 4)]),
        Example({}, [(5,)]),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        if self.float_only:
            require_float(ctx, ctx.x, f"{self.name} input")
        elif ctx.x.dtype == "bool":
            raise ctx.fail(f"{self.name} does not take bool tensors", expected="a numeric tensor",
                           found=str(ctx.x))
        return [ctx.x]

    def steps(self, ctx: OpContext) -> int:
        """FLOPs per element."""
        return 1

    def flops(self, ctx: OpContext) -> int:
        return self.steps(ctx) * ctx.outputs[0].numel()

    def lower(self, ctx: OpContext) -> Call:
        return Call(self.fn)


@register
class Neg(UnaryOp):
    """``-x`` (integers allowed)."""

    name = "neg"
    fn = staticmethod(torch.neg)
    float_only = False
    examples = UnaryOp.examples + (Example({}, [((2, 3), "int64")]),)


@register
class Abs(UnaryOp):
    """``|x|`` (integers allowed)."""

    name = "abs"
    fn = staticmethod(torch.abs)
    float_only = False
    examples = UnaryOp.examples + (Example({}, [((2, 3), "int32")]),)


@register
class Sqrt(UnaryOp):
    """Square root of a floating tensor (negative entries give NaN)."""

    name = "sqrt"
    fn = staticmethod(torch.sqrt)


@register
class Exp(UnaryOp):
    """``e ** x`` of a floating tensor."""

    name = "exp"
    fn = staticmethod(torch.exp)


@register
class Log(UnaryOp):
    """Natural logarithm of a floating tensor (non-positive entries give NaN or -inf)."""

    name = "log"
    fn = staticmethod(torch.log)


@register
class Pow(UnaryOp):
    """``x ** exponent`` with a constant exponent, on a floating tensor (one FLOP per element)."""

    name = "pow"
    attrs = (Attr("exponent", "float", doc="the constant exponent"),)
    fn = staticmethod(torch.pow)
    examples = (
        Example({"exponent": 2}, [(2, 3, 4)]),
        Example({"exponent": 0.5}, [((3, 5), "float64")]),
    )

    def lower(self, ctx: OpContext) -> Call:
        return Call(torch.pow, (ctx["exponent"],))


@register
class Clamp(UnaryOp):
    """Clip a floating tensor to ``[min, max]``; either bound may be omitted, not both.
    One FLOP per element per bound."""

    name = "clamp"
    attrs = (
        Attr("min", "float|none", None, "lower bound (none: unbounded below)"),
        Attr("max", "float|none", None, "upper bound (none: unbounded above)"),
    )
    fn = staticmethod(torch.clamp)
    examples = (
        Example({"min": 0.0, "max": 6.0}, [(2, 3, 4)]),
        Example({"max": 1}, [(5,)]),
        Example({"min": -1.0}, [(2, 5)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        lo, hi = attrs["min"], attrs["max"]
        if lo is None and hi is None:
            raise SpecError("clamp needs at least one bound", expected="`min`, `max` or both", found="neither")
        if lo is not None and hi is not None and lo > hi:
            raise SpecError("clamp bounds are reversed", expected="min <= max", found=f"min={lo}, max={hi}")

    def steps(self, ctx: OpContext) -> int:
        return sum(ctx[b] is not None for b in ("min", "max"))

    def lower(self, ctx: OpContext) -> Call:
        return Call(torch.clamp, kwargs={b: ctx[b] for b in ("min", "max") if ctx[b] is not None})
