"""Channel shuffle (ShuffleNet, Zhang et al. CVPR 2018): the permutation that lets grouped convolutions
and channel splits exchange information between groups.

``channel_shuffle`` with ``groups = g`` views the channels of ``[N, C, *spatial]`` as a ``g x C/g``
matrix and transposes it (``torch.nn.functional.channel_shuffle``): ShuffleNet's shuffle after a grouped
convolution is ``groups: g``, ShuffleNetV2's after its concat is ``groups: 2``, and the even/odd split of
Single Path One-Shot's blocks is ``groups: C/2`` followed by ``chunk`` into two. A permutation moves data
only: no parameters, MACs or FLOPs.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from nasforge.ops.registry import Attr, Call, Example, OpContext, OpDef, register, require_positive
from nasforge.types import TensorType, dim_str, is_static


@register
class ChannelShuffle(OpDef):
    """Interleave channel groups: ``[N, C, *]`` with C = g*k, channel ``i*k + j`` moves to ``j*g + i``
    (``torch.nn.functional.channel_shuffle``). ``groups`` must divide the (static) channel count."""

    name = "channel_shuffle"
    category = "tensor"
    attrs = (Attr("groups", "int", doc="number of channel groups g (C must be a multiple of g)"),)
    examples = (
        Example({"groups": 2}, [(2, 8, 3, 3)]),
        Example({"groups": 3}, [(2, 6, 5)]),
        Example({"groups": 4}, [(1, 8, 2, 2, 2)]),
    )

    def check_attrs(self, attrs: dict[str, Any]) -> None:
        require_positive(attrs, "groups")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x, groups = ctx.x, ctx["groups"]
        if x.rank < 3:
            raise ctx.fail("channel_shuffle needs [N, C, *spatial]", expected="rank >= 3", found=str(x))
        channels = x.shape[1]
        if not is_static(channels):
            raise ctx.fail("channel_shuffle needs a static channel count", expected="an integer on axis 1",
                           found=f"{dim_str(channels)} in {x}")
        if int(channels) % groups:
            raise ctx.fail(f"channel_shuffle: {groups} groups do not divide {channels} channels",
                           expected=f"a channel count that is a multiple of {groups}", found=str(x))
        return [x]

    def lower(self, ctx: OpContext) -> Call:
        return Call(F.channel_shuffle, (ctx["groups"],))
