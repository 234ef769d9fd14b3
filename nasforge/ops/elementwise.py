"""Element-wise arithmetic: binary ops with broadcasting and unary math."""

from __future__ import annotations

import operator

import torch

from nasforge.ops.registry import (Attr, Call, Example, OpContext, OpDef, broadcast_shapes, register)
from nasforge.types import TensorType


class BinaryOp(OpDef):
    """Two tensors, NumPy broadcasting, one FLOP per output element."""

    category = "elementwise"
    arity = (2, 2)
    fn = staticmethod(operator.add)
    examples = (
        Example({}, [(2, 3, 4), (2, 3, 4)]),
        Example({}, [(2, 3, 4), (3, 1)]),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        a, b = ctx.inputs
        return [a.with_shape(broadcast_shapes(ctx, a.shape, b.shape))]

    def flops(self, ctx: OpContext) -> int:
        return ctx.outputs[0].numel()

    def lower(self, ctx: OpContext) -> Call:
        return Call(self.fn)


@register
class Add(BinaryOp):
    """``a + b`` with broadcasting (residual connections)."""

    name = "add"
    fn = staticmethod(operator.add)
