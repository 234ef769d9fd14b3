"""Windows: ``window_partition``, ``window_reverse`` and ``window_attention`` (Swin Transformer).

Swin (Liu et al., ICCV 2021) computes self-attention inside non-overlapping ``wh x ww`` windows of a
channels-last feature map ``[B, H, W, C]``, and in every other block first rolls the map by half a window
(``roll``) so that the windows straddle the previous block's window borders. The layout used here keeps
the window grid in the shape, so every rule sees the sizes it needs:

* ``window_partition`` ``[B, H, W, C] -> [B, H/wh, W/ww, wh, ww, C]`` (the window grid, then each window),
* ``window_attention`` on ``[B, Gh, Gw, wh, ww, C]``: multi-head self-attention within each window, with a
  learned relative position bias and, for a map rolled by ``-shift`` before partitioning, the mask that
  keeps tokens the roll brought together from attending to each other,
* ``window_reverse`` ``[B, Gh, Gw, wh, ww, C] -> [B, Gh*wh, Gw*ww, C]``, the inverse of the partition.

The reference implementation (microsoft/Swin-Transformer) folds the window grid into the batch
(``[B*nW, wh*ww, C]``); the arithmetic is the same. Keeping ``B`` apart keeps the batch symbolic.
Partition and reverse only move data (0 FLOPs). ``window_attention`` costs its projections and its two
attention products, as ``attention`` (see ``nasforge/ops/attention.py``): per sample with ``L = H*W``
tokens and ``N = wh*ww`` tokens per window, ``L*C*3C + 2*L*N*C + L*C*C`` MACs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from nasforge.errors import SpecError
from nasforge.ops.registry import (Attr, Call, Example, OpContext, OpDef, nn, register, require_float,
                                   require_positive)
from nasforge.types import TensorType, dim_str, is_static

SHIFT_MASK_FILL = -100.0
"""The additive mask value between tokens of different regions (the reference code's -100, not -inf)."""


def _pair(value: int | list[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def _check_pair(attrs: dict, name: str, minimum: int) -> None:
    value = attrs[name]
    values = [value] if isinstance(value, int) else value
    if len(values) not in (1, 2) or any(v < minimum for v in values):
        raise SpecError(f"attribute {name!r} needs one value or two (rows, columns), each >= {minimum}",
                        expected=f"an int or [h, w] with values >= {minimum}", found=repr(value), key=name)
    if isinstance(value, list) and len(value) == 1:
        attrs[name] = value[0]


def _require_windows(ctx: OpContext, what: str) -> tuple[int, int, int, int, int]:
    """Check a ``[B, Gh, Gw, wh, ww, C]`` window tensor; return its static ``(Gh, Gw, wh, ww, C)``."""
    x = ctx.x
    if x.rank != 6:
        raise ctx.fail(f"{what} takes windows [B, Gh, Gw, wh, ww, C] (the output of window_partition)",
                       expected="rank 6", found=str(x))
    require_float(ctx, x, f"{what} input")
    if not all(is_static(d) for d in x.shape[1:]):
        raise ctx.fail(f"{what} needs static window grid, window and channel sizes",
                       expected="integers after the batch axis", found=str(x))
    return tuple(int(d) for d in x.shape[1:])  # type: ignore[return-value]


# -- functions (the lowerings) ------------------------------------------------------------------------

def partition_windows(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """``[B, H, W, C] -> [B, H/wh, W/ww, wh, ww, C]``."""
    x = x.unflatten(2, (x.shape[2] // ww, ww)).unflatten(1, (x.shape[1] // wh, wh))  # B Gh wh Gw ww C
    return x.permute(0, 1, 3, 2, 4, 5)


def reverse_windows(x: torch.Tensor) -> torch.Tensor:
    """``[B, Gh, Gw, wh, ww, C] -> [B, Gh*wh, Gw*ww, C]``."""
    return x.permute(0, 1, 3, 2, 4, 5).flatten(3, 4).flatten(1, 2)


def relative_position_index(wh: int, ww: int) -> torch.Tensor:
    """``[N, N]`` (``N = wh*ww``) indices into a ``(2wh-1)*(2ww-1)`` table of relative offsets: token pair
    ``(i, j)`` reads row ``(dy + wh - 1) * (2ww - 1) + (dx + ww - 1)`` for the offset ``(dy, dx) = i - j``."""
    rows, cols = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])          # 2, N
    offsets = coords[:, :, None] - coords[:, None, :]               # 2, N, N
    return (offsets[0] + wh - 1) * (2 * ww - 1) + (offsets[1] + ww - 1)


def shift_mask(grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """The additive mask ``[Gh*Gw, N, N]`` of shifted-window attention for a map of ``grid`` windows rolled
    by ``-shift`` before partitioning.

    Along each axis of length ``S = G * w`` the roll brings the first ``s`` rows round to the end, so the
    last window holds up to three regions that were not adjacent in the original map: rows ``[0, S - w)``,
    ``[S - w, S - s)`` and ``[S - s, S)``. Two tokens of a window attend to each other only when they lie in
    the same region along both axes; other pairs get ``SHIFT_MASK_FILL``. A zero shift on an axis masks
    nothing along it.
    """
    labels = []
    for g, w, s in zip(grid, window, shift):
        pos = torch.arange(g * w)
        label = (pos >= g * w - w).long()
        if s:
            label = label + (pos >= g * w - s).long()
        labels.append(label)
    region = labels[0][:, None] * 3 + labels[1][None, :]           # H, W
    region = partition_windows(region[None, :, :, None], *window)   # 1, Gh, Gw, wh, ww, 1
    region = region.reshape(grid[0] * grid[1], window[0] * window[1])
    differ = region[:, None, :] != region[:, :, None]
    return torch.zeros(differ.shape).masked_fill(differ, SHIFT_MASK_FILL)


class WindowAttention(nn.Module):
    """Multi-head self-attention within windows ``[B, Gh, Gw, wh, ww, C]``, parameters as the Swin
    reference's ``WindowAttention``: ``relative_position_bias_table [(2wh-1)(2ww-1), heads]``, ``qkv``
    Linear(C, 3C) and ``proj`` Linear(C, C). The relative position index and the shift mask are
    non-persistent buffers computed from the static sizes (the reference stores them in its checkpoints;
    they are not learned, so loading one needs ``strict=False`` or those keys dropped)."""

    def __init__(self, grid: tuple[int, int], window: tuple[int, int], channels: int, heads: int,
                 shift: tuple[int, int] = (0, 0), relative_bias: bool = True, qkv_bias: bool = True,
                 proj_bias: bool = True, scale: float | None = None, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        self.window = window
        self.heads = heads
        self.scale = scale
        self.attn_drop = attn_drop
        n = window[0] * window[1]
        if relative_bias:
            table = torch.empty((2 * window[0] - 1) * (2 * window[1] - 1), heads)
            self.relative_position_bias_table = nn.Parameter(nn.init.trunc_normal_(table, std=0.02, a=-0.04, b=0.04))
            self.register_buffer("relative_position_index", relative_position_index(*window).flatten(),
                                 persistent=False)
        else:
            self.relative_position_bias_table = None
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.n = n
        if any(shift):
            self.register_buffer("shift_mask", shift_mask(grid, window, shift)[:, None], persistent=False)
        else:
            self.shift_mask = None

    def bias(self) -> torch.Tensor | None:
        """The additive score bias ``[heads, N, N]`` or ``[nW, heads, N, N]`` (position bias + shift mask)."""
        bias = None
        if self.relative_position_bias_table is not None:
            table = self.relative_position_bias_table[self.relative_position_index]
            bias = table.view(self.n, self.n, self.heads).permute(2, 0, 1)
        if self.shift_mask is not None:
            bias = self.shift_mask if bias is None else bias + self.shift_mask
        return bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.flatten(3, 4).flatten(1, 2)                                          # B nW N C
        b, windows = x.shape[0], x.shape[1]
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv.flatten(1, 2).unbind(0)                                      # B*nW heads N d
        bias = self.bias()
        if bias is not None:
            # one full [B*nW, heads, N, N] mask: CPU attention kernels are far slower on broadcast masks
            bias = bias.to(q.dtype).expand(b, windows, self.heads, self.n, self.n).reshape(-1, self.heads,
                                                                                         self.n, self.n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale,
                                             dropout_p=self.attn_drop if self.training else 0.0)
        out = self.proj_drop(self.proj(out.transpose(1, 2).flatten(2)))            # B*nW N C
        return out.reshape(shape)

    def extra_repr(self) -> str:
        return f"window={self.window}, heads={self.heads}, masked={self.shift_mask is not None}"


# -- entries -------------------------------------------------------------------------------------------

class WindowOp(OpDef):
    """Base of the family: category ``window``."""

    category = "window"


@register
class WindowPartition(WindowOp):
    """Split a channels-last map ``[B, H, W, C]`` into non-overlapping windows ``[B, H/wh, W/ww, wh, ww, C]``
    (Swin's ``window_partition``, keeping the batch and the window grid as separate axes).

    ``window`` is ``w`` or a list of two (rows, columns); H and W must be static multiples of it (pad or
    crop first). Window ``2`` gathers every 2x2 neighbourhood: Swin's patch merging is
    ``window_partition`` (2), ``transpose`` of axes 3 and 4 (the reference concatenates the four pixels
    column-major) and ``flatten`` from axis 3. Moves data only.
    """

    name = "window_partition"
    attrs = (Attr("window", "int|ints", doc="window size: w, or a list (rows, columns)"),)
    examples = (
        Example({"window": 2}, [(2, 4, 6, 3)]),
        Example({"window": [3, 2]}, [(2, 6, 4, 5)]),
        Example({"window": 7}, [(1, 7, 7, 4)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        _check_pair(attrs, "window", 1)

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        if x.rank != 4:
            raise ctx.fail("window_partition takes a channels-last map [B, H, W, C]", expected="rank 4",
                           found=str(x))
        wh, ww = _pair(ctx["window"])
        b, h, w, c = x.shape
        for size, win, axis in ((h, wh, "H"), (w, ww, "W")):
            if not is_static(size):
                raise ctx.fail(f"window_partition needs a static {axis}", expected="an integer dimension",
                               found=f"{dim_str(size)} in {x}")
            if size % win:
                raise ctx.fail(f"the map's {axis} is not a multiple of the window",
                               expected=f"{axis} divisible by {win} (window {[wh, ww]})", found=str(x),
                               hint="pad the map, or choose a window that divides it")
        return [x.with_shape((b, h // wh, w // ww, wh, ww, c))]

    def lower(self, ctx: OpContext) -> Call:
        return Call(partition_windows, _pair(ctx["window"]))


@register
class WindowReverse(WindowOp):
    """Merge windows ``[B, Gh, Gw, wh, ww, C]`` back into the map ``[B, Gh*wh, Gw*ww, C]`` (Swin's
    ``window_reverse``; the inverse of ``window_partition``). Moves data only."""

    name = "window_reverse"
    examples = (
        Example({}, [(2, 2, 3, 2, 2, 3)]),
        Example({}, [(1, 1, 1, 7, 7, 4)]),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        if x.rank != 6:
            raise ctx.fail("window_reverse takes windows [B, Gh, Gw, wh, ww, C] (the output of window_partition)",
                           expected="rank 6", found=str(x))
        b, gh, gw, wh, ww, c = x.shape
        if not all(is_static(d) for d in (gh, gw, wh, ww)):
            raise ctx.fail("window_reverse needs a static window grid and window", expected="integers on axes 1-4",
                           found=str(x))
        return [x.with_shape((b, gh * wh, gw * ww, c))]

    def lower(self, ctx: OpContext) -> Call:
        return Call(reverse_windows)


@register
class WindowAttentionOp(WindowOp):
    """Multi-head self-attention within each window of ``[B, Gh, Gw, wh, ww, C]`` (output: same shape),
    as Swin's W-MSA / SW-MSA: ``softmax(q k^T * scale + bias + mask) v`` per window and head.

    Parameters as the Swin reference (``qkv`` Linear(C, 3C), ``proj`` Linear(C, C), and with
    ``relative_bias`` a learned ``relative_position_bias_table [(2wh-1)*(2ww-1), heads]`` read at each token
    pair's relative offset). ``shift`` is the cyclic shift the map was rolled by (``roll`` by ``-shift``
    on axes 1 and 2) before ``window_partition``: an int or a list (rows, columns), each in ``[0, window)``;
    a non-zero shift adds Swin's mask (computed from the static sizes) so that tokens the roll brought together from
    opposite borders do not attend to each other. MACs per sample: ``L*C*3C + L*C*C`` projections plus
    ``2*L*N*C`` for ``Q K^T`` and ``A V`` (``L = Gh*wh*Gw*ww`` tokens, ``N = wh*ww`` per window).
    """

    name = "window_attention"
    attrs = (
        Attr("heads", "int", doc="number of heads; must divide C"),
        Attr("shift", "int|ints", 0, "the roll before partitioning: s or (rows, columns), 0 <= s < window"),
        Attr("relative_bias", "bool", True, "learned relative position bias (Swin); false: plain window attention"),
        Attr("qkv_bias", "bool", True, "bias on the q/k/v projection"),
        Attr("proj_bias", "bool", True, "bias on the output projection"),
        Attr("scale", "float|none", None, "score scale; None means 1/sqrt(C/heads)"),
        Attr("attn_drop", "float", 0.0, "dropout probability on the attention weights (training only)"),
        Attr("proj_drop", "float", 0.0, "dropout probability on the output (training only)"),
    )
    flop_counted = True
    examples = (
        Example({"heads": 2}, [(2, 2, 2, 3, 3, 8)]),
        Example({"heads": 2, "shift": 1}, [(2, 2, 3, 3, 3, 8)]),
        Example({"heads": 3, "shift": [1, 0], "qkv_bias": False, "proj_bias": False}, [(1, 3, 2, 2, 4, 6)]),
        Example({"heads": 1, "relative_bias": False, "scale": 0.5}, [(2, 1, 1, 4, 4, 4)]),
        Example({"heads": 2, "shift": 2, "relative_bias": False}, [(1, 2, 2, 4, 4, 4)]),
        Example({"heads": 2, "shift": 1, "attn_drop": 0.5, "proj_drop": 0.5}, [(2, 2, 2, 2, 2, 4)], train=True),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "heads")
        _check_pair(attrs, "shift", 0)
        for name in ("attn_drop", "proj_drop"):
            if not 0.0 <= attrs[name] < 1.0:
                raise SpecError(f"attribute {name!r} is a dropout probability", expected="a number in [0, 1)",
                                found=repr(attrs[name]), key=name)

    def infer(self, ctx: OpContext) -> list[TensorType]:
        gh, gw, wh, ww, c = _require_windows(ctx, "window_attention")
        if c % ctx["heads"]:
            raise ctx.fail("attention heads must divide the channels", expected=f"C divisible by heads={ctx['heads']}",
                           found=str(ctx.x))
        sh, sw = _pair(ctx["shift"])
        if not (sh < wh and sw < ww):
            raise ctx.fail("the shift must be smaller than the window", expected=f"shift < window [{wh}, {ww}]",
                           found=f"shift {[sh, sw]}",
                           hint="a map no larger than one window needs no shift (Swin sets it to 0)")
        return [ctx.x]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        _, _, wh, ww, c = ctx.x.shape[1:]
        p: dict[str, tuple[int, ...]] = {}
        if ctx["relative_bias"]:
            p["relative_position_bias_table"] = ((2 * wh - 1) * (2 * ww - 1), ctx["heads"])
        p["qkv.weight"] = (3 * c, c)
        if ctx["qkv_bias"]:
            p["qkv.bias"] = (3 * c,)
        p["proj.weight"] = (c, c)
        if ctx["proj_bias"]:
            p["proj.bias"] = (c,)
        return p

    def macs(self, ctx: OpContext) -> int:
        b, gh, gw, wh, ww, c = ctx.x.concrete_shape()
        tokens, per_window = gh * gw * wh * ww, wh * ww
        return b * (tokens * c * 3 * c + 2 * tokens * per_window * c + tokens * c * c)

    def lower(self, ctx: OpContext) -> nn.Module:
        _, gh, gw, wh, ww, c = ctx.x.shape
        options: dict[str, Any] = {k: ctx[k] for k in ("relative_bias", "qkv_bias", "proj_bias", "scale",
                                                        "attn_drop", "proj_drop")}
        return WindowAttention((gh, gw), (wh, ww), c, ctx["heads"], _pair(ctx["shift"]), **options)


__all__ = ["WindowAttention", "partition_windows", "reverse_windows", "relative_position_index", "shift_mask"]
