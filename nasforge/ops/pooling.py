"""Pooling over the spatial axes of channels-first ``[N, C, *spatial]`` tensors.

Window pools (``max_pool1d/2d``, ``avg_pool1d/2d``), adaptive pools (``adaptive_avg/max_pool1d/2d``) and
global pools (``global_avg_pool``, ``global_max_pool``). None has parameters or MACs. FLOPs follow one
convention: one FLOP per element of every window (a comparison for max, an add or the final divide for
average), i.e. ``out.numel * prod(kernel)`` for window pools (padded taps included), the exact window
lengths for adaptive pools and ``in.numel`` for global pools.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from nasforge.errors import SpecError
from nasforge.ops.conv import check_nonnegative, check_rank, spatial_layout, window_out_size
from nasforge.ops.registry import (Attr, Call, Example, OpContext, OpDef, expand_tuple, prod, register,
                                   require_float, require_positive)
from nasforge.types import Dim, TensorType


class _SpatialPool(OpDef):
    """A pool over the ``nd`` spatial axes of a batched channels-first float tensor."""

    category = "pooling"
    nd: int = 2

    def check_input(self, ctx: OpContext) -> None:
        check_rank(ctx, self.name, self.nd)
        require_float(ctx, ctx.x, f"{self.name} input")


# -- window pools ---------------------------------------------------------------------------------

_WINDOW_ATTRS = (
    Attr("kernel", "int|ints", doc="window size (an int or one per spatial axis)"),
    Attr("stride", "int|ints|none", None, "step between windows (null: the kernel size)"),
    Attr("padding", "int|ints", 0, "implicit padding per side, at most kernel // 2"),
)
_CEIL_MODE = Attr("ceil_mode", "bool", False,
                  "round the output size up (the last window must still start inside input or left padding)")


class WindowPool(_SpatialPool):
    """Shared rule of max/avg window pools (torch's output-size rule, including ``ceil_mode``)."""

    fn = staticmethod(F.max_pool2d)

    def axis_values(self, attrs: OpContext | Mapping[str, Any], name: str) -> tuple[int, ...]:
        """A per-axis attribute as ``nd`` ints; ``stride`` defaults to the kernel."""
        value = attrs[name] if name in self.attr_map() else 1  # avg pools have no dilation
        if name == "stride" and value is None:
            value = attrs["kernel"]
        return expand_tuple(value, self.nd, name)

    def check_attrs(self, attrs: dict[str, Any]) -> None:
        require_positive(attrs, "kernel", "stride", "dilation")
        check_nonnegative(attrs, "padding")
        kernel = self.axis_values(attrs, "kernel")
        for name in ("stride", "padding", "dilation"):
            self.axis_values(attrs, name)
        if any(p > k // 2 for p, k in zip(self.axis_values(attrs, "padding"), kernel)):
            raise SpecError(f"{self.name}: padding must be at most half the kernel size",
                            expected=f"padding <= kernel // 2 for kernel {attrs['kernel']!r}",
                            found=f"padding={attrs['padding']!r}", key="padding")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        self.check_input(ctx)
        values = zip(ctx.x.shape[2:], *(self.axis_values(ctx, n) for n in ("kernel", "stride", "padding",
                                                                            "dilation")))
        out = [window_out_size(ctx, self.name, axis, size, k, s, p, p, d, ctx["ceil_mode"])
               for axis, (size, k, s, p, d) in enumerate(values, start=2)]
        return [ctx.x.with_shape(ctx.x.shape[:2] + tuple(out))]

    def flops(self, ctx: OpContext) -> int:
        return ctx.outputs[0].numel() * prod(self.axis_values(ctx, "kernel"))

    def lower(self, ctx: OpContext) -> Call:
        kwargs = {"kernel_size": ctx["kernel"], "stride": ctx["stride"], "padding": ctx["padding"]}
        kwargs.update({a.name: ctx[a.name] for a in self.attrs if a.name not in ("kernel", "stride", "padding")})
        return Call(self.fn, kwargs=kwargs)


class MaxPool(WindowPool):
    """Max over sliding windows."""

    attrs = _WINDOW_ATTRS + (Attr("dilation", "int|ints", 1, "spacing between window taps"), _CEIL_MODE)


class AvgPool(WindowPool):
    """Mean over sliding windows."""

    attrs = _WINDOW_ATTRS + (
        _CEIL_MODE,
        Attr("count_include_pad", "bool", True, "count padded zeros in the divisor"),
    )


@register
class MaxPool1d(MaxPool):
    """Max over sliding windows of ``[N, C, L]``."""

    name = "max_pool1d"
    nd = 1
    fn = staticmethod(F.max_pool1d)
    examples = (
        Example({"kernel": 3}, [(2, 4, 10)]),
        Example({"kernel": 3, "stride": 2, "padding": 1, "dilation": 2, "ceil_mode": True}, [(2, 3, 9)]),
    )


@register
class MaxPool2d(MaxPool):
    """Max over sliding windows of ``[N, C, H, W]`` (e.g. the 3x3/2 stem pool)."""

    name = "max_pool2d"
    nd = 2
    fn = staticmethod(F.max_pool2d)
    examples = (
        Example({"kernel": 3, "stride": 2, "padding": 1}, [(2, 3, 8, 8)]),
        Example({"kernel": 2, "stride": 2, "padding": 1, "ceil_mode": True}, [(2, 3, 3, 5)]),
        Example({"kernel": [1, 3], "stride": [1, 2], "dilation": [1, 2]}, [(1, 2, 4, 9)]),
    )


@register
class AvgPool1d(AvgPool):
    """Mean over sliding windows of ``[N, C, L]``."""

    name = "avg_pool1d"
    nd = 1
    fn = staticmethod(F.avg_pool1d)
    examples = (
        Example({"kernel": 2}, [(2, 4, 9)]),
        Example({"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": False},
                [(2, 3, 8)]),
    )


@register
class AvgPool2d(AvgPool):
    """Mean over sliding windows of ``[N, C, H, W]``."""

    name = "avg_pool2d"
    nd = 2
    fn = staticmethod(F.avg_pool2d)
    examples = (
        Example({"kernel": 2}, [(2, 3, 6, 7)]),
        Example({"kernel": 3, "stride": 1, "padding": 1, "count_include_pad": False}, [(2, 3, 5, 5)]),
        Example({"kernel": [3, 2], "stride": 2, "padding": [1, 0], "ceil_mode": True}, [(1, 2, 6, 5)]),
    )


# -- adaptive pools -------------------------------------------------------------------------------

def adaptive_window_total(size: int, out: int) -> int:
    """Sum of torch's adaptive window lengths along one axis: ``[floor(i*n/m), ceil((i+1)*n/m))``."""
    return sum(-(-(i + 1) * size // out) - (i * size // out) for i in range(out))


class AdaptivePool(_SpatialPool):
    """Shared rule of adaptive pools: a fixed output size whatever the input size."""

    attrs = (
        Attr("size", "int|any", doc="output size: an int, or a list with one int or null (keep) per spatial axis"),
    )
    fn = staticmethod(F.adaptive_avg_pool2d)

    def check_attrs(self, attrs: dict[str, Any]) -> None:
        size = attrs["size"]
        entries = size if isinstance(size, list) else [size]
        if size is None or not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in entries):
            raise SpecError(f"{self.name}: attribute 'size' has the wrong type",
                            expected="an int or a list of ints / nulls", found=repr(size), key="size")
        require_positive(attrs, "size")
        expand_tuple(size, self.nd, "size")

    def out_spatial(self, ctx: OpContext) -> tuple[Dim, ...]:
        """The output spatial sizes, null entries keeping the input's."""
        size = expand_tuple(ctx["size"], self.nd, "size")
        return tuple(d if s is None else s for d, s in zip(ctx.x.shape[2:], size))

    def infer(self, ctx: OpContext) -> list[TensorType]:
        self.check_input(ctx)
        out = self.out_spatial(ctx)
        if self.nd == 1 and not isinstance(out[0], int):
            raise ctx.fail(f"{self.name} with size null needs a static length", expected="an integer at axis 2",
                           found=str(ctx.x))
        return [ctx.x.with_shape(ctx.x.shape[:2] + out)]

    def flops(self, ctx: OpContext) -> int:
        batch, channels, *spatial = ctx.x.concrete_shape()
        per_axis = [adaptive_window_total(n, m) for n, m in zip(spatial, ctx.outputs[0].concrete_shape()[2:])]
        return batch * channels * prod(per_axis)

    def lower(self, ctx: OpContext) -> Call:
        size = [s if isinstance(s, int) else None for s in self.out_spatial(ctx)]
        return Call(self.fn, kwargs={"output_size": size[0] if self.nd == 1 else size})


@register
class AdaptiveAvgPool1d(AdaptivePool):
    """Mean over ``size`` adaptive windows of ``[N, C, L]``."""

    name = "adaptive_avg_pool1d"
    nd = 1
    fn = staticmethod(F.adaptive_avg_pool1d)
    examples = (
        Example({"size": 1}, [(2, 4, 7)]),
        Example({"size": [3]}, [(2, 3, 8)]),
    )


@register
class AdaptiveAvgPool2d(AdaptivePool):
    """Mean over adaptive windows of ``[N, C, H, W]`` giving a fixed ``size`` (e.g. 7x7 before a head)."""

    name = "adaptive_avg_pool2d"
    nd = 2
    fn = staticmethod(F.adaptive_avg_pool2d)
    examples = (
        Example({"size": 1}, [(2, 4, 5, 6)]),
        Example({"size": [3, None]}, [(2, 3, 7, 5)]),
        Example({"size": [4, 3]}, [(1, 2, 9, 2)]),
    )


@register
class AdaptiveMaxPool1d(AdaptivePool):
    """Max over ``size`` adaptive windows of ``[N, C, L]``."""

    name = "adaptive_max_pool1d"
    nd = 1
    fn = staticmethod(F.adaptive_max_pool1d)
    examples = (
        Example({"size": 2}, [(2, 4, 7)]),
        Example({"size": [5]}, [(1, 3, 5)]),
    )


@register
class AdaptiveMaxPool2d(AdaptivePool):
    """Max over adaptive windows of ``[N, C, H, W]`` giving a fixed ``size``."""

    name = "adaptive_max_pool2d"
    nd = 2
    fn = staticmethod(F.adaptive_max_pool2d)
    examples = (
        Example({"size": [2, 2]}, [(2, 4, 5, 6)]),
        Example({"size": [None, 1]}, [(2, 3, 4, 6)]),
    )


# -- global pools ---------------------------------------------------------------------------------

class GlobalPool(OpDef):
    """Shared rule of global pools: reduce every spatial axis (2..) of ``[N, C, *spatial]``."""

    category = "pooling"
    attrs = (Attr("keepdim", "bool", True, "keep the pooled axes as size 1 ([N, C, 1, 1]) instead of [N, C]"),)
    fn = staticmethod(torch.mean)

    def infer(self, ctx: OpContext) -> list[TensorType]:
        if ctx.x.rank < 3:
            raise ctx.fail(f"{self.name} needs at least one spatial axis", expected=spatial_layout(2),
                           found=str(ctx.x))
        require_float(ctx, ctx.x, f"{self.name} input")
        spatial = (1,) * (ctx.x.rank - 2) if ctx["keepdim"] else ()
        return [ctx.x.with_shape(ctx.x.shape[:2] + spatial)]

    def flops(self, ctx: OpContext) -> int:
        return ctx.x.numel()

    def lower(self, ctx: OpContext) -> Call:
        return Call(self.fn, kwargs={"dim": tuple(range(2, ctx.x.rank)), "keepdim": ctx["keepdim"]})


@register
class GlobalAvgPool(GlobalPool):
    """Mean over all spatial axes: ``[N, C, *spatial] -> [N, C, 1, ...]`` (or ``[N, C]`` without keepdim)."""

    name = "global_avg_pool"
    fn = staticmethod(torch.mean)
    examples = (
        Example({}, [(2, 4, 5, 6)]),
        Example({"keepdim": False}, [(2, 3, 7)]),
        Example({"keepdim": False}, [(1, 2, 3, 4, 5)]),
    )


@register
class GlobalMaxPool(GlobalPool):
    """Max over all spatial axes: ``[N, C, *spatial] -> [N, C, 1, ...]`` (or ``[N, C]`` without keepdim)."""

    name = "global_max_pool"
    fn = staticmethod(torch.amax)
    examples = (
        Example({}, [(2, 4, 5, 6)]),
        Example({"keepdim": False}, [(2, 3, 4, 4)]),
    )
