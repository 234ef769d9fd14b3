"""Embeddings: token lookup tables, positional embeddings (learned and sin-cos) and class tokens.

Patchifying an image is not an op here: a strided ``conv2d`` followed by a flatten/transpose does it.
Learned tables (``pos_embed_learned``, ``class_token``) start from a truncated normal with std 0.02 (as
ViT/DeiT/MAE); sin-cos tables are fixed buffers, not parameters.
"""

from __future__ import annotations

import math

import torch

from nasforge.errors import SpecError
from nasforge.ops.registry import Attr, Example, OpContext, OpDef, nn, register, require_positive
from nasforge.types import FLOAT_DTYPES, TensorType


def _require_static(ctx: OpContext, t: TensorType, what: str) -> None:
    """Fail unless every non-batch axis of ``t`` is an integer (tables have a fixed shape)."""
    if not all(isinstance(d, int) for d in t.shape[1:]):
        raise ctx.fail(f"{what} needs static non-batch axes", expected="integer dimensions after the batch",
                       found=str(t))


def _require_tokens(ctx: OpContext, what: str) -> None:
    """Fail unless the input is float ``[B, N, C]`` tokens with static N and C."""
    if ctx.x.rank != 3:
        raise ctx.fail(f"{what} takes [B, N, C] tokens", expected="rank 3", found=str(ctx.x))
    _require_float(ctx, what)
    _require_static(ctx, ctx.x, what)


def _require_float(ctx: OpContext, what: str) -> None:
    if ctx.x.dtype not in FLOAT_DTYPES:
        raise ctx.fail(f"{what} takes a floating-point input", expected="a float dtype", found=ctx.x.dtype)


def _trunc_normal(*shape: int) -> nn.Parameter:
    """A parameter initialized from a normal with std 0.02 truncated at 2 std (timm's ``trunc_normal_``)."""
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(shape), std=0.02, a=-0.04, b=0.04))


def sincos_table(positions: torch.Tensor, dim: int, interleave: bool) -> torch.Tensor:
    """Sin-cos features ``[P, dim]`` of positions ``[P]`` with frequencies ``1 / 10000^(2i/dim)``, i < dim/2.

    ``interleave`` puts ``sin, cos`` of each frequency side by side (Vaswani et al.); otherwise all sines
    come first, then all cosines (MAE's layout). Computed in float64, returned as float32.
    """
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    parts = (angles.sin(), angles.cos())
    table = torch.stack(parts, dim=-1).flatten(-2) if interleave else torch.cat(parts, dim=-1)
    return table.float()


def sincos_grid_table(h: int, w: int, dim: int) -> torch.Tensor:
    """MAE's 2-D sin-cos table ``[h*w, dim]`` for row-major (h outer) tokens: the first ``dim/2`` channels
    encode the column index, the last ``dim/2`` the row index, each in MAE's sines-then-cosines layout."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.cat([sincos_table(cols.flatten(), dim // 2, False), sincos_table(rows.flatten(), dim // 2, False)],
                     dim=-1)


class LearnedPositionEmbedding(nn.Module):
    """Adds a learned table ``pos`` (shape ``[1, ...]``) to its input, using the first ``length`` rows of
    axis 1 when ``length`` is given (a longer table than the sequence)."""

    def __init__(self, shape: tuple[int, ...], length: int | None = None) -> None:
        super().__init__()
        self.pos = _trunc_normal(*shape)
        self.length = length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.pos if self.length is None else self.pos[:, : self.length])


class FixedPositionEmbedding(nn.Module):
    """Adds a fixed ``[1, N, C]`` table (a non-persistent buffer ``pos``) in the input's dtype."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("pos", table[None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pos.to(x.dtype)


class ClassTokens(nn.Module):
    """Prepends ``count`` learned tokens ``token [1, count, C]`` to ``[B, N, C]``, expanded over the batch."""

    def __init__(self, count: int, channels: int) -> None:
        super().__init__()
        self.token = _trunc_normal(1, count, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)


