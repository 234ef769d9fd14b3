"""Resizing channels-first ``[N, C, *spatial]`` tensors: ``interpolate``, ``pixel_shuffle``, ``pixel_unshuffle``.

None has parameters or MACs. ``interpolate`` counts a multiply and an add per interpolation tap of every
output element (``2^nd`` taps for (bi/tri)linear, ``4^nd`` for bicubic, none for nearest, which copies);
the pixel shuffles only move data (0 FLOPs).
"""

from __future__ import annotations

import math
from typing import Any

import torch.nn.functional as F

from nasforge.errors import SpecError
from nasforge.ops.registry import Attr, Call, Example, OpContext, OpDef, register, require_float, require_positive
from nasforge.types import Dim, Sym, TensorType, dim_div

MODE_RANKS = {"nearest": (3, 4, 5), "linear": (3,), "bilinear": (4,), "bicubic": (4,), "trilinear": (5,)}
"""Input ranks each interpolation mode supports (1, 2 or 3 spatial axes)."""
MODE_TAPS = {"nearest": 0, "linear": 2, "bilinear": 2, "bicubic": 4, "trilinear": 2}
"""Interpolation taps per spatial axis."""


@register
class Interpolate(OpDef):
    """Resize the spatial axes to a fixed ``size`` or by a ``scale`` (output ``floor(in * scale)``, as torch).

    Give exactly one of ``size`` and ``scale``. Modes: nearest (any of 1-3 spatial axes), linear (3-D
    input), bilinear / bicubic (4-D), trilinear (5-D). FLOPs: see the module doc.
    """

    name = "interpolate"
    category = "resize"
    attrs = (
        Attr("size", "int|ints|none", None, "output spatial size (an int or one per spatial axis)"),
        Attr("scale", "float|floats|none", None, "scale factor (a number or one per spatial axis)"),
        Attr("mode", "str", "nearest", "interpolation method", choices=tuple(MODE_RANKS)),
        Attr("align_corners", "bool|none", None, "align corner pixels (only for the interpolating modes)"),
    )
    examples = (
        Example({"scale": 2}, [(2, 3, 4, 5)]),
        Example({"size": [6, 3], "mode": "bilinear", "align_corners": True}, [(2, 3, 4, 5)]),
        Example({"scale": [1.5, 0.5], "mode": "bicubic"}, [(1, 2, 5, 7)]),
        Example({"size": 9, "mode": "linear"}, [(2, 4, 6)]),
        Example({"scale": 1.7}, [(1, 2, 3)]),
        Example({"scale": 2.0, "mode": "trilinear", "align_corners": False}, [(1, 2, 2, 3, 4)]),
    )

    def check_attrs(self, attrs: dict[str, Any]) -> None:
        if (attrs["size"] is None) == (attrs["scale"] is None):
            raise SpecError("interpolate needs exactly one of 'size' and 'scale'",
                            expected="size: [H, W] or scale: 2.0",
                            found=f"size={attrs['size']!r}, scale={attrs['scale']!r}",
                            key=None if attrs["size"] is None else "scale")
        require_positive(attrs, "size")
        scale = attrs["scale"]
        if scale is not None and any(v <= 0 for v in (scale if isinstance(scale, list) else [scale])):
            raise SpecError("attribute 'scale' must be positive", expected="numbers > 0", found=repr(scale),
                            key="scale")
        if attrs["mode"] == "nearest" and attrs["align_corners"] is not None:
            raise SpecError("align_corners only applies to interpolating modes",
                            expected="mode linear, bilinear, bicubic or trilinear (or no align_corners)",
                            found="mode 'nearest' with align_corners", key="align_corners")

    def per_axis(self, ctx: OpContext, name: str) -> list[Any]:
        """``size`` or ``scale`` as one value per spatial axis."""
        value, nd = ctx[name], ctx.x.rank - 2
        if not isinstance(value, list):
            return [value] * nd
        if len(value) != nd:
            raise ctx.fail(f"interpolate {name} needs one value per spatial axis",
                           expected=f"{nd} values for input {ctx.x}", found=repr(value))
        return value

    def infer(self, ctx: OpContext) -> list[TensorType]:
        ranks = MODE_RANKS[ctx["mode"]]
        if ctx.x.rank not in ranks:
            raise ctx.fail(f"interpolate mode {ctx['mode']!r} needs a rank-{'/'.join(map(str, ranks))} input",
                           expected="[N, C, *spatial] with " + "/".join(str(r - 2) for r in ranks)
                           + " spatial axes", found=str(ctx.x))
        require_float(ctx, ctx.x, "interpolate input")
        if ctx["size"] is not None:
            out: list[Dim] = self.per_axis(ctx, "size")
        else:
            out = [self.scaled(ctx, axis, size, scale) for axis, (size, scale) in
                   enumerate(zip(ctx.x.shape[2:], self.per_axis(ctx, "scale")), start=2)]
        return [ctx.x.with_shape(ctx.x.shape[:2] + tuple(out))]

    def scaled(self, ctx: OpContext, axis: int, size: Dim, scale: float) -> Dim:
        """``floor(size * scale)``; a symbolic size only scales by a whole number."""
        if isinstance(size, Sym):
            if float(scale).is_integer():
                return size * int(scale)
            raise ctx.fail(f"interpolate by a fractional scale needs a static size on axis {axis}",
                           expected="an integer dimension or a whole-number scale",
                           found=f"scale {scale} on {ctx.x}")
        out = math.floor(float(size) * scale)
        if out <= 0:
            raise ctx.fail(f"interpolate output would be empty on axis {axis}",
                           expected="size * scale >= 1", found=f"scale {scale} on {ctx.x}")
        return out

    def flops(self, ctx: OpContext) -> int:
        return 2 * MODE_TAPS[ctx["mode"]] ** (ctx.x.rank - 2) * ctx.outputs[0].numel()

    def lower(self, ctx: OpContext) -> Call:
        kwargs: dict[str, Any] = ({"size": ctx["size"]} if ctx["size"] is not None
                                  else {"scale_factor": ctx["scale"]})
        kwargs["mode"] = ctx["mode"]
        if ctx["align_corners"] is not None:
            kwargs["align_corners"] = ctx["align_corners"]
        return Call(F.interpolate, kwargs=kwargs)


