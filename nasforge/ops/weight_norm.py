"""Weight-normalized convolutions: ``wn_conv1d`` and ``wn_conv_transpose1d``.

Weight normalization (Salimans & Kingma, NeurIPS 2016) trains a convolution's kernel as a direction ``v``
and a length ``g`` per slice of axis 0: ``weight = g * v / ||v||``, the norm taken over every other axis.
GAN vocoders put it on every convolution (MelGAN, Kumar et al., NeurIPS 2019; HiFi-GAN, Parallel WaveGAN),
and their checkpoints store the two factors, not the kernel, so these entries keep them as parameters
under torch's ``torch.nn.utils.weight_norm`` names:

* ``weight_g``: shape ``[weight.shape[0], 1, 1]``: one length per output channel of a convolution, per
  *input* channel of a transposed one (axis 0 of ``ConvTranspose1d.weight`` is its input channels, and
  torch's default ``dim=0`` normalizes along it);
* ``weight_v``: the kernel's shape (``[out, in/groups, k]``, or ``[in, out/groups, k]`` transposed);
* ``bias``: ``[out]`` when ``bias`` is true.

A state_dict saved from a module wrapped by ``torch.nn.utils.weight_norm`` therefore loads as it is.
(The newer ``torch.nn.utils.parametrizations.weight_norm`` names the same tensors
``parametrizations.weight.original0`` / ``original1``.)

Attributes, shape rules and MACs are those of ``conv1d`` / ``conv_transpose1d`` (:mod:`nasforge.ops.conv`):
the kernel is rebuilt on every call from ``g`` and ``v`` (at inference it could be folded once; that is a
pass, not a different op). torch's FlopCounterMode counts the convolution only, so MACs are the
convolution's; FLOPs add the normalization (about 3 per kernel element and 2 per length). A fresh entry
starts where ``weight_norm`` would leave a fresh ``nn.Conv1d``: ``v`` is torch's default kernel and
``g = ||v||``, so the effective kernel is torch's default.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from nasforge.ops.conv import Conv1d, ConvTranspose1d
from nasforge.ops.registry import Example, OpContext, nn, register


def norm_except_dim0(v: torch.Tensor) -> torch.Tensor:
    """The 2-norm of each slice ``v[i]``, shaped ``[n, 1, ..., 1]`` to broadcast against ``v``."""
    return v.pow(2).sum(dim=tuple(range(1, v.dim())), keepdim=True).sqrt()


class WeightNormConv1d(nn.Module):
    """A 1-D (transposed) convolution whose kernel is ``weight_g * weight_v / ||weight_v||``.

    ``pad`` (``F.pad`` order) and ``mode`` apply an explicit padding first (reflect / replicate /
    circular, or asymmetric zeros); ``padding`` is the convolution's own zero padding (or, transposed,
    what it removes from the output).
    """

    def __init__(self, transposed: bool, in_channels: int, out_channels: int, kernel: int, stride: int,
                 padding: int, dilation: int, groups: int, bias: bool, output_padding: int = 0,
                 pad: Sequence[int] = (), mode: str = "constant") -> None:
        super().__init__()
        cls = nn.ConvTranspose1d if transposed else nn.Conv1d
        reference = cls(in_channels, out_channels, kernel, stride=stride, dilation=dilation, groups=groups,
                        bias=bias)
        v = reference.weight.detach()
        self.weight_g = nn.Parameter(norm_except_dim0(v).clone())
        self.weight_v = nn.Parameter(v.clone())
        self.bias = reference.bias
        self.transposed = transposed
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.output_padding = output_padding
        self.pad = tuple(pad)
        self.mode = mode

    def weight(self) -> torch.Tensor:
        """The effective kernel."""
        return self.weight_v * (self.weight_g / norm_except_dim0(self.weight_v))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, self.pad, mode=self.mode)
        if self.transposed:
            return F.conv_transpose1d(x, self.weight(), self.bias, self.stride, self.padding,
                                      self.output_padding, self.groups, self.dilation)
        return F.conv1d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        kind = "transposed, " if self.transposed else ""
        return (f"{kind}weight_v={tuple(self.weight_v.shape)}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, groups={self.groups}, pad={self.pad}, mode={self.mode!r}")


def _weight_norm_params(ctx: OpContext, weight: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    params = {"weight_g": (weight[0],) + (1,) * (len(weight) - 1), "weight_v": weight}
    if ctx["bias"]:
        params["bias"] = (ctx["out"],)
    return params


def _normalization_flops(weight: tuple[int, ...]) -> int:
    """Rebuilding the kernel: square, sum and scale each element of v; a root and a divide per length."""
    numel = 1
    for d in weight:
        numel *= d
    return 3 * numel + 2 * weight[0]


@register
class WnConv1d(Conv1d):
    """``conv1d`` with weight normalization (``torch.nn.utils.weight_norm``, ``dim=0``): parameters
    ``weight_g`` ``[out, 1, 1]``, ``weight_v`` ``[out, in/groups, k]`` and ``bias``; same attributes,
    shape rule and MACs as ``conv1d`` (padding_mode ``reflect`` is MelGAN's ReflectionPad1d + conv)."""

    name = "wn_conv1d"
    examples = (
        Example({"out": 6, "kernel": 7, "padding": 3, "padding_mode": "reflect"}, [(2, 4, 10)]),
        Example({"out": 4, "kernel": 3, "dilation": 3, "padding": 3, "padding_mode": "reflect",
                 "bias": False}, [(2, 4, 12)]),
        Example({"out": 6, "kernel": 5, "stride": 2, "padding": "same", "groups": 2}, [(2, 4, 11)]),
        Example({"out": 3, "kernel": 4, "padding": "same", "bias": False}, [(1, 5, 7)]),   # asymmetric zeros
    )

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        return _weight_norm_params(ctx, self.weight_shape(ctx))

    def flops(self, ctx: OpContext) -> int:
        return 2 * self.macs(ctx) + _normalization_flops(self.weight_shape(ctx))

    def lower(self, ctx: OpContext) -> nn.Module:
        (lo, hi), = self.pads(ctx)
        kernel, stride, dilation = (self.axis_values(ctx, n)[0] for n in ("kernel", "stride", "dilation"))
        common = dict(stride=stride, dilation=dilation, groups=ctx["groups"], bias=ctx["bias"])
        if lo == hi and ctx["padding_mode"] == "zeros":
            return WeightNormConv1d(False, ctx.x.shape[1], ctx["out"], kernel, padding=lo, **common)
        mode = "constant" if ctx["padding_mode"] == "zeros" else ctx["padding_mode"]
        return WeightNormConv1d(False, ctx.x.shape[1], ctx["out"], kernel, padding=0, pad=(lo, hi), mode=mode,
                                **common)


@register
class WnConvTranspose1d(ConvTranspose1d):
    """``conv_transpose1d`` with weight normalization (``torch.nn.utils.weight_norm``, ``dim=0``):
    parameters ``weight_g`` ``[in, 1, 1]`` (axis 0 of a transposed kernel is its input channels),
    ``weight_v`` ``[in, out/groups, k]`` and ``bias``; same attributes, shape rule and MACs as
    ``conv_transpose1d``."""

    name = "wn_conv_transpose1d"
    examples = (
        Example({"out": 3, "kernel": 16, "stride": 8, "padding": 4}, [(2, 6, 5)]),
        Example({"out": 4, "kernel": 3, "stride": 3, "output_padding": 1, "groups": 2, "bias": False},
                [(2, 2, 5)]),
    )

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        return _weight_norm_params(ctx, self.weight_shape(ctx))

    def flops(self, ctx: OpContext) -> int:
        return 2 * self.macs(ctx) + _normalization_flops(self.weight_shape(ctx))

    def lower(self, ctx: OpContext) -> nn.Module:
        names = ("kernel", "stride", "padding", "output_padding", "dilation")
        kernel, stride, padding, output_padding, dilation = (self.axis_values(ctx, n)[0] for n in names)
        return WeightNormConv1d(True, ctx.x.shape[1], ctx["out"], kernel, stride=stride, padding=padding,
                                dilation=dilation, groups=ctx["groups"], bias=ctx["bias"],
                                output_padding=output_padding)
