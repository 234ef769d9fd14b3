"""``crop``: cut a tensor down to the size of another (Caffe's ``Crop`` layer; U-Net's crop-and-copy).

Dense-prediction networks built from unpadded convolutions produce maps that are smaller, or larger, than
the maps they are fused with: FCN (Long et al., CVPR 2015) crops each skip score map to the upsampled
coarse scores at a fixed offset (the authors' Caffe ``Crop`` layers, offsets 5, 9 and 31 in voc-fcn8s),
U-Net (Ronneberger et al., MICCAI 2015) centre-crops each contracting-path map to the up-convolved map
before concatenating them. The sizes involved follow from the input resolution through every layer, so a
spec cannot sensibly spell them as ``slice`` bounds; ``crop`` takes them from its second input instead,
which is what both reference implementations do.

``crop(x, like)`` keeps axes ``< axis`` of ``x`` and cuts every axis ``>= axis`` to ``like``'s size, starting
at ``offset``: one int for every cropped axis, a list (one per cropped axis), or ``'center'`` (the window
centred, ``(size(x) - size(like)) // 2``: the floor of half the difference, so an odd surplus leaves the
extra element at the end). Only ``like``'s shape is read. No parameters, MACs or FLOPs.
"""

from __future__ import annotations

import operator

from nasforge.errors import SpecError
from nasforge.ops.registry import Attr, Call, Example, OpContext, OpDef, normalize_axis, register
from nasforge.types import TensorType, dim_str, is_static


@register
class Crop(OpDef):
    """Crop the first input to the size of the second on every axis from ``axis`` on (Caffe's ``Crop``
    layer): the window starts at ``offset`` (an int for all cropped axes, one int per cropped axis, or
    ``'center'``: ``(size - target) // 2``). The second input only lends its shape."""

    name = "crop"
    category = "tensor"
    attrs = (
        Attr("axis", "int", 2, "first axis to crop; it and every later axis take the second input's size"),
        Attr("offset", "int|ints|str", "center",
             "start of the window: an int, one int per cropped axis, or 'center'"),
    )
    arity = (2, 2)
    examples = (
        Example({"offset": 5}, [(2, 21, 44, 44), (2, 21, 34, 34)]),              # FCN's score_pool4c
        Example({}, [(2, 3, 9, 10), (2, 5, 4, 6)]),                              # centred, odd surplus
        Example({"axis": 1, "offset": [1, 0, 2]}, [(2, 6, 7, 8), (2, 3, 5, 4)]),
        Example({"axis": -1, "offset": 0}, [(2, 3, 8), (2, 3, 8)]),              # nothing to cut
    )

    def check_attrs(self, attrs: dict) -> None:
        offset = attrs["offset"]
        if isinstance(offset, str):
            if offset != "center":
                raise SpecError("attribute 'offset' of crop has an unsupported value",
                                expected="an int, a list of ints, or 'center'", found=repr(offset), key="offset")
            return
        values = [offset] if isinstance(offset, int) else offset
        if not values or any(v < 0 for v in values):
            raise SpecError("crop offsets must be non-negative", expected="integers >= 0",
                            found=repr(offset), key="offset")

    def starts(self, ctx: OpContext) -> tuple[int, list[int]]:
        """The first cropped axis and the window's start on each cropped axis (checked)."""
        x, like = ctx.inputs
        if like.rank != x.rank:
            raise ctx.fail("crop needs a second input of the same rank", expected=f"rank {x.rank}",
                           found=f"{like} for {x}")
        axis = normalize_axis(ctx, ctx["axis"], x.rank)
        offset = ctx["offset"]
        n = x.rank - axis
        if isinstance(offset, list) and len(offset) != n:
            raise ctx.fail(f"crop from axis {axis} of a rank-{x.rank} tensor needs {n} offset(s)",
                           expected=f"{n} offsets (one per cropped axis)", found=repr(offset))
        starts = []
        for k, d in enumerate(range(axis, x.rank)):
            size, target = x.shape[d], like.shape[d]
            wanted = 0 if offset == "center" else (offset if isinstance(offset, int) else offset[k])
            if size == target and (offset == "center" or wanted == 0):
                starts.append(0)                        # nothing to cut (also for a symbolic batch axis)
                continue
            if not (is_static(size) and is_static(target)):
                raise ctx.fail(f"crop needs static sizes on cropped axis {d}", expected="integer dimensions",
                               found=f"{dim_str(size)} to {dim_str(target)} ({x} to {like})")
            start = (int(size) - int(target)) // 2 if offset == "center" else wanted
            if start < 0 or start + int(target) > int(size):
                raise ctx.fail(f"crop window does not fit on axis {d}",
                               expected=f"offset + {target} <= {size}",
                               found=f"offset {start} for {x} cropped to {like}")
            starts.append(start)
        return axis, starts

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x, like = ctx.inputs
        axis, _ = self.starts(ctx)
        return [x.with_shape(x.shape[:axis] + like.shape[axis:])]

    def lower(self, ctx: OpContext) -> Call:
        x, like = ctx.inputs
        axis, starts = self.starts(ctx)
        index = (slice(None),) * axis + tuple(
            slice(None) if s == 0 and x.shape[d] == like.shape[d] else slice(s, s + int(like.shape[d]))
            for s, d in zip(starts, range(axis, x.rank)))
        return Call(crop_to, (index,))


def crop_to(x, like, index):
    """``x[index]``; ``like`` is there only so that the graph shows what ``x`` is cropped to."""
    return operator.getitem(x, index)
