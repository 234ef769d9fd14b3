"""Vector quantization: ``vector_quantize``, the codebook bottleneck of VQ-VAE and VQGAN.

Each feature vector (the channel axis of ``[B, C, H, W]`` with ``channels_first``, the last axis otherwise)
is replaced by its nearest codebook entry in L2 distance. The forward value is the code; the gradient is the
straight-through estimator of VQ-VAE (van den Oord et al., NeurIPS 2017): ``x + (q - x).detach()``, so the
encoder receives the decoder's gradient unchanged and the codebook gets none through this path.

Training losses are not part of the op: the codebook loss ``||sg[x] - q||^2`` and the commitment loss
``beta * ||x - sg[q]||^2`` (VQ-VAE's Eq. 3; taming-transformers' VectorQuantizer2 by default puts ``beta``
on the codebook term instead, its "legacy" behaviour), EMA codebook updates, codebook restarts and
perplexity are computed by a training loop from the op's two outputs (the quantized tensor and the code
indices) and the codebook parameter ``embedding.weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nasforge.ops.registry import (Attr, Example, OpContext, OpDef, nn, register, require_float,
                                   require_positive)
from nasforge.types import Dim, TensorType, is_static


class VectorQuantizer(nn.Module):
    """Nearest-code quantization with a straight-through gradient; the codebook is ``embedding``
    (an ``nn.Embedding(codes, dim)``, as taming-transformers' ``quantize.embedding``).

    Returns ``(quantized, indices)``: ``quantized`` has the input's shape, ``indices`` (int64) the input's
    shape without the channel axis. Distances are ``|x|^2 + |e|^2 - 2 x.e`` (one matmul), as the reference.
    """

    def __init__(self, codes: int, dim: int, channels_first: bool = False) -> None:
        super().__init__()
        self.channels_first = channels_first
        self.embedding = nn.Embedding(codes, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codes, 1.0 / codes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # non-negative axes (ONNX Runtime refuses a Transpose with negative ones)
        z = x.movedim(1, x.dim() - 1) if self.channels_first else x
        codebook = self.embedding.weight
        flat = z.reshape(-1, codebook.shape[1])
        distances = (flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)
                     - 2.0 * torch.mm(flat, codebook.t()))
        indices = distances.argmin(1)
        quantized = F.embedding(indices, codebook).view(z.shape)
        quantized = z + (quantized - z).detach()
        if self.channels_first:
            quantized = quantized.movedim(quantized.dim() - 1, 1)
        return quantized, indices.view(z.shape[:-1])

    def extra_repr(self) -> str:
        return f"channels_first={self.channels_first}"


@register
class VectorQuantize(OpDef):
    """Vector quantization against a learned codebook (VQ-VAE, VQGAN): two outputs, the quantized tensor
    (the input's shape) and the int64 code indices (the input's shape without the channel axis).

    The channel axis is axis 1 with ``channels_first`` (``[B, C, H, W] -> [B, C, H, W]`` and ``[B, H, W]``)
    and the last axis otherwise (``[B, N, C] -> [B, N, C]`` and ``[B, N]``); its size is the code width
    ``dim``. Each vector is replaced by the codebook row nearest in L2 distance (first index on ties);
    the gradient passes straight through (``x + (q - x).detach()``). Parameter ``embedding.weight``
    ``[codes, dim]`` (taming-transformers' ``quantize.embedding.weight``). Commitment / codebook losses are
    training concerns computed outside the op (module docstring). MACs: the distance matmul,
    ``N * codes * dim`` for N vectors (torch's FlopCounterMode counts it); FLOPs add the squared norms,
    the distance sums and the straight-through arithmetic.
    """

    name = "vector_quantize"
    category = "quantization"
    attrs = (
        Attr("codes", "int", doc="codebook size (number of code vectors)"),
        Attr("dim", "int|none", None, "code width; None: the input's channel count (given: must equal it)"),
        Attr("channels_first", "bool", False, "channels on axis 1 ([B, C, H, W]) instead of the last axis"),
    )
    flop_counted = True
    examples = (
        Example({"codes": 16, "channels_first": True}, [(2, 8, 4, 4)]),
        Example({"codes": 7, "dim": 6}, [(2, 5, 6)]),
        Example({"codes": 3}, [(2, 4)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "codes", "dim")

    @staticmethod
    def _axis(ctx: OpContext) -> int:
        return 1 if ctx["channels_first"] else ctx.x.rank - 1

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        require_float(ctx, x)
        if ctx["channels_first"] and x.rank < 2:
            raise ctx.fail("vector_quantize with channels_first needs [B, C, ...] features",
                           expected="rank >= 2", found=str(x))
        if x.rank < 1:
            raise ctx.fail("vector_quantize needs a channel axis", expected="rank >= 1", found=str(x))
        axis = self._axis(ctx)
        channels = x.shape[axis]
        if not is_static(channels):
            raise ctx.fail("vector_quantize needs a static channel axis",
                           expected=f"an integer size on axis {axis}", found=str(x))
        if ctx["dim"] is not None and channels != ctx["dim"]:
            where = "axis 1 (channels_first)" if ctx["channels_first"] else "the last axis"
            raise ctx.fail("the input's channels do not match the code width",
                           expected=f"{ctx['dim']} channels on {where}", found=str(x))
        indices: tuple[Dim, ...] = x.shape[:axis] + x.shape[axis + 1:]
        return [x, TensorType(indices, "int64")]

    def _sizes(self, ctx: OpContext) -> tuple[int, int, int]:
        """``(N vectors, codes, dim)`` on concrete shapes."""
        dim = ctx.x.shape[self._axis(ctx)]
        return ctx.x.numel() // dim, ctx["codes"], dim

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        return {"embedding.weight": (ctx["codes"], ctx.x.shape[self._axis(ctx)])}

    def macs(self, ctx: OpContext) -> int:
        n, codes, dim = self._sizes(ctx)
        return n * codes * dim

    def flops(self, ctx: OpContext) -> int:
        n, codes, dim = self._sizes(ctx)
        norms = 2 * (n + codes) * dim            # squares and sums of |x|^2 and |e|^2
        assemble = 2 * n * codes                 # |x|^2 + |e|^2 - 2 x.e (the scaling folds into the sum)
        straight_through = 2 * n * dim           # x + (q - x)
        return 2 * self.macs(ctx) + norms + assemble + straight_through

    def lower(self, ctx: OpContext) -> nn.Module:
        return VectorQuantizer(ctx["codes"], ctx.x.shape[self._axis(ctx)], ctx["channels_first"])


__all__ = ["VectorQuantize", "VectorQuantizer"]
