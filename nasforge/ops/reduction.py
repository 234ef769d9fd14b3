"""Reductions over axes: ``mean``, ``sum`` and ``max`` (values only).

``axes`` is one axis or a list of distinct axes (negative counts from the end); ``keepdim`` keeps the
reduced axes with size 1. FLOP convention: one FLOP per input element (an add or a comparison), plus
one per output element for the division of ``mean``. MACs are 0; torch's FlopCounterMode counts none.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch

from nasforge.errors import SpecError
from nasforge.ops.registry import (Attr, Call, Example, OpContext, OpDef, normalize_axis, register,
                                   require_float)
from nasforge.types import FLOAT_DTYPES, TensorType


class Reduction(OpDef):
    """Base of reductions: ``fn(x, dim=axes, keepdim=keepdim)``."""

    category = "reduction"
    attrs = (
        Attr("axes", "int|ints", doc="the axis or axes to reduce"),
        Attr("keepdim", "bool", False, "keep reduced axes with size 1"),
    )
    fn: ClassVar[Callable[..., torch.Tensor]]
    examples = (
        Example({"axes": [2, 3]}, [(2, 3, 4, 5)]),
        Example({"axes": -1, "keepdim": True}, [(2, 3, 4)]),
        Example({"axes": [1, -1], "keepdim": True}, [(2, 3, 4)]),
        Example({"axes": 0, "keepdim": True}, [(2, 3)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        if attrs["axes"] == []:
            raise SpecError(f"{self.name} needs at least one axis", expected="an axis or a non-empty list",
                            found="[]")

    def reduced_axes(self, ctx: OpContext) -> list[int]:
        """The axes as non-negative indices, checked to be in range and distinct."""
        axes = ctx["axes"] if isinstance(ctx["axes"], list) else [ctx["axes"]]
        if ctx.x.rank == 0:
            raise ctx.fail(f"{self.name} cannot reduce a 0-d tensor", expected="rank >= 1", found=str(ctx.x))
        resolved = [normalize_axis(ctx, a, ctx.x.rank) for a in axes]
        if len(set(resolved)) != len(resolved):
            raise ctx.fail(f"{self.name} names an axis twice", expected="distinct axes",
                           found=f"axes {axes} on a rank-{ctx.x.rank} tensor")
        return resolved

    def out_dtype(self, ctx: OpContext) -> str:
        """The result dtype; default: the input's."""
        return ctx.x.dtype

    def infer(self, ctx: OpContext) -> list[TensorType]:
        axes = self.reduced_axes(ctx)
        if ctx["keepdim"]:
            shape = tuple(1 if i in axes else d for i, d in enumerate(ctx.x.shape))
        else:
            shape = tuple(d for i, d in enumerate(ctx.x.shape) if i not in axes)
        return [TensorType(shape, self.out_dtype(ctx))]

    def flops(self, ctx: OpContext) -> int:
        return ctx.x.numel()

    def lower(self, ctx: OpContext) -> Call:
        return Call(self.fn, kwargs={"dim": ctx["axes"], "keepdim": ctx["keepdim"]})


@register
class Mean(Reduction):
    """Arithmetic mean over ``axes`` of a floating tensor (e.g. ``axes: [2, 3]`` is global average
    pooling of ``[B, C, H, W]``)."""

    name = "mean"
    fn = staticmethod(torch.mean)

    def out_dtype(self, ctx: OpContext) -> str:
        require_float(ctx, ctx.x, f"{self.name} input")
        return ctx.x.dtype

    def flops(self, ctx: OpContext) -> int:
        return ctx.x.numel() + ctx.outputs[0].numel()


@register
class Sum(Reduction):
    """Sum over ``axes``; integer and bool inputs sum to int64, as in torch."""

    name = "sum"
    fn = staticmethod(torch.sum)
    examples = Reduction.examples + (Example({"axes": 1}, [((2, 3), "bool")]),)

    def out_dtype(self, ctx: OpContext) -> str:
        return ctx.x.dtype if ctx.x.dtype in FLOAT_DTYPES else "int64"


@register
class Max(Reduction):
    """Maximum over ``axes`` (values only, ``torch.amax``; no indices)."""

    name = "max"
    fn = staticmethod(torch.amax)
    examples = Reduction.examples + (Example({"axes": [0, 1]}, [((2, 3), "int32")]),)