@register
class Embedding(OpDef):
    """Token lookup ``weight[ids]``: integer ids of any shape ``[...]`` -> ``[..., dim]`` (``nn.Embedding``).

    ``padding_idx`` marks an id whose row is zero-initialized and gets no gradient. 0 MACs (a gather).
    """

    name = "embedding"
    category = "embedding"
    attrs = (
        Attr("num", "int", doc="vocabulary size (ids in [0, num))"),
        Attr("dim", "int", doc="embedding width"),
        Attr("padding_idx", "int|none", None, "id whose row stays zero and untrained"),
    )
    examples = (
        Example({"num": 10, "dim": 4}, [((2, 5), "int64")]),
        Example({"num": 6, "dim": 3, "padding_idx": 0}, [((2, 3, 4), "int32")], int_high=6),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "num", "dim")
        pad = attrs["padding_idx"]
        if pad is not None and not -attrs["num"] <= pad < attrs["num"]:
            raise SpecError("embedding padding_idx must be a valid id", expected=f"an int in "
                            f"[{-attrs['num']}, {attrs['num'] - 1}]", found=str(pad))

    def infer(self, ctx: OpContext) -> list[TensorType]:
        if ctx.x.dtype not in ("int64", "int32"):
            raise ctx.fail("embedding takes integer token ids", expected="int64 or int32", found=ctx.x.dtype)
        return [TensorType(ctx.x.shape + (ctx["dim"],), "float32")]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        return {"weight": (ctx["num"], ctx["dim"])}

    def lower(self, ctx: OpContext) -> nn.Module:
        return nn.Embedding(ctx["num"], ctx["dim"], padding_idx=ctx["padding_idx"])


class PositionEmbedding(OpDef):
    """Shared cost model of the additive position embeddings: one add per output element, no MACs."""

    category = "embedding"

    def flops(self, ctx: OpContext) -> int:
        return ctx.outputs[0].numel()


