"""Convolutions: ``conv1d/2d/3d`` and ``conv_transpose1d/2d`` on channels-first ``[N, C, *spatial]`` tensors.

Conventions shared by the family (and by :mod:`nasforge.ops.pooling`, which reuses the window helpers):

* inputs are batched, rank ``nd + 2``; the channel axis must be static, spatial axes may be symbolic only
  where the output size provably equals the input size (stride 1 and "same"-size padding);
* per-axis attributes (``kernel``, ``stride``, ``padding``, ``dilation``) take an int or a list of ``nd``
  ints, so depthwise (``groups: C``) and band kernels (``kernel: [1, 7]``) are plain attribute choices;
* MACs are what torch's FlopCounterMode counts (2 FLOPs per MAC, bias adds ignored, as for ``linear``):
  ``out.numel * in_ch / groups * prod(kernel)`` for a convolution and
  ``in.numel * out_ch / groups * prod(kernel)`` for a transposed one (each input element is scattered
  through the kernel).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from nasforge.errors import SpecError
from nasforge.ops.registry import (Attr, Example, OpContext, OpDef, expand_tuple, nn, prod, register,
                                   require_float, require_positive)
from nasforge.types import Dim, Sym, TensorType

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_AXIS_NAMES = {1: "[N, C, L]", 2: "[N, C, H, W]", 3: "[N, C, D, H, W]"}


# -- shared window helpers (also used by pooling) ------------------------------------------------

def spatial_layout(nd: int) -> str:
    """The expected layout of an ``nd``-spatial channels-first input, for error messages."""
    return _AXIS_NAMES.get(nd, f"[N, C, {nd} spatial axes]")


def check_rank(ctx: OpContext, op: str, nd: int) -> None:
    """Fail unless the input is a batched channels-first ``nd``-d tensor."""
    if ctx.x.rank != nd + 2:
        raise ctx.fail(f"{op} needs a rank-{nd + 2} input", expected=spatial_layout(nd), found=str(ctx.x))


def static_channels(ctx: OpContext, op: str) -> int:
    """The channel axis (1), which must be a known integer."""
    channels = ctx.x.shape[1]
    if not isinstance(channels, int):
        raise ctx.fail(f"{op} needs a static channel axis", expected="an integer at axis 1", found=str(ctx.x))
    return channels


def window_out_size(ctx: OpContext, op: str, axis: int, size: Dim, kernel: int, stride: int,
                    pad_lo: int, pad_hi: int, dilation: int = 1, ceil_mode: bool = False) -> Dim:
    """Output length of a sliding window along one axis, by torch's rule.

    ``floor((size + pads - dilation*(kernel-1) - 1) / stride) + 1`` (ceil with ``ceil_mode``, where the
    last window must also start inside the input or the left padding). A symbolic ``size`` passes
    through only when the window keeps the length (stride 1, padding equal to the dilated kernel extent).
    """
    span = dilation * (kernel - 1)
    if isinstance(size, Sym):
        if stride == 1 and pad_lo + pad_hi == span:
            return size
        raise ctx.fail(f"{op} needs a static size on spatial axis {axis} to compute its output size",
                       expected="an integer dimension (or stride 1 with size-preserving padding)",
                       found=str(ctx.x))
    numerator = size + pad_lo + pad_hi - span - 1
    if ceil_mode:
        out = -(-numerator // stride) + 1
        if (out - 1) * stride >= size + pad_lo:
            out -= 1
    else:
        out = numerator // stride + 1
    if out <= 0:
        raise ctx.fail(f"{op} output would be empty on spatial axis {axis}",
                       expected=f"size + padding >= dilated kernel extent {span + 1}",
                       found=f"size {size} with padding ({pad_lo}, {pad_hi}) in {ctx.x}")
    return out


def same_padding(size: Dim, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF-style 'same' padding ``(lo, hi)`` giving ``ceil(size / stride)`` outputs; the odd pixel goes last.

    With stride 1 the padding is ``dilation*(kernel-1)`` whatever the size; otherwise ``size`` must be static.
    """
    span = dilation * (kernel - 1)
    if stride == 1:
        total = span
    else:
        assert isinstance(size, int), "strided 'same' padding needs a static size"
        total = max((-(-size // stride) - 1) * stride + span + 1 - size, 0)
    return total // 2, total - total // 2


def check_nonnegative(attrs: dict[str, Any], *names: str) -> None:
    """Raise SpecError unless every named int/list attribute is >= 0."""
    for name in names:
        value = attrs[name]
        if any(v < 0 for v in (value if isinstance(value, list) else [value])):
            raise SpecError(f"attribute {name!r} must not be negative", expected="integers >= 0",
                            found=repr(value), key=name)


# -- modules ------------------------------------------------------------------------------------

_CONV_MODULES: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_FNS: dict[int, Callable[..., torch.Tensor]] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T_MODULES: dict[int, type[nn.Module]] = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}


class PaddedConv(nn.Module):
    """A convolution after a fixed, possibly asymmetric ``F.pad`` (TF-style 'same' padding).

    ``pad`` is in ``F.pad`` order (last axis first, ``lo, hi`` pairs); ``mode`` is an ``F.pad`` mode.
    Holds ``weight`` and ``bias`` under the same names, shapes and initialization as ``nn.ConvNd``.
    """

    def __init__(self, nd: int, in_channels: int, out_channels: int, kernel: Sequence[int],
                 stride: Sequence[int], dilation: Sequence[int], groups: int, bias: bool,
                 pad: Sequence[int], mode: str) -> None:
        super().__init__()
        reference = _CONV_MODULES[nd](in_channels, out_channels, tuple(kernel), stride=tuple(stride),
                                      dilation=tuple(dilation), groups=groups, bias=bias)
        self.weight = reference.weight
        self.bias = reference.bias
        self.nd = nd
        self.stride = tuple(stride)
        self.dilation = tuple(dilation)
        self.groups = groups
        self.pad = tuple(pad)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pad, mode=self.mode)
        return _CONV_FNS[self.nd](x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"weight={tuple(self.weight.shape)}, stride={self.stride}, dilation={self.dilation}, "
                f"groups={self.groups}, pad={self.pad}, mode={self.mode!r}")


# -- convolution entries -------------------------------------------------------------------------

_KERNEL = Attr("kernel", "int|ints", doc="kernel size (an int or one per spatial axis, e.g. [1, 7])")
_STRIDE = Attr("stride", "int|ints", 1, "step between windows")
_DILATION = Attr("dilation", "int|ints", 1, "spacing between kernel taps")
_GROUPS = Attr("groups", "int", 1, "channel groups (in and out must divide; groups = in is depthwise)")
_BIAS = Attr("bias", "bool", True, "add a learned per-channel bias")


class _ConvBase(OpDef):
    """Shared parts of the convolution entries: per-axis attributes, groups, parameters."""

    category = "conv"
    nd: int = 2
    flop_counted = True

    def axis_values(self, attrs: OpContext | Mapping[str, Any], name: str) -> tuple[int, ...]:
        """A per-axis attribute as ``nd`` ints (raises SpecError for a list of the wrong length)."""
        return expand_tuple(attrs[name], self.nd, name)

    def check_attrs(self, attrs: dict[str, Any]) -> None:
        require_positive(attrs, "out", "kernel", "stride", "dilation", "groups")
        for name in ("kernel", "stride", "dilation"):
            self.axis_values(attrs, name)
        if attrs["out"] % attrs["groups"]:
            raise SpecError(f"{self.name}: output channels must be divisible by groups",
                            expected=f"out a multiple of groups={attrs['groups']}", found=f"out={attrs['out']}",
                            key="groups")

    def in_channels(self, ctx: OpContext) -> int:
        """Validated input channels (rank, dtype, static and divisible by groups)."""
        check_rank(ctx, self.name, self.nd)
        require_float(ctx, ctx.x, f"{self.name} input")
        channels = static_channels(ctx, self.name)
        if channels % ctx["groups"]:
            raise ctx.fail(f"{self.name}: input channels must be divisible by groups",
                           expected=f"channels a multiple of groups={ctx['groups']}",
                           found=f"{channels} channels in {ctx.x}")
        return channels

    def weight_shape(self, ctx: OpContext) -> tuple[int, ...]:
        raise NotImplementedError

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        p = {"weight": self.weight_shape(ctx)}
        if ctx["bias"]:
            p["bias"] = (ctx["out"],)
        return p


class ConvNd(_ConvBase):
    """Shared rule of ``conv1d/2d/3d``."""

    attrs = (
        Attr("out", "int", doc="output channels"),
        _KERNEL,
        _STRIDE,
        Attr("padding", "int|ints|str", 0,
             "zero-based padding per side (int or one per axis), 'same' (TF-style, ceil(in/stride) outputs; "
             "asymmetric where needed) or 'valid' (none)"),
        Attr("padding_mode", "str", "zeros", "how padded values are filled", choices=PADDING_MODES),
        _DILATION,
        _GROUPS,
        _BIAS,
    )

    def check_attrs(self, attrs: dict[str, Any]) -> None:
        super().check_attrs(attrs)
        padding = attrs["padding"]
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise SpecError(f"{self.name}: unsupported padding {padding!r}",
                                expected="an int, a list of ints, 'same' or 'valid'", found=repr(padding),
                                key="padding")
        else:
            self.axis_values(attrs, "padding")
            check_nonnegative(attrs, "padding")

    def pads(self, ctx: OpContext) -> list[tuple[int, int]]:
        """``(lo, hi)`` padding per spatial axis."""
        padding = ctx["padding"]
        spatial = ctx.x.shape[2:]
        if padding == "valid":
            return [(0, 0)] * self.nd
        if padding == "same":
            return [same_padding(size, k, s, d) for size, k, s, d in zip(
                spatial, self.axis_values(ctx, "kernel"), self.axis_values(ctx, "stride"),
                self.axis_values(ctx, "dilation"))]
        return [(p, p) for p in self.axis_values(ctx, "padding")]

    def infer(self, ctx: OpContext) -> list[TensorType]:
        self.in_channels(ctx)
        kernel, stride, dilation = (self.axis_values(ctx, n) for n in ("kernel", "stride", "dilation"))
        spatial = ctx.x.shape[2:]
        if ctx["padding"] == "same" and any(s > 1 for s in stride):
            for axis, size in enumerate(spatial, start=2):
                if not isinstance(size, int):
                    raise ctx.fail(f"{self.name}: strided 'same' padding needs static spatial sizes",
                                   expected=f"an integer at axis {axis}", found=str(ctx.x))
        pads = self.pads(ctx)
        if ctx["padding_mode"] != "zeros":
            self.check_pad_fits(ctx, spatial, pads)
        out_spatial = [window_out_size(ctx, self.name, axis, size, k, s, lo, hi, d)
                       for axis, (size, k, s, (lo, hi), d) in enumerate(
                           zip(spatial, kernel, stride, pads, dilation), start=2)]
        return [ctx.x.with_shape((ctx.x.shape[0], ctx["out"], *out_spatial))]

    def check_pad_fits(self, ctx: OpContext, spatial: Sequence[Dim], pads: list[tuple[int, int]]) -> None:
        """Reflect padding must be smaller than the axis, circular at most the axis (torch's rules)."""
        mode = ctx["padding_mode"]
        for axis, (size, (lo, hi)) in enumerate(zip(spatial, pads), start=2):
            if not isinstance(size, int):
                continue
            limit = size - 1 if mode == "reflect" else size if mode == "circular" else None
            if limit is not None and max(lo, hi) > limit:
                raise ctx.fail(f"{self.name}: {mode} padding {max(lo, hi)} is too large for spatial axis {axis}",
                               expected=f"padding <= {limit} for size {size}", found=str(ctx.x))

    def weight_shape(self, ctx: OpContext) -> tuple[int, ...]:
        return (ctx["out"], ctx.x.shape[1] // ctx["groups"], *self.axis_values(ctx, "kernel"))

    def macs(self, ctx: OpContext) -> int:
        return ctx.outputs[0].numel() * (ctx.x.shape[1] // ctx["groups"]) * prod(self.axis_values(ctx, "kernel"))

    def lower(self, ctx: OpContext) -> nn.Module:
        channels = ctx.x.shape[1]
        kernel, stride, dilation = (self.axis_values(ctx, n) for n in ("kernel", "stride", "dilation"))
        pads = self.pads(ctx)
        common = dict(stride=stride, dilation=dilation, groups=ctx["groups"], bias=ctx["bias"])
        if all(lo == hi for lo, hi in pads):
            return _CONV_MODULES[self.nd](channels, ctx["out"], kernel, padding=tuple(lo for lo, _ in pads),
                                          padding_mode=ctx["padding_mode"], **common)
        flat = [p for pair in reversed(pads) for p in pair]
        mode = "constant" if ctx["padding_mode"] == "zeros" else ctx["padding_mode"]
        return PaddedConv(self.nd, channels, ctx["out"], kernel, pad=flat, mode=mode, **common)


@register
class Conv1d(ConvNd):
    """1-D convolution over ``[N, C, L]`` (temporal / sequence convs); see the module doc for conventions."""

    name = "conv1d"
    nd = 1
    examples = (
        Example({"out": 6, "kernel": 3}, [(2, 4, 10)]),
        Example({"out": 4, "kernel": 5, "stride": 2, "padding": "same", "dilation": 2, "groups": 4},
                [(2, 4, 11)]),
        Example({"out": 3, "kernel": 4, "padding": "same", "padding_mode": "reflect", "bias": False},
                [(1, 2, 9)]),
        Example({"out": 2, "kernel": 3, "stride": 3, "padding": 1, "padding_mode": "circular"}, [(2, 3, 8)]),
    )


@register
class Conv2d(ConvNd):
    """2-D convolution over ``[N, C, H, W]``: plain, strided, grouped/depthwise, dilated, band (1xk) kernels."""

    name = "conv2d"
    nd = 2
    examples = (
        Example({"out": 8, "kernel": 3, "padding": 1}, [(2, 3, 8, 8)]),
        Example({"out": 6, "kernel": [3, 5], "stride": [2, 1], "padding": [1, 2], "dilation": [1, 2],
                 "bias": False}, [(2, 4, 9, 12)]),
        Example({"out": 4, "kernel": 3, "padding": "same", "groups": 4}, [(2, 4, 7, 7)]),
        Example({"out": 4, "kernel": [1, 7], "padding": [0, 3]}, [(1, 4, 6, 10)]),
        Example({"out": 4, "kernel": [7, 1], "padding": "same", "padding_mode": "replicate"}, [(1, 4, 6, 10)]),
        Example({"out": 6, "kernel": 3, "stride": 2, "padding": "same", "groups": 2}, [(2, 4, 8, 7)]),
        Example({"out": 5, "kernel": 2, "padding": "valid"}, [(2, 3, 5, 6)]),
        Example({"out": 4, "kernel": 3, "padding": 1, "padding_mode": "reflect", "stride": 2}, [(1, 2, 5, 5)]),
    )


@register
class Conv3d(ConvNd):
    """3-D convolution over ``[N, C, D, H, W]`` (video / volumetric)."""

    name = "conv3d"
    nd = 3
    examples = (
        Example({"out": 4, "kernel": 3, "padding": 1}, [(1, 2, 4, 5, 5)]),
        Example({"out": 4, "kernel": [1, 3, 3], "stride": [1, 2, 2], "padding": "same", "groups": 2},
                [(2, 2, 3, 6, 5)]),
    )


class ConvTransposeNd(_ConvBase):
    """Shared rule of ``conv_transpose1d/2d``:
    ``out = (in - 1)*stride - 2*padding + dilation*(kernel - 1) + output_padding + 1``."""

    attrs = (
        Attr("out", "int", doc="output channels"),
        _KERNEL,
        _STRIDE,
        Attr("padding", "int|ints", 0, "removed from each side of the output"),
        Attr("output_padding", "int|ints", 0, "extra size on the high side (smaller than stride or dilation)"),
        _DILATION,
        _GROUPS,
        _BIAS,
    )

    def check_attrs(self, attrs: dict[str, Any]) -> None:
        super().check_attrs(attrs)
        self.axis_values(attrs, "padding")
        check_nonnegative(attrs, "padding", "output_padding")
        stride, dilation = self.axis_values(attrs, "stride"), self.axis_values(attrs, "dilation")
        for op, s, d in zip(self.axis_values(attrs, "output_padding"), stride, dilation):
            if op >= max(s, d):
                raise SpecError(f"{self.name}: output_padding must be smaller than stride or dilation",
                                expected=f"output_padding < max(stride, dilation) = {max(s, d)}",
                                found=f"output_padding={attrs['output_padding']!r}", key="output_padding")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        self.in_channels(ctx)
        out_spatial: list[Dim] = []
        names = ("kernel", "stride", "padding", "output_padding", "dilation")
        for axis, size, k, s, p, op, d in zip(range(2, self.nd + 2), ctx.x.shape[2:],
                                              *(self.axis_values(ctx, n) for n in names)):
            growth = d * (k - 1) + op + 1 - 2 * p
            if isinstance(size, Sym):
                if s == 1 and growth == 1:
                    out_spatial.append(size)
                    continue
                raise ctx.fail(f"{self.name} needs a static size on spatial axis {axis}",
                               expected="an integer dimension", found=str(ctx.x))
            length = (size - 1) * s + growth
            if length <= 0:
                raise ctx.fail(f"{self.name} output would be empty on spatial axis {axis}",
                               expected="padding smaller than the transposed output",
                               found=f"padding {p} for input {ctx.x}")
            out_spatial.append(length)
        return [ctx.x.with_shape((ctx.x.shape[0], ctx["out"], *out_spatial))]

    def weight_shape(self, ctx: OpContext) -> tuple[int, ...]:
        return (ctx.x.shape[1], ctx["out"] // ctx["groups"], *self.axis_values(ctx, "kernel"))

    def macs(self, ctx: OpContext) -> int:
        return ctx.x.numel() * (ctx["out"] // ctx["groups"]) * prod(self.axis_values(ctx, "kernel"))

    def lower(self, ctx: OpContext) -> nn.Module:
        names = ("kernel", "stride", "padding", "output_padding", "dilation")
        kernel, stride, padding, output_padding, dilation = (self.axis_values(ctx, n) for n in names)
        return _CONV_T_MODULES[self.nd](ctx.x.shape[1], ctx["out"], kernel, stride=stride, padding=padding,
                                        output_padding=output_padding, dilation=dilation,
                                        groups=ctx["groups"], bias=ctx["bias"])


@register
class ConvTranspose1d(ConvTransposeNd):
    """Transposed 1-D convolution (learned upsampling of ``[N, C, L]``)."""

    name = "conv_transpose1d"
    nd = 1
    examples = (
        Example({"out": 3, "kernel": 4, "stride": 2, "padding": 1}, [(2, 4, 6)]),
        Example({"out": 4, "kernel": 3, "stride": 3, "output_padding": 2, "groups": 2, "bias": False},
                [(2, 2, 5)]),
    )


@register
class ConvTranspose2d(ConvTransposeNd):
    """Transposed 2-D convolution (learned upsampling of ``[N, C, H, W]``, e.g. decoder stages)."""

    name = "conv_transpose2d"
    nd = 2
    examples = (
        Example({"out": 4, "kernel": 2, "stride": 2}, [(2, 3, 4, 5)]),
        Example({"out": 6, "kernel": [3, 1], "stride": [2, 1], "padding": [1, 0], "output_padding": [1, 0],
                 "dilation": 1, "groups": 3}, [(1, 3, 4, 4)]),
        Example({"out": 2, "kernel": 3, "dilation": 2, "padding": 2}, [(2, 2, 5, 5)]),
    )
