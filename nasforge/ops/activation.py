"""Activations: point-wise nonlinearities, softmax-style normalizers over one axis, gated units.

Every activation takes a floating tensor and lowers to a plain torch function.

FLOP convention: FLOPs per output element = the arithmetic steps of the textbook formula, each
comparison, add, multiply, divide or transcendental function (exp, log, erf, tanh) counting one; the
entry's ``cost`` (or docstring) states it. Softmax counts the max-shift done for stability.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Mapping

import torch
import torch.nn.functional as F

from nasforge.errors import SpecError
from nasforge.ops.registry import (Attr, Call, Example, OpContext, OpDef, normalize_axis, register,
                                   require_float)
from nasforge.types import TensorType


def swiglu(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``silu(a) * b`` where ``a, b`` are the two halves of ``x`` along ``dim``."""
    a, b = x.chunk(2, dim=dim)
    return F.silu(a) * b


class Activation(OpDef):
    """Base of activations: ``fn(x, **kwargs)`` with the shape and dtype of a floating input."""

    category = "activation"
    fn: ClassVar[Callable[..., torch.Tensor]]
    kwargs: ClassVar[Mapping[str, str]] = {}
    """Attribute name -> keyword of ``fn`` it is passed as."""
    cost: ClassVar[int] = 1
    """FLOPs per output element."""
    examples = (
        Example({}, [(2, 3, 4)]),
        Example({}, [((2, 5), "float64")]),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        require_float(ctx, ctx.x, f"{self.name} input")
        return [ctx.x]

    def element_cost(self, ctx: OpContext) -> int:
        """FLOPs per output element (depends on attributes for some entries)."""
        return self.cost

    def flops(self, ctx: OpContext) -> int:
        return self.element_cost(ctx) * ctx.outputs[0].numel()

    def lower(self, ctx: OpContext) -> Call:
        return Call(self.fn, kwargs={kw: ctx[attr] for attr, kw in self.kwargs.items()})


@register
class ReLU(Activation):
    """``max(x, 0)``. 1 FLOP per element."""

    name = "relu"
    fn = staticmethod(torch.relu)


@register
class ReLU6(Activation):
    """``min(max(x, 0), 6)`` (MobileNet). 2 FLOPs per element."""

    name = "relu6"
    fn = staticmethod(F.relu6)
    cost = 2


@register
class GELU(Activation):
    """Gaussian error linear unit ``x * Phi(x)``; ``approximate='tanh'`` uses the tanh formula of
    GPT-2/BERT. 5 FLOPs per element exact (erf form), 9 with the tanh approximation."""

    name = "gelu"
    attrs = (Attr("approximate", "str", "none", "the exact erf form or the tanh approximation",
                  choices=("none", "tanh")),)
    fn = staticmethod(F.gelu)
    kwargs = {"approximate": "approximate"}
    examples = (
        Example({}, [(2, 3, 4)]),
        Example({"approximate": "tanh"}, [(2, 5)]),
    )

    def element_cost(self, ctx: OpContext) -> int:
        return 9 if ctx["approximate"] == "tanh" else 5


@register
class SiLU(Activation):
    """``x * sigmoid(x)`` (swish). 5 FLOPs per element."""

    name = "silu"
    fn = staticmethod(F.silu)
    cost = 5


@register
class Hardswish(Activation):
    """``x * relu6(x + 3) / 6`` (MobileNetV3). 5 FLOPs per element."""

    name = "hardswish"
    fn = staticmethod(F.hardswish)
    cost = 5


@register
class Hardsigmoid(Activation):
    """``relu6(x + 3) / 6`` (MobileNetV3 squeeze-excitation gate). 4 FLOPs per element."""

    name = "hardsigmoid"
    fn = staticmethod(F.hardsigmoid)
    cost = 4


@register
class Sigmoid(Activation):
    """``1 / (1 + exp(-x))``. 4 FLOPs per element."""

    name = "sigmoid"
    fn = staticmethod(torch.sigmoid)
    cost = 4


@register
class Tanh(Activation):
    """Hyperbolic tangent. 1 FLOP per element."""

    name = "tanh"
    fn = staticmethod(torch.tanh)


@register
class LeakyReLU(Activation):
    """``x if x >= 0 else slope * x``. 2 FLOPs per element."""

    name = "leaky_relu"
    attrs = (Attr("slope", "float", 0.01, "slope for negative inputs"),)
    fn = staticmethod(F.leaky_relu)
    kwargs = {"slope": "negative_slope"}
    cost = 2
    examples = (
        Example({}, [(2, 3, 4)]),
        Example({"slope": 0.2}, [(2, 5)]),
    )


@register
class ELU(Activation):
    """``x if x > 0 else alpha * (exp(x) - 1)``. 4 FLOPs per element."""

    name = "elu"
    attrs = (Attr("alpha", "float", 1.0, "scale of the negative saturation"),)
    fn = staticmethod(F.elu)
    kwargs = {"alpha": "alpha"}
    cost = 4
    examples = (
        Example({}, [(2, 3, 4)]),
        Example({"alpha": 0.5}, [(2, 5)]),
    )


@register
class Mish(Activation):
    """``x * tanh(softplus(x))``. 5 FLOPs per element."""

    name = "mish"
    fn = staticmethod(F.mish)
    cost = 5


@register
class Softplus(Activation):
    """``log(1 + exp(beta * x)) / beta``, linear (``x``) where ``beta * x > threshold``.
    5 FLOPs per element."""

    name = "softplus"
    attrs = (
        Attr("beta", "float", 1.0, "sharpness (> 0)"),
        Attr("threshold", "float", 20.0, "above beta * x > threshold the op is the identity"),
    )
    fn = staticmethod(F.softplus)
    kwargs = {"beta": "beta", "threshold": "threshold"}
    cost = 5
    examples = (
        Example({}, [(2, 3, 4)]),
        Example({"beta": 2, "threshold": 10}, [(2, 5)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        if attrs["beta"] <= 0:
            raise SpecError("softplus needs a positive beta", expected="beta > 0", found=repr(attrs["beta"]))


class AxisActivation(Activation):
    """Base of activations that act along one axis (``axis``, passed to torch as ``dim``)."""

    attrs = (Attr("axis", "int", -1, "the axis the op acts along"),)
    kwargs = {"axis": "dim"}
    examples = (
        Example({}, [(2, 3, 4)]),
        Example({"axis": 1}, [(2, 6, 4)]),
    )

    def checked_axis(self, ctx: OpContext) -> int:
        """Check the input and return ``axis`` as a non-negative index."""
        super().infer(ctx)
        return normalize_axis(ctx, ctx["axis"], ctx.x.rank)

    def infer(self, ctx: OpContext) -> list[TensorType]:
        self.checked_axis(ctx)
        return [ctx.x]


@register
class Softmax(AxisActivation):
    """``exp(x) / sum(exp(x))`` along ``axis``. 5 FLOPs per element (max, subtract, exp, sum, divide)."""

    name = "softmax"
    fn = staticmethod(torch.softmax)
    cost = 5


@register
class LogSoftmax(AxisActivation):
    """``x - log(sum(exp(x)))`` along ``axis``. 5 FLOPs per element (max, subtract, exp, sum, subtract)."""

    name = "log_softmax"
    fn = staticmethod(torch.log_softmax)
    cost = 5


class GatedActivation(AxisActivation):
    """Base of gated units: split ``axis`` into halves ``a, b`` and return ``a`` gated by ``b``,
    so the output has half the input's size on ``axis`` (which must be static and even)."""

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x, axis = ctx.x, self.checked_axis(ctx)
        size = x.shape[axis]
        if not isinstance(size, int) or size % 2:
            raise ctx.fail(f"{self.name} splits axis {ctx['axis']} into two halves, so it must be even",
                           expected="a static, even size on the gated axis", found=str(x))
        return [x.with_shape(x.shape[:axis] + (size // 2,) + x.shape[axis + 1:])]


@register
class GLU(GatedActivation):
    """Gated linear unit ``a * sigmoid(b)`` for halves ``a, b`` of ``axis`` (``x[..., :n/2]`` is ``a``).
    5 FLOPs per output element."""

    name = "glu"
    fn = staticmethod(F.glu)
    cost = 5


@register
class SwiGLU(GatedActivation):
    """``silu(a) * b`` for halves ``a, b`` of ``axis`` (LLaMA/PaLM feed-forward gate; the first half
    goes through silu). 6 FLOPs per output element."""

    name = "swiglu"
    fn = staticmethod(swiglu)
    cost = 6
