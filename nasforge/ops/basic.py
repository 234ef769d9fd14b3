"""Structural basics: ``identity`` (skip connections) and ``zero`` (the DARTS ``none`` candidate)."""

from __future__ import annotations

import torch

from nasforge.ops.registry import Attr, Call, Example, OpContext, OpDef, nn, register, require_positive
from nasforge.types import TensorType, dim_str, is_static


@register
class Identity(OpDef):
    """The input unchanged (a skip connection, or a placeholder in a search space)."""

    name = "identity"
    category = "basic"
    examples = (
        Example({}, [(2, 3, 4)]),
        Example({}, [((2, 5), "int64")]),
    )

    def lower(self, ctx: OpContext) -> nn.Module:
        return nn.Identity()


def zero(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Zeros shaped like ``x[:, :, ::stride, ::stride, ...]`` (every axis from 2 on subsampled), same dtype."""
    index = (slice(None), slice(None)) + (slice(None, None, stride),) * (x.dim() - 2)
    return torch.zeros_like(x[index])


@register
class Zero(OpDef):
    """Zeros shaped like the input (the DARTS ``none`` op, which removes an edge); with ``stride`` > 1 the
    axes from 2 on (the spatial axes of ``[N, C, *spatial]``) shrink as ``x[..., ::s, ::s]`` does, to
    ``ceil(size / stride)``, so it can stand in for a strided candidate. The output does not depend on
    the input's values, so no gradient flows back through it."""

    name = "zero"
    category = "basic"
    attrs = (Attr("stride", "int", 1, "subsampling of the spatial axes"),)
    examples = (
        Example({}, [(2, 3, 4, 4)]),
        Example({"stride": 2}, [(2, 3, 5, 4)]),
        Example({"stride": 3}, [((2, 3, 7), "int64")]),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "stride")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x, s = ctx.x, ctx["stride"]
        if s == 1:
            return [x]
        if x.rank < 3:
            raise ctx.fail("zero with a stride needs spatial axes", expected="a [N, C, *spatial] input",
                           found=str(x))
        spatial = x.shape[2:]
        if not all(is_static(d) for d in spatial):
            raise ctx.fail("zero with a stride needs static spatial sizes", expected="integer spatial axes",
                           found=", ".join(dim_str(d) for d in spatial) + f" in {x}")
        return [x.with_shape(x.shape[:2] + tuple(-(-int(d) // s) for d in spatial))]

    def lower(self, ctx: OpContext) -> Call:
        return Call(zero, (ctx["stride"],))
