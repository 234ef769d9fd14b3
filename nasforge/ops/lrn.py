"""Local response normalization across channels (AlexNet, CaffeNet, GoogLeNet v1, LRCN's conv trunk).

``b_c = a_c / (k + alpha/size * sum_{c' in window(c)} a_{c'}^2) ** beta`` with a window of ``size`` channels
centred on ``c`` (zero beyond the edges), exactly ``nn.LocalResponseNorm`` and Caffe's ``LRN`` layer with
``norm_region: ACROSS_CHANNELS`` (both divide alpha by the window size). Caffe takes odd sizes only; an
even size follows torch (the window reaches ``size//2`` channels back and ``(size-1)//2`` forward).
No parameters, no MACs: torch's FlopCounterMode counts none (an average pool, powers and products).
FLOPs per element: the square, the ``size`` window terms, the scale and offset, the power and the
division, ``size + 5``.
"""

from __future__ import annotations

import torch.nn.functional as F

from nasforge.ops.registry import Attr, Call, Example, OpContext, OpDef, register, require_float, require_positive
from nasforge.types import TensorType


@register
class LocalResponseNorm(OpDef):
    """Local response normalization across channels of ``[N, C, *spatial]`` (``F.local_response_norm``):
    ``x / (k + alpha/size * sum of x^2 over size neighbouring channels) ** beta``. Caffe's and AlexNet's
    ``LRN`` (``local_size 5, alpha 1e-4, beta 0.75, k 1``) with the defaults. 0 MACs; ``size + 5`` FLOPs per
    element."""

    name = "local_response_norm"
    category = "normalization"
    attrs = (
        Attr("size", "int", 5, "channels in the window (centred; Caffe's local_size, odd there)"),
        Attr("alpha", "float", 1e-4, "scale of the sum of squares, divided by size"),
        Attr("beta", "float", 0.75, "exponent"),
        Attr("k", "float", 1.0, "additive constant"),
    )
    examples = (
        Example({}, [(2, 7, 4, 4)]),
        Example({"size": 2, "alpha": 0.5, "beta": 0.5, "k": 2.0}, [(2, 6, 5)]),
        Example({"size": 3}, [(2, 4, 2, 3, 3)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "size")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        if ctx.x.rank < 3:
            raise ctx.fail("local_response_norm takes a channels-first tensor [N, C, *spatial]",
                           expected="rank >= 3", found=str(ctx.x))
        require_float(ctx, ctx.x)
        return [ctx.x]

    def flops(self, ctx: OpContext) -> int:
        return ctx.outputs[0].numel() * (ctx["size"] + 5)

    def lower(self, ctx: OpContext) -> Call:
        return Call(F.local_response_norm, (ctx["size"],),
                    {"alpha": ctx["alpha"], "beta": ctx["beta"], "k": ctx["k"]})
