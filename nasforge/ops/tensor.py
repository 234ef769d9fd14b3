"""Tensor manipulation: views and copies that move data without arithmetic.

``reshape``, ``flatten``, ``permute``, ``transpose``, ``unsqueeze``, ``squeeze``, ``expand``, ``split`` and
``chunk`` (several outputs), ``concat``, ``stack``, ``slice``, ``pad`` and ``roll``. None of them has
parameters, MACs or FLOPs. Axes may be negative (counted from the end, as in Python). Symbolic dimensions
(the batch ``B``) pass through wherever the op does not need their value; where it does (splitting,
slicing or padding that axis) the rule fails with a clear message.
"""

from __future__ import annotations

import operator
from typing import Sequence

import torch
import torch.nn.functional as F

from nasforge.errors import SpecError
from nasforge.ops.registry import (Attr, Call, Example, OpContext, OpDef, normalize_axis, register,
                                   require_positive)
from nasforge.types import Dim, Sym, TensorType, dim_div, dim_mul, dim_str, is_static


def static_dim(ctx: OpContext, t: TensorType, axis: int, op: str) -> int:
    """The size of ``t`` on ``axis``, failing clearly where it is symbolic."""
    d = t.shape[axis]
    if not is_static(d):
        raise ctx.fail(f"{op} needs a static size on axis {axis}", expected="an integer dimension",
                       found=f"{dim_str(d)} in {t}")
    return int(d)


def add_dims(ctx: OpContext, dims: Sequence[Dim], what: str) -> Dim:
    """Sum of dimensions (symbolic where they share their symbols), failing where it is not a monomial."""
    total: Dim = 0
    try:
        for d in dims:
            total = d + total if isinstance(d, Sym) else total + d
    except ValueError:
        raise ctx.fail(f"cannot add the sizes of {what}", expected="static sizes, or symbolic ones that add up",
                       found=" + ".join(dim_str(d) for d in dims)) from None
    return total


def same_dtype(ctx: OpContext, op: str) -> None:
    """Fail unless every input has the first one's dtype."""
    if any(t.dtype != ctx.x.dtype for t in ctx.inputs):
        raise ctx.fail(f"{op} inputs must share a dtype", expected=f"all {ctx.x.dtype}",
                       found=", ".join(str(t) for t in ctx.inputs))


class LayoutOp(OpDef):
    """Base of the family: category ``tensor``, no cost."""

    category = "tensor"


@register
class Reshape(LayoutOp):
    """Reshape to ``to`` (not ``shape``: that key declares a node's expected output shape in specs):
    integers, at most one ``-1`` (solved from the element count, symbolically: ``[B, 3, 4, 4] -> [B, -1]``
    gives ``[B, 48]``, ``[B, N, C] -> [-1, C]`` gives ``[B*N, C]``) and symbol names that keep a symbolic
    dimension of the input (``B``). On concrete inputs (symbols already bound) a name takes the input's
    size at the same position. The result may hold at most one symbolic dimension; it lowers to
    ``torch.reshape`` with ``-1`` there."""

    name = "reshape"
    attrs = (Attr("to", "shape", doc="target shape: ints, one -1 at most, symbol names such as B"),)
    examples = (
        Example({"to": ["B", -1]}, [(2, 3, 4, 4)]),
        Example({"to": [-1, 4]}, [(2, 3, 4)]),
        Example({"to": ["B", 3, -1, 2]}, [(2, 4, 6)]),
        Example({"to": [2, 3, 4]}, [(2, 12)], symbolic_batch=False),
    )

    def check_attrs(self, attrs: dict) -> None:
        shape = attrs["to"]
        if shape.count(-1) > 1 or any(isinstance(d, int) and d != -1 and d < 1 for d in shape):
            raise SpecError("reshape target has invalid sizes", expected="positive ints, at most one -1, symbols",
                            found=repr(shape), key="to")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x, shape = ctx.x, ctx["to"]
        dims = [self.resolve(ctx, d, i) if isinstance(d, str) else d for i, d in enumerate(shape)]
        total = dim_mul(x.shape)
        if -1 in dims:
            known = dim_mul(d for d in dims if d != -1)
            try:
                dims[dims.index(-1)] = dim_div(total, known)
            except ValueError:
                raise ctx.fail("reshape cannot solve -1: the element count does not divide",
                               expected=f"{dim_str(total)} elements, a multiple of {dim_str(known)}",
                               found=f"{x} -> {shape}") from None
        elif dim_mul(dims) != total:
            raise ctx.fail("reshape changes the number of elements", expected=f"{dim_str(total)} elements",
                           found=f"{dim_str(dim_mul(dims))} in {x} -> {shape}")
        if sum(not is_static(d) for d in dims) > 1:
            raise ctx.fail("reshape can keep at most one symbolic dimension",
                           expected="one symbolic dimension (torch.reshape takes one -1)",
                           found=str(x.with_shape(dims)))
        return [x.with_shape(dims)]

    def resolve(self, ctx: OpContext, name: str, position: int) -> Dim:
        """The dimension a symbol name stands for (see the class docstring)."""
        x = ctx.x
        symbols = {s for d in x.shape if isinstance(d, Sym) for s in d.symbols}
        if name in symbols:
            return Sym.of(name)
        if not symbols and position < x.rank:
            return x.shape[position]
        raise ctx.fail(f"reshape target names the symbol {name!r}, which the input does not have",
                       expected="symbols of the input: " + (", ".join(sorted(symbols)) or "none"),
                       found=str(x))

    def lower(self, ctx: OpContext) -> Call:
        return Call(torch.reshape, ([d if is_static(d) else -1 for d in ctx.outputs[0].shape],))


