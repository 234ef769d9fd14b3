"""Simulated (fake) quantization: ``fake_quantize``, the k-bit integer grid of quantization-aware search.

Mixed-precision NAS (SimQ-NAS, HAQ, APQ) decides a bit-width per layer and scores a candidate by the
accuracy of its quantized form. ``fake_quantize`` puts a tensor on the grid an integer kernel would use
(quantize to ``bits``-bit integers, dequantize back to float) so that the float graph computes what the
quantized network computes, and passes gradients straight through so the network can be trained or
fine-tuned under that policy.

The range is the tensor's own (dynamic quantization): the maximum magnitude (symmetric) or the
minimum and maximum (asymmetric), over the whole tensor or per channel. A learned or calibrated
range (LSQ, observers) is a training concern; the op keeps no state, so the same graph serves every
decision of a bit-width search without calibration passes.
"""

from __future__ import annotations

import torch

from nasforge.errors import SpecError
from nasforge.ops.registry import Attr, Call, Example, OpContext, OpDef, normalize_axis, register, require_float
from nasforge.types import TensorType

MIN_BITS, MAX_BITS = 2, 16
"""Bit-widths the op simulates: below 2 the symmetric grid has no nonzero level, above 16 float32's
24-bit mantissa no longer represents every level of a tensor's range exactly."""


def fake_quantize(x: torch.Tensor, bits: int, symmetric: bool = True, per_channel: bool = False,
                  axis: int = 1) -> torch.Tensor:
    """``x`` rounded to the ``bits``-bit grid of its own range, with a straight-through gradient.

    Symmetric: levels ``-(2^(b-1) - 1) .. 2^(b-1) - 1`` times ``scale = max|x| / (2^(b-1) - 1)``, zero
    point 0 (the narrow range of TensorRT and Intel's INT8 weights, so the grid is symmetric about 0).
    Asymmetric: levels ``0 .. 2^b - 1``, ``scale = (hi - lo) / (2^b - 1)`` over ``[lo, hi]`` = the range
    widened to include 0 (as PyTorch's observers, so that 0 is exact), zero point
    ``round(-lo / scale)``. Per channel, the range is taken separately for each index along ``axis``.
    The forward value is the dequantized tensor; the gradient is the identity (``x + (q - x).detach()``,
    the straight-through estimator of Bengio et al. 2013), which is exact inside the range and the
    range is the tensor's own, so nothing is clipped.
    """
    dims = [d for d in range(x.dim()) if d != axis % x.dim()] if per_channel else list(range(x.dim()))
    tiny = torch.finfo(x.dtype).eps
    if symmetric:
        levels = 2 ** (bits - 1) - 1
        scale = x.abs().amax(dim=dims, keepdim=True).clamp_min(tiny) / levels
        q = torch.clamp(torch.round(x / scale), -levels, levels) * scale
    else:
        levels = 2 ** bits - 1
        lo = x.amin(dim=dims, keepdim=True).clamp_max(0)
        hi = x.amax(dim=dims, keepdim=True).clamp_min(0)
        scale = (hi - lo).clamp_min(tiny) / levels
        zero_point = torch.round(-lo / scale)
        q = (torch.clamp(torch.round(x / scale) + zero_point, 0, levels) - zero_point) * scale
    return x + (q - x).detach()


@register
class FakeQuantize(OpDef):
    """Simulated ``bits``-bit integer quantization of a floating tensor (quantize, then dequantize),
    with a straight-through gradient: the input's shape and dtype.

    ``symmetric``: a grid symmetric about zero over ``max|x|`` (the usual choice for weights);
    otherwise an affine grid with a zero point over ``[min(x, 0), max(x, 0)]`` (the usual choice for
    activations after ReLU). ``per_channel``: one range per index along ``axis`` (1 for ``[B, C, ...]``
    feature maps, -1 for ``[B, N, C]`` tokens); otherwise one range for the whole tensor (batch
    included, as dynamic per-tensor quantization). No parameters, no MACs. FLOPs per element: the
    range reduction 2 (abs and max, or min and max), the quantize-dequantize arithmetic 5 symmetric
    (divide, round, two clamps, multiply) or 7 asymmetric (plus adding and removing the zero point),
    and the straight-through form 2 (subtract, add).
    """

    name = "fake_quantize"
    category = "quantization"
    attrs = (
        Attr("bits", "int", doc=f"bit-width of the integer grid ({MIN_BITS}..{MAX_BITS})"),
        Attr("symmetric", "bool", True, "grid symmetric about zero (no zero point)"),
        Attr("per_channel", "bool", False, "one range per index along `axis` instead of one per tensor"),
        Attr("axis", "int", 1, "the channel axis of per-channel quantization"),
    )
    examples = (
        Example({"bits": 8}, [(2, 3, 4, 4)]),
        Example({"bits": 4, "symmetric": False, "per_channel": True}, [(2, 5, 3, 3)]),
        Example({"bits": 3, "per_channel": True, "axis": -1}, [((2, 7, 6), "float64")]),
    )

    def check_attrs(self, attrs: dict) -> None:
        if not MIN_BITS <= attrs["bits"] <= MAX_BITS:
            raise SpecError("attribute 'bits' is out of range", expected=f"an integer in {MIN_BITS}..{MAX_BITS}",
                            found=repr(attrs["bits"]), key="bits",
                            hint="leave a layer at full precision by not quantizing it" if attrs["bits"] > MAX_BITS
                            else None)

    def infer(self, ctx: OpContext) -> list[TensorType]:
        require_float(ctx, ctx.x, "fake_quantize input")
        if ctx["per_channel"]:
            normalize_axis(ctx, ctx["axis"], ctx.x.rank)
        return [ctx.x]

    def flops(self, ctx: OpContext) -> int:
        per_element = 2 + (5 if ctx["symmetric"] else 7) + 2
        return per_element * ctx.x.numel()

    def lower(self, ctx: OpContext) -> Call:
        return Call(fake_quantize, kwargs={"bits": ctx["bits"], "symmetric": ctx["symmetric"],
                                           "per_channel": ctx["per_channel"], "axis": ctx["axis"]})


__all__ = ["FakeQuantize", "fake_quantize"]