class _PixelShuffleBase(OpDef):
    """Shared parts of the pixel (un)shuffles: ``[*, C, H, W]`` with a ``factor``."""

    category = "resize"
    attrs = (Attr("factor", "int", doc="spatial scale factor r"),)

    def check_attrs(self, attrs: dict[str, Any]) -> None:
        require_positive(attrs, "factor")

    def check_rank(self, ctx: OpContext) -> None:
        if ctx.x.rank < 3:
            raise ctx.fail(f"{self.name} needs [*, C, H, W]", expected="rank >= 3", found=str(ctx.x))

    def divide(self, ctx: OpContext, dim: Dim, by: int, what: str) -> Dim:
        """``dim / by`` exactly, or a clear failure naming ``what`` must divide."""
        try:
            return dim_div(dim, by)
        except ValueError:
            raise ctx.fail(f"{self.name}: {what} must be divisible by {by}",
                           expected=f"{what} a multiple of {by}", found=str(ctx.x)) from None


@register
class PixelShuffle(_PixelShuffleBase):
    """Depth-to-space: ``[*, C*r*r, H, W] -> [*, C, H*r, W*r]`` (sub-pixel convolution upsampling)."""

    name = "pixel_shuffle"
    examples = (
        Example({"factor": 2}, [(2, 8, 3, 4)]),
        Example({"factor": 3}, [(1, 9, 2, 2)]),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        self.check_rank(ctx)
        r = ctx["factor"]
        *lead, c, h, w = ctx.x.shape
        channels = self.divide(ctx, c, r * r, "channels")
        return [ctx.x.with_shape((*lead, channels, h * r, w * r))]

    def lower(self, ctx: OpContext) -> Call:
        return Call(F.pixel_shuffle, kwargs={"upscale_factor": ctx["factor"]})


@register
class PixelUnshuffle(_PixelShuffleBase):
    """Space-to-depth: ``[*, C, H*r, W*r] -> [*, C*r*r, H, W]`` (lossless downsampling stems)."""

    name = "pixel_unshuffle"
    examples = (
        Example({"factor": 2}, [(2, 3, 4, 6)]),
        Example({"factor": 3}, [(1, 2, 3, 9)]),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        self.check_rank(ctx)
        r = ctx["factor"]
        *lead, c, h, w = ctx.x.shape
        out = (c * r * r, self.divide(ctx, h, r, "height"), self.divide(ctx, w, r, "width"))
        return [ctx.x.with_shape((*lead, *out))]

    def lower(self, ctx: OpContext) -> Call:
        return Call(F.pixel_unshuffle, kwargs={"downscale_factor": ctx["factor"]})
