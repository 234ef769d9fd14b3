"""Fold an eval-mode BatchNorm into the convolution or linear layer that feeds it.

With running statistics a BatchNorm is a per-channel affine map ``y = s * x + t``, ``s = gamma / sqrt(var +
eps)``, ``t = beta - s * mean``. After a layer that is linear in its weights and adds a per-output-channel
bias, ``bn(layer(x))`` is the same layer with each output channel's kernel slice scaled by ``s`` and bias
``s * b + t``. Folded here, when the layer's output feeds nothing but the BatchNorm:

* ``nn.Conv1d/2d/3d`` (any padding mode, dilation, groups, depthwise) and nasforge's ``PaddedConv`` (a
  fixed ``F.pad`` before the convolution does not matter: the BatchNorm acts on the output);
* ``nn.ConvTranspose1d/2d/3d``: the output channel is axis 1 of the kernel, within each group;
* ``nn.Linear`` followed by a ``BatchNorm1d`` on a 2-D ``[N, C]`` value (the BatchNorm's channel axis is
  then the linear layer's feature axis; on ``[N, C, L]`` it would not be, and the pair is left alone).

A layer without a bias gets one. Arithmetic runs in float64 and is cast back to the layer's dtype; new
``nn.Parameter`` objects replace the old ones, so a weight tied to another module is not changed there.
A BatchNorm without running statistics (``track_running_stats=False`` normalizes by the batch even in
eval mode) or one whose layer is called from two places is left alone.

A BatchNorm *before* a convolution is not folded: ``conv(s * x + t)`` moves ``s`` into the kernel's input
channels exactly, but ``t`` becomes a constant bias only where the window lies inside the input. Zero
padding feeds zeros to the border windows where the original network fed them ``t`` - it pads after the
BatchNorm - so the border outputs would change (and pre-activation networks put a ReLU in between anyway).
"""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from nasforge.compiler.passes.common import call_counts, finish, module_of, node_type, replace_node
from nasforge.ops.conv import PaddedConv

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, PaddedConv)
_CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def bn_scale_shift(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """A BatchNorm in eval mode as ``y = scale * x + shift`` per channel, in float64."""
    std = (bn.running_var.detach().double() + bn.eps).sqrt()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    return scale, beta - scale * bn.running_mean.detach().double()


def _kind(layer: nn.Module | None) -> str | None:
    if isinstance(layer, nn.Linear):
        return "linear"
    if isinstance(layer, _CONV_TRANSPOSES):
        return "conv_transpose"
    return "conv" if isinstance(layer, _CONVS) else None


def _out_channels(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, _CONV_TRANSPOSES):
        return layer.weight.shape[1] * layer.groups
    return layer.weight.shape[0]


def _foldable(gm: fx.GraphModule, bn_node: fx.Node, calls: dict[int, int]) -> nn.Module | None:
    """The layer ``bn_node`` can fold into, or None."""
    bn = module_of(gm, bn_node)
    if not isinstance(bn, _BatchNorm) or bn.running_mean is None or bn.running_var is None:
        return None
    if len(bn_node.args) != 1 or bn_node.kwargs:
        return None
    source = bn_node.args[0]
    layer = module_of(gm, source)
    kind = _kind(layer)
    if kind is None or list(source.users) != [bn_node] or calls.get(id(layer)) != 1:
        return None
    if len(source.args) != 1 or source.kwargs or _out_channels(layer) != bn.num_features:
        return None
    ttype = node_type(source)
    if kind == "linear":       # BatchNorm1d's channel axis is the features only on [N, C]
        return layer if ttype is not None and ttype.rank == 2 else None
    batched = layer.weight.dim()          # [N, C, *spatial]: as many axes as the kernel has
    return layer if ttype is None or ttype.rank == batched else None


def _fold_into(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    weight = layer.weight.detach()
    w = weight.double()
    if isinstance(layer, _CONV_TRANSPOSES):     # [in, out / groups, *k]: scale axis 1 within each group
        g = layer.groups
        grouped = w.reshape(g, w.shape[0] // g, w.shape[1], *w.shape[2:])
        w = (grouped * scale.reshape(g, 1, -1, *(1,) * (w.dim() - 2))).reshape(w.shape)
    else:                                       # [out, ...]
        w = w * scale.reshape(-1, *(1,) * (w.dim() - 1))
    bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(scale)
    layer.weight = nn.Parameter(w.to(weight.dtype), requires_grad=weight.requires_grad)
    layer.bias = nn.Parameter((scale * bias + shift).to(weight.dtype), requires_grad=weight.requires_grad)


def fold_batch_norm(gm: fx.GraphModule) -> dict[str, int]:
    """Fold every BatchNorm that follows a conv / transposed conv / linear layer, in place; counts by layer."""
    gm.eval()
    counts = {"conv": 0, "conv_transpose": 0, "linear": 0}
    calls = call_counts(gm)
    for node in list(gm.graph.nodes):
        layer = _foldable(gm, node, calls)
        if layer is None:
            continue
        _fold_into(layer, *bn_scale_shift(module_of(gm, node)))
        counts[_kind(layer)] += 1
        replace_node(node, node.args[0])
    gm.delete_all_unused_submodules()
    finish(gm)
    return counts