@register
class PosEmbedLearned(PositionEmbedding):
    """Adds a learned position table ``pos`` to the input, broadcast over the batch.

    Without ``tokens`` the table has the shape of one sample, ``[1, N, C]`` for ``[B, N, C]`` tokens or
    ``[1, C, H, W]`` for a channels-first ``[B, C, H, W]`` map. With ``tokens: T`` (``[B, N, C]`` only) the
    table is ``[1, T, C]`` and its first ``N <= T`` rows are added (a maximum sequence length, as GPT-2).
    """

    name = "pos_embed_learned"
    attrs = (Attr("tokens", "int|none", None, "table length (>= N); None means exactly the input's N"),)
    examples = (
        Example({}, [(2, 5, 4)]),
        Example({"tokens": 8}, [(2, 5, 4)]),
        Example({}, [(2, 3, 4, 4)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "tokens")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        if ctx["tokens"] is None:
            if ctx.x.rank < 2:
                raise ctx.fail("pos_embed_learned needs a batch axis and at least one more",
                               expected="rank >= 2", found=str(ctx.x))
            _require_float(ctx, "pos_embed_learned")
            _require_static(ctx, ctx.x, "pos_embed_learned")
            return [ctx.x]
        _require_tokens(ctx, "pos_embed_learned with tokens")
        if ctx.x.shape[1] > ctx["tokens"]:
            raise ctx.fail("the sequence is longer than the position table", expected=f"N <= tokens={ctx['tokens']}",
                           found=str(ctx.x))
        return [ctx.x]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        if ctx["tokens"] is None:
            return {"pos": (1,) + tuple(ctx.x.shape[1:])}
        return {"pos": (1, ctx["tokens"], ctx.x.shape[2])}

    def lower(self, ctx: OpContext) -> nn.Module:
        shape = self.params(ctx)["pos"]
        return LearnedPositionEmbedding(shape, None if ctx["tokens"] is None else ctx.x.shape[1])


@register
class PosEmbedSincos(PositionEmbedding):
    """Adds a fixed sin-cos position table (a buffer, not a parameter) to ``[B, N, C]`` tokens.

    ``grid: false``: the 1-D table of "Attention is all you need", ``pe[n, 2i] = sin(n / 10000^(2i/C))``,
    ``pe[n, 2i+1] = cos(...)``; C even. ``grid: true``: MAE's 2-D table for ``N = h*w`` row-major patches
    (``h``, ``w`` default to a square grid): channels ``[0, C/2)`` encode the column, ``[C/2, C)`` the row,
    each as sines then cosines; C divisible by 4. For MAE's ``[cls] + patches`` layout, add the table to the
    patches before ``class_token`` (MAE's class position is all zeros).
    """

    name = "pos_embed_sincos"
    attrs = (
        Attr("grid", "bool", False, "2-D table over an h x w patch grid (MAE) instead of 1-D"),
        Attr("h", "int|none", None, "grid rows (grid only; None: square)"),
        Attr("w", "int|none", None, "grid columns (grid only; None: square)"),
    )
    examples = (
        Example({}, [(2, 5, 6)]),
        Example({"grid": True}, [(2, 9, 8)]),
        Example({"grid": True, "h": 2, "w": 3}, [(2, 6, 4)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "h", "w")
        given = [k for k in ("h", "w") if attrs[k] is not None]
        if given and not attrs["grid"]:
            raise SpecError("pos_embed_sincos takes h and w only with grid: true", expected="grid: true",
                            found=f"{', '.join(given)} with grid: false")
        if len(given) == 1:
            raise SpecError("pos_embed_sincos needs both h and w, or neither (a square grid)",
                            expected="h and w", found=f"only {given[0]}")

    def _grid(self, ctx: OpContext) -> tuple[int, int]:
        """The (h, w) patch grid, square when not given."""
        if ctx["h"] is not None:
            return ctx["h"], ctx["w"]
        side = math.isqrt(ctx.x.shape[1])
        return side, side

    def infer(self, ctx: OpContext) -> list[TensorType]:
        _require_tokens(ctx, "pos_embed_sincos")
        n, c = ctx.x.shape[1:]
        if not ctx["grid"]:
            if c % 2:
                raise ctx.fail("the 1-D sin-cos table needs an even channel count", expected="C divisible by 2",
                               found=str(ctx.x))
            return [ctx.x]
        if c % 4:
            raise ctx.fail("the 2-D sin-cos table needs channels divisible by 4", expected="C divisible by 4",
                           found=str(ctx.x))
        h, w = self._grid(ctx)
        if h * w != n:
            expected = f"N = h*w = {h * w}" if ctx["h"] is not None else "a square token count N (or give h and w)"
            raise ctx.fail("the token count does not match the patch grid", expected=expected, found=str(ctx.x))
        return [ctx.x]

    def lower(self, ctx: OpContext) -> nn.Module:
        n, c = ctx.x.shape[1:]
        if ctx["grid"]:
            return FixedPositionEmbedding(sincos_grid_table(*self._grid(ctx), c))
        return FixedPositionEmbedding(sincos_table(torch.arange(n), c, interleave=True))


@register
class ClassToken(OpDef):
    """Prepends ``count`` learned tokens to ``[B, N, C]`` -> ``[B, N + count, C]`` (parameter ``token``
    ``[1, count, C]``, expanded over the batch).

    ViT's class token is ``count: 1``; DeiT's class + distillation pair is ``count: 2`` (row 0 the class
    token, row 1 the distillation token; timm keeps them as two ``[1, 1, C]`` parameters, same count).
    """

    name = "class_token"
    category = "embedding"
    attrs = (Attr("count", "int", 1, "number of tokens to prepend"),)
    examples = (
        Example({}, [(2, 5, 4)]),
        Example({"count": 2}, [(2, 3, 6)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "count")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        _require_tokens(ctx, "class_token")
        b, n, c = ctx.x.shape
        return [ctx.x.with_shape((b, n + ctx["count"], c))]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        return {"token": (1, ctx["count"], ctx.x.shape[2])}

    def lower(self, ctx: OpContext) -> nn.Module:
        return ClassTokens(ctx["count"], ctx.x.shape[2])
