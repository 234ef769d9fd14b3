"""Dense linear algebra: ``linear`` (a fully connected layer on the last axis)."""

from __future__ import annotations

from nasforge.ops.registry import Attr, Example, OpContext, OpDef, nn, prod, register, require_positive
from nasforge.types import TensorType


@register
class Linear(OpDef):
    """``y = x W^T + b`` on the last axis; any leading axes are batch axes."""

    name = "linear"
    category = "linear"
    attrs = (
        Attr("out", "int", doc="output features"),
        Attr("bias", "bool", True, "add a learned bias"),
    )
    flop_counted = True
    examples = (
        Example({"out": 7}, [(2, 5)]),
        Example({"out": 3, "bias": False}, [(2, 4, 6)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "out")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        if ctx.x.rank < 1:
            raise ctx.fail("linear needs at least a 1-D input", expected="rank >= 1", found=str(ctx.x))
        if not isinstance(ctx.x.shape[-1], int):
            raise ctx.fail("linear needs a static feature axis", expected="an integer last dimension",
                           found=str(ctx.x))
        return [ctx.x.with_shape(ctx.x.shape[:-1] + (ctx["out"],))]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        p = {"weight": (ctx["out"], ctx.x.shape[-1])}
        if ctx["bias"]:
            p["bias"] = (ctx["out"],)
        return p

    def macs(self, ctx: OpContext) -> int:
        return prod(ctx.outputs[0].concrete_shape()) * ctx.x.shape[-1]

    def lower(self, ctx: OpContext) -> nn.Module:
        return nn.Linear(ctx.x.shape[-1], ctx["out"], bias=ctx["bias"])