@register
class Flatten(LayoutOp):
    """Merge axes ``start..end`` (inclusive) into one, as ``torch.flatten``: ``[B, C, H, W] -> [B, C*H*W]``."""

    name = "flatten"
    attrs = (
        Attr("start", "int", 1, "first axis to merge"),
        Attr("end", "int", -1, "last axis to merge (inclusive)"),
    )
    examples = (
        Example({}, [(2, 3, 4, 5)]),
        Example({"start": 0, "end": 1}, [(2, 3, 4)]),
        Example({"start": 1, "end": 2}, [(2, 3, 4, 5)]),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        start, end = (normalize_axis(ctx, ctx[k], x.rank) for k in ("start", "end"))
        if start > end:
            raise ctx.fail("flatten start axis comes after its end axis", expected="start <= end",
                           found=f"start={ctx['start']}, end={ctx['end']} on {x}")
        return [x.with_shape(x.shape[:start] + (dim_mul(x.shape[start:end + 1]),) + x.shape[end + 1:])]

    def lower(self, ctx: OpContext) -> Call:
        return Call(torch.flatten, (ctx["start"], ctx["end"]))


@register
class Permute(LayoutOp):
    """Reorder all axes: output axis ``i`` is input axis ``dims[i]`` (``[0, 2, 3, 1]``: NCHW to NHWC)."""

    name = "permute"
    attrs = (Attr("dims", "ints", doc="a permutation of the input axes"),)
    examples = (
        Example({"dims": [0, 2, 3, 1]}, [(2, 3, 4, 5)]),
        Example({"dims": [0, -1, 1]}, [(2, 3, 4)]),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x, dims = ctx.x, ctx["dims"]
        axes = [normalize_axis(ctx, d, x.rank) for d in dims]
        if sorted(axes) != list(range(x.rank)):
            raise ctx.fail("permute dims are not a permutation of the input axes",
                           expected=f"each of 0..{x.rank - 1} once", found=f"{dims} for {x}")
        return [x.with_shape(x.shape[a] for a in axes)]

    def lower(self, ctx: OpContext) -> Call:
        # Non-negative axes: the ONNX exporter writes negative ones into Transpose, which ONNX Runtime refuses.
        return Call(torch.permute, ([d % ctx.x.rank for d in ctx["dims"]],))


@register
class Transpose(LayoutOp):
    """Swap two axes (``[B, N, C] -> [B, C, N]`` with ``dim0=1, dim1=2``)."""

    name = "transpose"
    attrs = (
        Attr("dim0", "int", doc="first axis"),
        Attr("dim1", "int", doc="second axis"),
    )
    examples = (
        Example({"dim0": 1, "dim1": 2}, [(2, 3, 4)]),
        Example({"dim0": -1, "dim1": -2}, [(2, 3, 4, 5)]),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        a, b = (normalize_axis(ctx, ctx[k], x.rank) for k in ("dim0", "dim1"))
        shape = list(x.shape)
        shape[a], shape[b] = shape[b], shape[a]
        return [x.with_shape(shape)]

    def lower(self, ctx: OpContext) -> Call:
        return Call(torch.transpose, (ctx["dim0"], ctx["dim1"]))


@register
class Unsqueeze(LayoutOp):
    """Insert a size-1 axis at ``axis`` (an axis of the output: ``-1`` appends)."""

    name = "unsqueeze"
    attrs = (Attr("axis", "int", doc="position of the new axis in the output"),)
    examples = (
        Example({"axis": 1}, [(2, 3)]),
        Example({"axis": -1}, [(2, 3)]),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        axis = normalize_axis(ctx, ctx["axis"], x.rank + 1)
        return [x.with_shape(x.shape[:axis] + (1,) + x.shape[axis:])]

    def lower(self, ctx: OpContext) -> Call:
        return Call(torch.unsqueeze, (ctx["axis"],))


@register
class Squeeze(LayoutOp):
    """Remove the size-1 axis ``axis`` (an axis of another size is an error, not a silent no-op)."""

    name = "squeeze"
    attrs = (Attr("axis", "int", doc="the size-1 axis to remove"),)
    examples = (
        Example({"axis": 1}, [(2, 1, 3)]),
        Example({"axis": -1}, [(2, 3, 1)]),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        axis = normalize_axis(ctx, ctx["axis"], x.rank)
        if x.shape[axis] != 1:
            raise ctx.fail(f"squeeze axis {ctx['axis']} does not have size 1", expected="size 1",
                           found=f"{dim_str(x.shape[axis])} in {x}")
        return [x.with_shape(x.shape[:axis] + x.shape[axis + 1:])]

    def lower(self, ctx: OpContext) -> Call:
        return Call(torch.squeeze, (ctx["axis"],))


@register
class Expand(LayoutOp):
    """Broadcast to ``to`` without copying (``torch.broadcast_to``, i.e. ``Tensor.expand``): ``-1`` keeps an
    axis, a size-1 axis may grow to any size, and extra leading axes may be added (with explicit sizes)."""

    name = "expand"
    attrs = (Attr("to", "ints", doc="target sizes, -1 to keep an axis"),)
    examples = (
        Example({"to": [-1, 4, 3]}, [(2, 1, 3)]),
        Example({"to": [5, -1, 3, -1]}, [(2, 1, 4)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        if any(d == 0 or d < -1 for d in attrs["to"]):
            raise SpecError("expand target has invalid sizes", expected="positive ints or -1",
                            found=repr(attrs["to"]), key="to")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x, shape = ctx.x, ctx["to"]
        new = len(shape) - x.rank
        if new < 0:
            raise ctx.fail("expand target has fewer axes than the input", expected=f"at least {x.rank} sizes",
                           found=f"{shape} for {x}")
        if -1 in shape[:new]:
            raise ctx.fail("expand cannot keep (-1) an axis the input does not have",
                           expected=f"explicit sizes for the {new} new leading axes", found=repr(shape))
        out: list[Dim] = list(shape[:new])
        for d, want in zip(x.shape, shape[new:]):
            if want != -1 and d not in (1, want):
                raise ctx.fail("expand can only grow size-1 axes", expected="-1, the same size, or a size-1 axis",
                               found=f"{x} -> {shape}")
            out.append(d if want == -1 else want)
        return [x.with_shape(out)]

    def lower(self, ctx: OpContext) -> Call:
        return Call(torch.broadcast_to, (ctx["to"],))


MAX_PIECES = 4096
"""The most outputs a split may make: more is a mistake (a tensor split into single channels is still
fine up to this width), and the type list would otherwise grow without bound."""


@register
class Split(LayoutOp):
    """Split along ``axis`` into several outputs: ``sizes`` as a list gives each piece's size (they must
    add up to the axis), as an int the size of every piece (the last may be smaller), as ``torch.split``."""

    name = "split"
    returns_sequence = True
    attrs = (
        Attr("sizes", "int|ints", doc="piece sizes, or one size for all pieces"),
        Attr("axis", "int", 1, "axis to split (default: channels)"),
    )
    examples = (
        Example({"sizes": [2, 4]}, [(2, 6, 3)]),
        Example({"sizes": 2, "axis": -1}, [(2, 3, 5)]),
        Example({"sizes": 3}, [(2, 6)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "sizes")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x, sizes = ctx.x, ctx["sizes"]
        axis = normalize_axis(ctx, ctx["axis"], x.rank)
        n = static_dim(ctx, x, axis, "split")
        if isinstance(sizes, int):
            if -(-n // sizes) > MAX_PIECES:
                raise ctx.fail(f"split would make {-(-n // sizes):,} outputs", expected=f"at most {MAX_PIECES:,} pieces",
                               found=f"pieces of {sizes} over an axis of {n}")
            sizes = [sizes] * (n // sizes) + [n % sizes] * bool(n % sizes)
        elif sum(sizes) != n:
            raise ctx.fail(f"split sizes do not add up to axis {ctx['axis']}", expected=f"a sum of {n}",
                           found=f"{sizes} (sum {sum(sizes)}) for {x}")
        return [x.with_shape(x.shape[:axis] + (s,) + x.shape[axis + 1:]) for s in sizes]

    def lower(self, ctx: OpContext) -> Call:
        return Call(torch.split, (ctx["sizes"], ctx["axis"]))


@register
class Chunk(LayoutOp):
    """Split along ``axis`` into exactly ``chunks`` outputs of ``ceil(n / chunks)`` (the last may be
    smaller), as ``torch.chunk``; sizes where torch would return fewer pieces are an error."""

    name = "chunk"
    returns_sequence = True
    attrs = (
        Attr("chunks", "int", doc="number of outputs"),
        Attr("axis", "int", 1, "axis to split (default: channels)"),
    )
    examples = (
        Example({"chunks": 2}, [(2, 6, 3)]),
        Example({"chunks": 3, "axis": -1}, [(2, 3, 7)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "chunks")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x, chunks = ctx.x, ctx["chunks"]
        axis = normalize_axis(ctx, ctx["axis"], x.rank)
        n = static_dim(ctx, x, axis, "chunk")
        size = -(-n // chunks)
        if size * (chunks - 1) >= n:
            raise ctx.fail(f"chunk cannot cut axis {ctx['axis']} into {chunks} pieces",
                           expected=f"a size above {size * (chunks - 1)} (torch gives pieces of {size})",
                           found=f"{n} in {x}", hint="use split with explicit sizes")
        sizes = [size] * (chunks - 1) + [n - size * (chunks - 1)]
        return [x.with_shape(x.shape[:axis] + (s,) + x.shape[axis + 1:]) for s in sizes]

    def lower(self, ctx: OpContext) -> Call:
        return Call(torch.chunk, (ctx["chunks"], ctx["axis"]))


@register
class Concat(LayoutOp):
    """Concatenate two or more inputs along ``axis`` (``torch.cat``); other axes and dtypes must match."""

    name = "concat"
    attrs = (Attr("axis", "int", 1, "axis to join (default: channels)"),)
    arity = (2, None)
    examples = (
        Example({}, [(2, 3, 4), (2, 5, 4)]),
        Example({"axis": -1}, [(2, 3), (2, 1), (2, 4)]),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        same_dtype(ctx, "concat")
        axis = normalize_axis(ctx, ctx["axis"], x.rank)
        rest = x.shape[:axis] + x.shape[axis + 1:]
        for t in ctx.inputs:
            if t.rank != x.rank or t.shape[:axis] + t.shape[axis + 1:] != rest:
                raise ctx.fail(f"concat inputs differ outside axis {ctx['axis']}",
                               expected="equal ranks and sizes on every other axis",
                               found=", ".join(str(u) for u in ctx.inputs))
        total = add_dims(ctx, [t.shape[axis] for t in ctx.inputs], f"the concatenated axis {ctx['axis']}")
        return [x.with_shape(x.shape[:axis] + (total,) + x.shape[axis + 1:])]

    def lower(self, ctx: OpContext) -> Call:
        return Call(torch.cat, (ctx["axis"],), pack_inputs=True)


@register
class Stack(LayoutOp):
    """Stack two or more equal-typed inputs along a new axis ``axis`` (an axis of the output)."""

    name = "stack"
    attrs = (Attr("axis", "int", 1, "position of the new axis in the output"),)
    arity = (2, None)
    examples = (
        Example({}, [(2, 3), (2, 3)]),
        Example({"axis": -1}, [(2, 3, 4), (2, 3, 4), (2, 3, 4)]),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        same_dtype(ctx, "stack")
        if any(t.shape != x.shape for t in ctx.inputs):
            raise ctx.fail("stack inputs must have equal shapes", expected=f"all {x}",
                           found=", ".join(str(t) for t in ctx.inputs))
        axis = normalize_axis(ctx, ctx["axis"], x.rank + 1)
        return [x.with_shape(x.shape[:axis] + (len(ctx.inputs),) + x.shape[axis:])]

    def lower(self, ctx: OpContext) -> Call:
        return Call(torch.stack, (ctx["axis"],), pack_inputs=True)


@register
class Slice(LayoutOp):
    """``x[..., start:end:step, ...]`` on one axis, with Python semantics (negative indices count from the
    end, out-of-range bounds clip); the slice must not be empty."""

    name = "slice"
    attrs = (
        Attr("axis", "int", doc="axis to slice"),
        Attr("start", "int", doc="first index (negative: from the end)"),
        Attr("end", "int|none", None, "stop index, exclusive (None: to the end)"),
        Attr("step", "int", 1, "stride"),
    )
    examples = (
        Example({"axis": 1, "start": 1, "end": 3}, [(2, 5, 4)]),
        Example({"axis": -1, "start": -4, "step": 2}, [(2, 3, 7)]),
        Example({"axis": 2, "start": 0, "end": -1, "step": 3}, [(2, 3, 8)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "step")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        axis = normalize_axis(ctx, ctx["axis"], x.rank)
        n = static_dim(ctx, x, axis, "slice")
        size = len(range(*self.index(ctx).indices(n)))
        if size <= 0:
            raise ctx.fail("slice is empty", expected="at least one element",
                           found=f"[{ctx['start']}:{ctx['end']}:{ctx['step']}] of size {n} on {x}")
        return [x.with_shape(x.shape[:axis] + (size,) + x.shape[axis + 1:])]

    def index(self, ctx: OpContext) -> slice:
        return slice(ctx["start"], ctx["end"], ctx["step"])

    def lower(self, ctx: OpContext) -> Call:
        axis = normalize_axis(ctx, ctx["axis"], ctx.x.rank)
        return Call(operator.getitem, ((slice(None),) * axis + (self.index(ctx),),))


@register
class Select(LayoutOp):
    """``x[..., index, ...]`` on one axis, dropping that axis (``torch.select``): a ViT head takes the class
    token with ``{op: select, axis: 1, index: 0}``. Negative indices count from the end."""

    name = "select"
    attrs = (
        Attr("axis", "int", doc="axis to index"),
        Attr("index", "int", doc="position along the axis (negative: from the end)"),
    )
    examples = (
        Example({"axis": 1, "index": 0}, [(2, 5, 4)]),
        Example({"axis": -1, "index": -1}, [(2, 3, 7)]),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        axis = normalize_axis(ctx, ctx["axis"], x.rank)
        n = static_dim(ctx, x, axis, "select")
        if not -n <= ctx["index"] < n:
            raise ctx.fail(f"index {ctx['index']} is out of range for axis {ctx['axis']}",
                           expected=f"an index in [{-n}, {n - 1}]", found=f"{ctx['index']} on {x}")
        return [x.with_shape(x.shape[:axis] + x.shape[axis + 1:])]

    def lower(self, ctx: OpContext) -> Call:
        return Call(torch.select, (ctx["axis"], ctx["index"]))


@register
class Pad(LayoutOp):
    """Pad with ``torch.nn.functional.pad``: ``pads`` lists (before, after) pairs starting from the
    last axis, ``[left, right, top, bottom, ...]``. ``constant`` fills with ``value`` and accepts negative
    pads (cropping); ``reflect`` (pads < size), ``replicate`` and ``circular`` (pads <= size) take
    non-negative pads on the last 1-3 axes of a tensor with one or two more axes (batch, channels)."""

    name = "pad"
    attrs = (
        Attr("pads", "ints", doc="(before, after) pairs from the last axis backwards"),
        Attr("mode", "str", "constant", "how to fill", choices=("constant", "reflect", "replicate", "circular")),
        Attr("value", "float", 0.0, "fill value (constant mode)"),
    )
    examples = (
        Example({"pads": [1, 2]}, [(2, 3, 4)]),
        Example({"pads": [1, 1, 2, 0], "mode": "reflect"}, [(2, 3, 4, 5)]),
        Example({"pads": [2, 2], "mode": "replicate"}, [(2, 3, 4)]),
        Example({"pads": [1, 0, 0, 3, 0, 1], "mode": "circular"}, [(2, 3, 4, 4, 4)]),
        Example({"pads": [-1, 1, 0, 0, 1, 1], "value": 1.5}, [(2, 3, 4)], symbolic_batch=False),
    )

    def check_attrs(self, attrs: dict) -> None:
        pads, mode = attrs["pads"], attrs["mode"]
        if not pads or len(pads) % 2:
            raise SpecError("pad needs (before, after) pairs", expected="an even, non-zero number of pads",
                            found=repr(pads), key="pads")
        if mode != "constant" and (min(pads) < 0 or len(pads) > 6):
            raise SpecError(f"{mode} padding takes non-negative pads on at most 3 axes",
                            expected="2, 4 or 6 pads >= 0", found=repr(pads), key="pads")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x, pads, mode = ctx.x, ctx["pads"], ctx["mode"]
        n_axes = len(pads) // 2
        if n_axes > x.rank:
            raise ctx.fail("pad has more (before, after) pairs than the input has axes",
                           expected=f"at most {2 * x.rank} pads", found=f"{pads} for {x}")
        if mode != "constant" and x.rank not in (n_axes + 1, n_axes + 2):
            raise ctx.fail(f"{mode} padding of {n_axes} axes needs a rank-{n_axes + 1} or rank-{n_axes + 2} "
                           "input", expected=f"rank {n_axes + 1} or {n_axes + 2}", found=str(x))
        shape = list(x.shape)
        for i in range(n_axes):
            axis, before, after = x.rank - 1 - i, pads[2 * i], pads[2 * i + 1]
            if before == after == 0:
                continue
            n = static_dim(ctx, x, axis, "pad")
            limit = {"reflect": n - 1, "circular": n}.get(mode)
            if limit is not None and max(before, after) > limit:
                raise ctx.fail(f"{mode} padding of axis {axis} is too large for its size {n}",
                               expected=f"pads <= {limit}", found=f"({before}, {after}) on {x}")
            shape[axis] = n + before + after
            if shape[axis] <= 0:
                raise ctx.fail(f"pad leaves axis {axis} empty", expected="a positive size",
                               found=f"{n} {before:+d} {after:+d} on {x}")
        return [x.with_shape(shape)]

    def lower(self, ctx: OpContext) -> Call:
        kwargs = {"mode": ctx["mode"]}
        if ctx["mode"] == "constant":
            kwargs["value"] = ctx["value"]
        return Call(F.pad, (ctx["pads"],), kwargs)


@register
class Roll(LayoutOp):
    """Roll (circularly shift) by ``shifts`` along ``axes`` (``torch.roll``); with ``axes`` None the
    tensor is rolled as if flattened, by a single int shift."""

    name = "roll"
    attrs = (
        Attr("shifts", "int|ints", doc="shift per axis (positive: towards higher indices)"),
        Attr("axes", "int|ints|none", None, "axes to roll; None rolls the flattened tensor"),
    )
    examples = (
        Example({"shifts": [1, -2], "axes": [2, 3]}, [(2, 3, 4, 5)]),
        Example({"shifts": 2, "axes": 1}, [(2, 5)]),
        Example({"shifts": 3}, [(2, 3, 4)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        shifts, axes = attrs["shifts"], attrs["axes"]
        one_axis = axes is None or isinstance(axes, int)
        if isinstance(shifts, int) != one_axis or (not one_axis and len(axes) != len(shifts)):
            raise SpecError("roll needs one shift per axis", key="shifts",
                            expected="an int shift with one or no axis, or equally long lists",
                            found=f"shifts={shifts!r}, axes={axes!r}")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        axes = ctx["axes"]
        for axis in [axes] if isinstance(axes, int) else axes or []:
            normalize_axis(ctx, axis, ctx.x.rank)
        return [ctx.x]

    def lower(self, ctx: OpContext) -> Call:
        if ctx["axes"] is None:
            # torch.roll without dims rolls the flattened tensor; spelled out (flatten, roll axis 0, reshape)
            # because the ONNX exporter asserts on a roll without dims.
            return Call(roll_flat, (ctx["shifts"],))
        return Call(torch.roll, (ctx["shifts"], ctx["axes"]))


def roll_flat(x: torch.Tensor, shift: int) -> torch.Tensor:
    """``torch.roll(x, shift)`` (no dims) as a roll of the flattened tensor along its only axis."""
    return torch.roll(x.reshape(-1), shift, 0).reshape(x.shape)
