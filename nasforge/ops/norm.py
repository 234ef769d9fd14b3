"""Normalization: batch, layer, group and RMS norms, LayerScale and ConvNeXt V2's GRN.

Layouts: batch and group norms take channels-first tensors ``[N, C, *spatial]``. ``layer_norm`` and
``rms_norm`` normalize the last ``dims`` axes (torch's ``normalized_shape``); ``layer_norm``,
``layer_scale`` and ``grn`` take ``channels_first`` to act on axis 1 of ``[B, C, H, W]`` instead of
the last axis (ConvNeXt). The normalized (channel) sizes must be static.

FLOP convention, per element at inference: statistics 3 (sum for the mean, square and sum for the
variance) or 2 for RMS (square, sum); normalizing 2 (subtract, scale) or 1 for RMS (scale); 1 for a
learned weight and 1 for a bias. Batch norm uses running statistics, so it has no statistics term.
Per-row work (square roots, reciprocals) is ignored. MACs are 0: torch's FlopCounterMode counts none.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from nasforge.errors import SpecError
from nasforge.ops.registry import (Attr, Example, OpContext, OpDef, nn, register, require_float,
                                   require_positive)
from nasforge.types import TensorType, dim_mul

STATS, RMS_STATS = 3, 2
"""FLOPs per element for mean+variance statistics and for the mean of squares."""


def _eps(default: float) -> Attr:
    return Attr("eps", "float", default, "added to the variance for numerical stability")


_AFFINE = Attr("affine", "bool", True, "learn a per-channel weight and bias")
_CHANNELS_FIRST = Attr("channels_first", "bool", False, "act on axis 1 ([B, C, H, W]) instead of the last axis")


# -- modules ---------------------------------------------------------------------------------------

class ChannelsFirstLayerNorm(nn.LayerNorm):
    """LayerNorm over axis 1 of a channels-first tensor ``[B, C, *spatial]`` (ConvNeXt's downsampling
    and stem norms); same parameters as ``nn.LayerNorm(C)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # positive axes: torch's TorchScript ONNX exporter writes movedim(1, -1) as Transpose perm
        # [0, -1, 1, 2], which ONNX Runtime rejects
        last = x.dim() - 1
        y = F.layer_norm(x.movedim(1, last), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.movedim(last, 1)


class LayerScale(nn.Module):
    """Multiply by a learned per-channel scale ``gamma`` (CaiT, ConvNeXt), initialised to ``init``;
    channels on the last axis, or on axis 1 with ``channels_first``."""

    def __init__(self, channels: int, init: float = 1e-5, channels_first: bool = False) -> None:
        super().__init__()
        self.channels_first = channels_first
        self.gamma = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma = self.gamma.view(-1, *([1] * (x.dim() - 2))) if self.channels_first else self.gamma
        return x * gamma

    def extra_repr(self) -> str:
        return f"{self.gamma.numel()}, channels_first={self.channels_first}"


class GlobalResponseNorm(nn.Module):
    """Global response normalization of ConvNeXt V2: ``x + weight * (x * N(x)) + bias`` where
    ``N(x) = G(x) / (mean_c G(x) + eps)`` and ``G(x)`` is the L2 norm of each channel over all spatial
    axes. ``weight`` and ``bias`` start at zero, so the block starts as the identity."""

    def __init__(self, channels: int, eps: float = 1e-6, channels_first: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.channels_first = channels_first
        self.weight = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel = 1 if self.channels_first else x.dim() - 1
        spatial = [d for d in range(1, x.dim()) if d != channel]
        gx = torch.linalg.vector_norm(x, dim=spatial, keepdim=True)
        nx = gx / (gx.mean(dim=channel, keepdim=True) + self.eps)
        shape = [1] * x.dim()
        shape[channel] = -1
        return x + torch.addcmul(self.bias.view(shape), self.weight.view(shape), x * nx)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}, channels_first={self.channels_first}"


# -- entries ---------------------------------------------------------------------------------------

class NormOp(OpDef):
    """Base of normalization entries: a floating input, output of the same type, a channel axis
    whose size must be static, and per-element FLOPs from :meth:`steps`."""

    category = "normalization"

    def check_attrs(self, attrs: dict) -> None:
        if "eps" in attrs and attrs["eps"] <= 0:
            raise SpecError(f"{self.name} needs a positive eps", expected="eps > 0", found=repr(attrs["eps"]))

    def channels(self, ctx: OpContext, axis: int, min_rank: int, layout: str) -> int:
        """Check the input (floating, rank >= ``min_rank``) and return its static size on ``axis``."""
        x = ctx.x
        require_float(ctx, x, f"{self.name} input")
        if x.rank < min_rank:
            raise ctx.fail(f"{self.name} needs a rank-{min_rank}+ input", expected=layout, found=str(x))
        size = x.shape[axis]
        if not isinstance(size, int):
            raise ctx.fail(f"{self.name} needs a static size on the normalized axis {axis}",
                           expected=f"an integer on axis {axis} of {layout}", found=str(x))
        return size

    def steps(self, ctx: OpContext) -> int:
        """FLOPs per element."""
        raise NotImplementedError

    def flops(self, ctx: OpContext) -> int:
        return self.steps(ctx) * ctx.outputs[0].numel()


class BatchNormNd(NormOp):
    """Base of batch norms over ``[N, C, *spatial]`` with ``nd`` spatial axes."""

    nd: ClassVar[int]
    attrs = (
        _eps(1e-5),
        Attr("momentum", "float|none", 0.1, "running-statistics update rate (none: cumulative average)"),
        _AFFINE,
    )

    def check_attrs(self, attrs: dict) -> None:
        super().check_attrs(attrs)
        momentum = attrs["momentum"]
        if momentum is not None and not 0 <= momentum <= 1:
            raise SpecError(f"{self.name} momentum must lie in [0, 1]", expected="0 <= momentum <= 1",
                            found=repr(momentum))

    def layouts(self) -> tuple[int, ...]:
        """The accepted input ranks."""
        return (2, 3) if self.nd == 1 else (self.nd + 2,)

    def infer(self, ctx: OpContext) -> list[TensorType]:
        names = {2: "[N, C]", 3: "[N, C, L]", 4: "[N, C, H, W]", 5: "[N, C, D, H, W]"}
        layout = " or ".join(names[r] for r in self.layouts())
        if ctx.x.rank not in self.layouts():
            raise ctx.fail(f"{self.name} takes {layout}", expected=layout, found=str(ctx.x))
        self.channels(ctx, 1, 2, layout)
        return [ctx.x]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        c = ctx.x.shape[1]
        return {"weight": (c,), "bias": (c,)} if ctx["affine"] else {}

    def steps(self, ctx: OpContext) -> int:
        return 2 + 2 * ctx["affine"]

    def lower(self, ctx: OpContext) -> nn.Module:
        module = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[self.nd]
        return module(ctx.x.shape[1], eps=ctx["eps"], momentum=ctx["momentum"], affine=ctx["affine"])


@register
class BatchNorm1d(BatchNormNd):
    """Batch normalization of ``[N, C]`` or ``[N, C, L]`` per channel C (running statistics at
    inference). 2 FLOPs per element, 4 with affine."""

    name = "batch_norm1d"
    nd = 1
    examples = (
        Example({}, [(2, 5)]),
        Example({"affine": False, "momentum": None}, [(2, 3, 4)], train=True),
    )


@register
class BatchNorm2d(BatchNormNd):
    """Batch normalization of ``[N, C, H, W]`` per channel C (running statistics at inference).
    2 FLOPs per element, 4 with affine."""

    name = "batch_norm2d"
    nd = 2
    examples = (
        Example({}, [(2, 3, 4, 4)]),
        Example({"eps": 1e-3, "momentum": 0.01}, [(2, 3, 2, 5)], train=True),
        Example({"affine": False}, [(1, 4, 3, 3)]),
    )


@register
class BatchNorm3d(BatchNormNd):
    """Batch normalization of ``[N, C, D, H, W]`` per channel C (running statistics at inference).
    2 FLOPs per element, 4 with affine."""

    name = "batch_norm3d"
    nd = 3
    examples = (
        Example({}, [(2, 3, 2, 3, 3)]),
        Example({"affine": False}, [(2, 2, 2, 2, 2)], train=True),
    )


class TrailingNorm(NormOp):
    """Base of norms over the last ``dims`` axes (torch's ``normalized_shape``)."""

    def normalized_shape(self, ctx: OpContext) -> tuple[int, ...]:
        """Check the input and return the static sizes of the normalized axes."""
        dims = ctx["dims"]
        layout = "[..., " + ", ".join(f"D{i + 1}" for i in range(dims)) + "] with static D"
        for axis in range(-dims, 0):
            self.channels(ctx, axis, dims, layout)
        return tuple(ctx.x.shape[-dims:])  # type: ignore[arg-type]

    def check_attrs(self, attrs: dict) -> None:
        super().check_attrs(attrs)
        require_positive(attrs, "dims")


@register
class LayerNorm(TrailingNorm):
    """Layer normalization over the last ``dims`` axes, or, with ``channels_first``, over axis 1 of
    ``[B, C, *spatial]`` (ConvNeXt, which also sets ``eps: 1e-6``). Learned ``weight`` and ``bias``
    have the normalized shape. 5 FLOPs per element, plus 1 each for weight and bias."""

    name = "layer_norm"
    attrs = (
        Attr("dims", "int", 1, "how many trailing axes to normalize over together"),
        _CHANNELS_FIRST,
        _eps(1e-5),
        Attr("affine", "bool", True, "learn an element-wise weight"),
        Attr("bias", "bool", True, "also learn a bias (only with affine)"),
    )
    examples = (
        Example({}, [(2, 3, 8)]),
        Example({"dims": 2, "bias": False}, [(2, 3, 4)]),
        Example({"channels_first": True, "eps": 1e-6}, [(2, 4, 3, 3)]),
        Example({"affine": False}, [(2, 5)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        super().check_attrs(attrs)
        if attrs["channels_first"] and attrs["dims"] != 1:
            raise SpecError("layer_norm with channels_first normalizes axis 1 only", expected="dims: 1",
                            found=f"dims: {attrs['dims']}")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        self.normalized_shape(ctx)
        return [ctx.x]

    def normalized_shape(self, ctx: OpContext) -> tuple[int, ...]:
        if ctx["channels_first"]:
            return (self.channels(ctx, 1, 2, "[B, C, *spatial] with a static C"),)
        return super().normalized_shape(ctx)

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        if not ctx["affine"]:
            return {}
        shape = self.normalized_shape(ctx)
        return {"weight": shape, "bias": shape} if ctx["bias"] else {"weight": shape}

    def steps(self, ctx: OpContext) -> int:
        return STATS + 2 + ctx["affine"] * (1 + ctx["bias"])

    def lower(self, ctx: OpContext) -> nn.Module:
        module = ChannelsFirstLayerNorm if ctx["channels_first"] else nn.LayerNorm
        return module(self.normalized_shape(ctx), eps=ctx["eps"], elementwise_affine=ctx["affine"],
                      bias=ctx["bias"])


@register
class RMSNorm(TrailingNorm):
    """Root-mean-square normalization ``x / sqrt(mean(x^2) + eps) * weight`` over the last ``dims``
    axes (T5, LLaMA); no mean subtraction and no bias. 3 FLOPs per element, 4 with affine."""

    name = "rms_norm"
    attrs = (
        Attr("dims", "int", 1, "how many trailing axes to normalize over together"),
        _eps(1e-6),
        Attr("affine", "bool", True, "learn an element-wise weight"),
    )
    examples = (
        Example({}, [(2, 3, 8)]),
        Example({"dims": 2, "affine": False, "eps": 1e-5}, [(2, 3, 4)]),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        self.normalized_shape(ctx)
        return [ctx.x]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        return {"weight": self.normalized_shape(ctx)} if ctx["affine"] else {}

    def steps(self, ctx: OpContext) -> int:
        return RMS_STATS + 1 + ctx["affine"]

    def lower(self, ctx: OpContext) -> nn.Module:
        return nn.RMSNorm(self.normalized_shape(ctx), eps=ctx["eps"], elementwise_affine=ctx["affine"])


@register
class GroupNorm(NormOp):
    """Group normalization of ``[N, C, *spatial]``: statistics over each of ``groups`` channel groups
    and all spatial axes; per-channel ``weight`` and ``bias``. 5 FLOPs per element, 7 with affine."""

    name = "group_norm"
    attrs = (
        Attr("groups", "int", doc="number of channel groups (must divide C)"),
        _eps(1e-5),
        _AFFINE,
    )
    examples = (
        Example({"groups": 2}, [(2, 4, 3, 3)]),
        Example({"groups": 1, "affine": False}, [(2, 3, 5)]),
        Example({"groups": 3, "eps": 1e-6}, [(1, 6)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        super().check_attrs(attrs)
        require_positive(attrs, "groups")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        c = self.channels(ctx, 1, 2, "[N, C, *spatial] with a static C")
        if c % ctx["groups"]:
            raise ctx.fail(f"group_norm cannot split {c} channels into {ctx['groups']} groups",
                           expected=f"a channel count divisible by groups={ctx['groups']}", found=str(ctx.x))
        if c // ctx["groups"] * dim_mul(ctx.x.shape[2:]) == 1:
            raise ctx.fail("group_norm needs more than one value per group", expected="C / groups * spatial > 1",
                           found=f"{ctx.x} with groups={ctx['groups']}")
        return [ctx.x]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        c = ctx.x.shape[1]
        return {"weight": (c,), "bias": (c,)} if ctx["affine"] else {}

    def steps(self, ctx: OpContext) -> int:
        return STATS + 2 + 2 * ctx["affine"]

    def lower(self, ctx: OpContext) -> nn.Module:
        return nn.GroupNorm(ctx["groups"], ctx.x.shape[1], eps=ctx["eps"], affine=ctx["affine"])


class ChannelScaleOp(NormOp):
    """Base of per-channel ops with ``channels_first``: the channel axis is 1 or the last one."""

    min_rank: ClassVar[int]

    def channel_count(self, ctx: OpContext) -> int:
        if ctx["channels_first"]:
            return self.channels(ctx, 1, max(self.min_rank, 2), "[B, C, *spatial] with a static C")
        return self.channels(ctx, -1, self.min_rank, "[B, *spatial, C] with a static C")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        self.channel_count(ctx)
        return [ctx.x]


@register
class LayerScaleOp(ChannelScaleOp):
    """LayerScale: multiply by a learned per-channel ``gamma`` initialised to ``init`` (CaiT, ConvNeXt
    residual branches); channels on the last axis, or axis 1 with ``channels_first``. 1 FLOP per element."""

    name = "layer_scale"
    attrs = (
        Attr("init", "float", 1e-5, "initial value of every gamma entry"),
        _CHANNELS_FIRST,
    )
    min_rank = 1
    examples = (
        Example({}, [(2, 5, 8)]),
        Example({"init": 1e-6, "channels_first": True}, [(2, 4, 3, 3)]),
    )

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        return {"gamma": (self.channel_count(ctx),)}

    def steps(self, ctx: OpContext) -> int:
        return 1

    def lower(self, ctx: OpContext) -> nn.Module:
        return LayerScale(self.channel_count(ctx), ctx["init"], ctx["channels_first"])


@register
class GRN(ChannelScaleOp):
    """Global response normalization (ConvNeXt V2): ``x + weight * x * N(x) + bias`` with ``N(x)`` the
    per-channel L2 norm over all spatial axes divided by its mean over channels. Channels-last
    ``[B, H, W, C]`` as in ConvNeXt V2 blocks, or ``[B, C, H, W]`` with ``channels_first``. ``weight``
    and ``bias`` start at zero. 6 FLOPs per element (square, sum, scale, weight, bias, residual)."""

    name = "grn"
    attrs = (_eps(1e-6), _CHANNELS_FIRST)
    min_rank = 3
    examples = (
        Example({}, [(2, 3, 3, 8)]),
        Example({"channels_first": True}, [(2, 4, 3, 5)]),
        Example({"eps": 1e-5}, [(2, 6, 4)]),
    )

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        c = self.channel_count(ctx)
        return {"weight": (c,), "bias": (c,)}

    def steps(self, ctx: OpContext) -> int:
        return RMS_STATS + 4

    def lower(self, ctx: OpContext) -> nn.Module:
        return GlobalResponseNorm(self.channel_count(ctx), ctx["eps"], ctx["channels_first"])
