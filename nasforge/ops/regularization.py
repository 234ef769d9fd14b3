"""Regularization: ``dropout`` and ``drop_path`` (stochastic depth).

Both are train-only (``train_only = True``): the identity at inference, so passes may remove them and they
cost nothing in the (inference) FLOP count.
"""

from __future__ import annotations

import torch

from nasforge.errors import SpecError
from nasforge.ops.registry import Attr, Example, OpContext, OpDef, nn, register, require_float
from nasforge.types import TensorType


class DropPath(nn.Module):
    """Stochastic depth: in training, zero each sample (index on axis 0) with probability ``p`` and scale the
    kept ones by ``1 / (1 - p)``; the identity in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class TrainOnlyOp(OpDef):
    """Base of the family: a probability ``p`` in [0, 1), a floating input, the identity at inference."""

    category = "regularization"
    train_only = True

    def check_attrs(self, attrs: dict) -> None:
        if not 0.0 <= attrs["p"] < 1.0:
            raise SpecError(f"{self.name} probability out of range", expected="0 <= p < 1",
                            found=repr(attrs["p"]), key="p")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        require_float(ctx, ctx.x)
        return [ctx.x]


@register
class Dropout(TrainOnlyOp):
    """Dropout (``nn.Dropout``): in training, zero each element with probability ``p`` and scale the
    rest by ``1 / (1 - p)``; the identity in eval mode."""

    name = "dropout"
    attrs = (Attr("p", "float", 0.5, "probability of zeroing an element"),)
    examples = (
        Example({}, [(2, 3, 4)], train=True),
        Example({"p": 0.1}, [(2, 8)]),
    )

    def lower(self, ctx: OpContext) -> nn.Module:
        return nn.Dropout(ctx["p"])


@register
class DropPathOp(TrainOnlyOp):
    """Drop path / stochastic depth (on a residual branch): in training, zero whole samples with
    probability ``p`` and scale the kept ones by ``1 / (1 - p)``; the identity in eval mode."""

    name = "drop_path"
    attrs = (Attr("p", "float", doc="probability of dropping a sample's branch"),)
    examples = (
        Example({"p": 0.2}, [(2, 3, 4, 4)], train=True),
        Example({"p": 0.1}, [(2, 5, 8)]),
        Example({"p": 0.0}, [((3, 4), "float64")], train=True),
    )

    def lower(self, ctx: OpContext) -> nn.Module:
        return DropPath(ctx["p"])
