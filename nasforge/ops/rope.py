"""Positions for decoder attention: ``rope`` (rotary embeddings), ``alibi`` (linear biases), ``attention_mask``
(causal, block-causal, sliding-window and padding masks) and ``gqa_attention`` (LLaMA-style grouped-query
self-attention that applies them).

Rotary position embedding (RoFormer, Su et al. 2021) rotates each pair of features ``(a, b)`` of a query or
key at position ``p`` by the angle ``p * theta^(-2k/R)`` for pair ``k < R/2`` (``R`` the rotated width).
Two pairings are in use and give different networks for the same weights: ``half`` pairs feature ``k`` with
``k + R/2`` (HF transformers' Llama ``rotate_half``, GPT-NeoX; the HF Llama checkpoints permute Meta's q/k
weights into this layout), ``interleaved`` pairs ``2k`` with ``2k + 1`` (Meta's LLaMA, gpt-fast, LlamaGen's
``apply_rotary_emb``). ``grid: [h, w]`` gives the 2-D axial form of LlamaGen: of the ``R/2`` pairs, the first
``R/4`` turn with the row and the last ``R/4`` with the column of a row-major ``h x w`` token grid, both with
frequencies ``theta^(-2k/(R/2))``. ``prefix`` leading positions (class or caption tokens) stand outside the
sequence: ``prefix_mode: identity`` leaves them unrotated; ``zero`` multiplies them by a zero table, which is
what LlamaGen's code does (its ``precompute_freqs_cis_2d`` prepends ``torch.zeros`` rows, so the class
token's queries and keys are zero in every layer). Tables are computed in float32 from the positions at run
time (no parameters, nothing in the state_dict) and cast to the input's dtype.

ALiBi (Press et al., ICLR 2022) adds ``m_h * (j - i)`` to the score of query ``i`` and key ``j`` in head
``h``, with the paper's slopes: ``2^(-8h/n)`` for ``h = 1..n`` when ``n`` is a power of two; otherwise the
slopes of the largest power of two ``c < n`` followed by every other slope of ``2c`` heads.

Costs: rotation is 3 FLOPs (two products and a sum) per rotated element, ALiBi 1 per score, masks nothing;
none of them has MACs, and torch's FlopCounterMode counts none. ``gqa_attention`` counts its four projections
and ``2 * T * T * heads * head_dim`` for ``Q K^T`` and ``A V`` in full, under causal and sliding-window masks
too (as papers and FlopCounterMode do); the key/value heads are repeated to the query heads before torch's
``scaled_dot_product_attention`` exactly as HF's ``repeat_kv``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from nasforge.errors import SpecError
from nasforge.ops.attention import _check_mask, _check_probabilities  # also registers CPU flash-attention FLOPs
from nasforge.ops.registry import (Attr, Example, OpContext, OpDef, nn, normalize_axis, register,
                                   require_float, require_positive)
from nasforge.types import Dim, TensorType, is_static

INT_DTYPES = ("int64", "int32")
ROTATION_FLOPS = 3
"""FLOPs per rotated element: ``a*cos`` and ``b*sin`` and their sum."""


# -- tables ------------------------------------------------------------------------------------------------

def rotary_inv_freq(dim: int, theta: float) -> torch.Tensor:
    """Inverse frequencies ``theta^(-2k/dim)`` for ``k < dim/2`` in float32 (as HF Llama and gpt-fast)."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes (float32): the geometric sequence ``2^(-8h/n)``, ``h = 1..n`` for ``n`` a
    power of two; otherwise the ``c`` slopes of the largest power of two ``c < n``, then the first ``n - c``
    of the even-indexed slopes of ``2c`` heads."""
    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    if heads & (heads - 1) == 0:
        values = geometric(heads)
    else:
        c = 1 << (heads.bit_length() - 1)
        values = geometric(c) + alibi_slopes(2 * c).tolist()[0::2][: heads - c]
    return torch.tensor(values, dtype=torch.float32)


def _broadcast_index(rank: int, axis: int, batched: bool) -> tuple[Any, ...]:
    """Index that lifts a ``[T, P]`` (or ``[B, T, P]``) table to broadcast against a rank-``rank`` input
    whose sequence axis is ``axis`` and whose last axis holds the features."""
    trailing = (None,) * (rank - axis - 2)
    if batched:
        return (slice(None),) + (None,) * (axis - 1) + (slice(None),) + trailing + (slice(None),)
    return (slice(None),) + trailing + (slice(None),)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding of the first ``rotary_dim`` features (see the module docstring).

    ``table(positions, dtype)`` gives ``cos, sin`` of shape ``[..., T, rotary_dim // 2]`` for integer
    positions; ``rotate(x, cos, sin)`` applies them to the last axis of ``x``; ``forward(x, positions)``
    does both with the sequence on ``axis`` (positions default to ``0..T-1``). ``inv_freq`` is a
    non-persistent buffer, so the state_dict holds nothing.
    """

    def __init__(self, rotary_dim: int, theta: float = 10000.0, layout: str = "half",
                 grid: Sequence[int] | None = None, prefix: int = 0, prefix_mode: str = "identity",
                 axis: int = -2) -> None:
        super().__init__()
        self.rotary_dim = rotary_dim
        self.theta = theta
        self.layout = layout
        self.grid = tuple(grid) if grid is not None else None
        self.prefix = prefix
        self.prefix_mode = prefix_mode
        self.axis = axis
        width = rotary_dim if self.grid is None else rotary_dim // 2
        self.register_buffer("inv_freq", rotary_inv_freq(width, theta), persistent=False)

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """Rotation angles ``[..., T, rotary_dim // 2]`` (float32) of integer positions ``[..., T]``."""
        p = positions - self.prefix if self.prefix else positions
        if self.grid is None:
            return p.float()[..., None] * self.inv_freq
        width = self.grid[1]
        rows = torch.div(p, width, rounding_mode="floor")
        cols = p - rows * width
        return torch.cat([rows.float()[..., None] * self.inv_freq, cols.float()[..., None] * self.inv_freq], dim=-1)

    def table(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos, sin`` of the angles, prefix positions replaced (identity: 1, 0; zero: 0, 0)."""
        angles = self.angles(positions)
        cos, sin = angles.cos(), angles.sin()
        if self.prefix:
            inside = (positions >= self.prefix)[..., None]
            cos = torch.where(inside, cos, 1.0 if self.prefix_mode == "identity" else 0.0)
            sin = torch.where(inside, sin, 0.0)
        return cos.to(dtype), sin.to(dtype)

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate the first ``rotary_dim`` features of ``x``; ``cos``/``sin`` broadcast to ``x[..., :R/2]``."""
        r = self.rotary_dim
        partial = r < x.shape[-1]
        rot = x[..., :r] if partial else x
        if self.layout == "half":
            a, b = rot[..., : r // 2], rot[..., r // 2:]
            out = rot * torch.cat([cos, cos], dim=-1) + torch.cat([-b, a], dim=-1) * torch.cat([sin, sin], dim=-1)
        else:
            a, b = rot.unflatten(-1, (r // 2, 2)).unbind(-1)
            out = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
        return torch.cat([out, x[..., r:]], dim=-1) if partial else out

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        axis = self.axis % x.dim()
        if positions is None:
            positions = torch.arange(x.shape[axis], device=x.device)
        cos, sin = self.table(positions, x.dtype)
        index = _broadcast_index(x.dim(), axis, positions.dim() == 2)
        return self.rotate(x, cos[index], sin[index])

    def extra_repr(self) -> str:
        text = f"rotary_dim={self.rotary_dim}, theta={self.theta}, layout={self.layout}"
        if self.grid is not None:
            text += f", grid={list(self.grid)}"
        if self.prefix:
            text += f", prefix={self.prefix} ({self.prefix_mode})"
        return text


def alibi_bias(slopes: torch.Tensor, queries: int, keys: int, symmetric: bool = False) -> torch.Tensor:
    """``[H, L, S]`` biases ``m_h * (j - i)`` (``-m_h * |j - i|`` if symmetric), queries aligned to the last
    ``L`` of ``S`` key positions."""
    i = torch.arange(queries, device=slopes.device)[:, None] + (keys - queries)
    j = torch.arange(keys, device=slopes.device)[None, :]
    distance = (j - i).float()
    if symmetric:
        distance = -distance.abs()
    return slopes[:, None, None] * distance


class ALiBi(nn.Module):
    """Adds ALiBi biases to attention scores ``[..., H, L, S]``; ``slopes`` is a non-persistent buffer."""

    def __init__(self, heads: int, symmetric: bool = False) -> None:
        super().__init__()
        self.symmetric = symmetric
        self.register_buffer("slopes", alibi_slopes(heads), persistent=False)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        bias = alibi_bias(self.slopes, scores.shape[-2], scores.shape[-1], self.symmetric)
        return scores + bias.to(scores.dtype)

    def extra_repr(self) -> str:
        return f"heads={self.slopes.numel()}, symmetric={self.symmetric}"


def pattern_mask(length: int, kind: str, block: int | None, window: int | None,
                 device: torch.device | None = None) -> torch.Tensor | None:
    """The ``[T, T]`` bool pattern (True = attend) of causal / block-causal / full attention with an optional
    sliding window; None for full attention without a window."""
    pos = torch.arange(length, device=device)
    i, j = pos[:, None], pos[None, :]
    allowed = None
    if kind == "causal":
        allowed = j <= i
    elif kind == "block_causal":
        allowed = torch.div(j, block, rounding_mode="floor") <= torch.div(i, block, rounding_mode="floor")
    if window is not None:
        near = (i - j < window) if kind != "full" else ((i - j).abs() < window)
        allowed = near if allowed is None else allowed & near
    return allowed


class AttentionMask(nn.Module):
    """A bool ``[B, 1, T, T]`` attention mask (True = attend) from the pattern and optional padding."""

    def __init__(self, kind: str = "causal", block: int | None = None, window: int | None = None,
                 pad_id: int | None = None) -> None:
        super().__init__()
        self.kind, self.block, self.window, self.pad_id = kind, block, window, pad_id

    def forward(self, ref: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        b, t = ref.shape[0], ref.shape[1]
        allowed = pattern_mask(t, self.kind, self.block, self.window, ref.device)
        if allowed is None:
            allowed = torch.ones(t, t, dtype=torch.bool, device=ref.device)
        mask = allowed[None, None].expand(b, 1, t, t)
        keys = None
        if self.pad_id is not None:
            keys = ref != self.pad_id
        if lengths is not None:
            within = torch.arange(t, device=ref.device)[None, :] < lengths[:, None]
            keys = within if keys is None else keys & within
        if keys is not None:
            diagonal = torch.eye(t, dtype=torch.bool, device=ref.device)
            mask = mask & (keys[:, None, None, :] | diagonal)
        return mask

    def extra_repr(self) -> str:
        return f"kind={self.kind}, block={self.block}, window={self.window}, pad_id={self.pad_id}"


class GroupedQueryAttention(nn.Module):
    """LLaMA-style self-attention on ``[B, T, C]`` with HF's parameter names: ``q_proj`` (C -> heads*D),
    ``k_proj``/``v_proj`` (C -> kv_heads*D), ``o_proj`` (heads*D -> C); rotary positions on q and k, key/value
    heads repeated ``heads // kv_heads`` times (HF's ``repeat_kv``), then scaled dot-product attention
    under the causal / sliding-window pattern, ALiBi biases and an optional mask input."""

    def __init__(self, channels: int, heads: int, kv_heads: int, head_dim: int, qkv_bias: bool = False,
                 out_bias: bool = False, rope: bool = True, theta: float = 10000.0, rotary_dim: int | None = None,
                 rope_layout: str = "half", alibi: bool = False, causal: bool = True, window: int | None = None,
                 scale: float | None = None, attn_drop: float = 0.0) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.causal, self.window, self.scale, self.attn_drop = causal, window, scale, attn_drop
        self.q_proj = nn.Linear(channels, heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(channels, kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(channels, kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(heads * head_dim, channels, bias=out_bias)
        self.rotary_emb = (RotaryEmbedding(rotary_dim or head_dim, theta, rope_layout) if rope else None)
        self.alibi = alibi
        if alibi:
            self.register_buffer("alibi_slopes", alibi_slopes(heads), persistent=False)

    def attention_mask(self, length: int, mask: torch.Tensor | None, dtype: torch.dtype,
                       device: torch.device) -> torch.Tensor | None:
        """The mask handed to SDPA: None when ``is_causal`` (or nothing) suffices, else bool or additive."""
        if self.window is None and not self.alibi and mask is None:
            return None
        allowed = pattern_mask(length, "causal" if self.causal else "full", None, self.window, device)
        additive = None
        if mask is not None:
            if mask.dtype == torch.bool:
                allowed = mask if allowed is None else allowed & mask
            else:
                additive = mask
        if self.alibi:
            bias = alibi_bias(self.alibi_slopes, length, length).to(dtype)
            additive = bias if additive is None else additive + bias
        if additive is None:
            return allowed
        if allowed is None:
            return additive
        return torch.where(allowed, additive, float("-inf"))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        length = x.shape[1]
        q = self.q_proj(x).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
        k = self.k_proj(x).unflatten(-1, (self.kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).unflatten(-1, (self.kv_heads, self.head_dim)).transpose(1, 2)
        if self.rotary_emb is not None:
            cos, sin = self.rotary_emb.table(torch.arange(length, device=x.device), q.dtype)
            q, k = self.rotary_emb.rotate(q, cos, sin), self.rotary_emb.rotate(k, cos, sin)
        groups = self.heads // self.kv_heads
        if groups > 1:
            k = k[:, :, None].expand(-1, -1, groups, -1, -1).flatten(1, 2)
            v = v[:, :, None].expand(-1, -1, groups, -1, -1).flatten(1, 2)
        attn_mask = self.attention_mask(length, mask, q.dtype, x.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.attn_drop if self.training else 0.0,
                                             is_causal=self.causal and attn_mask is None, scale=self.scale)
        return self.o_proj(out.transpose(1, 2).flatten(2))

    def extra_repr(self) -> str:
        return (f"heads={self.heads}, kv_heads={self.kv_heads}, head_dim={self.head_dim}, causal={self.causal}, "
                f"window={self.window}, alibi={self.alibi}")


# -- shared checks ---------------------------------------------------------------------------------------------

def _check_rotary(attrs: dict, rotary: str = "rotary_dim") -> None:
    """Positive theta; an even rotary width when given."""
    if attrs["theta"] <= 0:
        raise SpecError("rotary theta must be positive", expected="theta > 0", found=repr(attrs["theta"]))
    require_positive(attrs, rotary)
    if attrs[rotary] is not None and attrs[rotary] % 2:
        raise SpecError(f"{rotary} must be even (features rotate in pairs)", expected="an even integer",
                        found=repr(attrs[rotary]), key=rotary)


def _rotary_width(ctx: OpContext, width: Dim, what: str, rotary: str = "rotary_dim") -> int:
    """The rotated width: ``rotary_dim`` or the whole (static, even) feature width."""
    if not is_static(width):
        raise ctx.fail(f"{what} needs a static feature width", expected="an integer last dimension",
                       found=str(width))
    r = ctx[rotary] if ctx[rotary] is not None else width
    if r > width:
        raise ctx.fail(f"{rotary} is wider than the features", expected=f"{rotary} <= {width}", found=str(r))
    if r % 2:
        raise ctx.fail("rotary embedding needs an even feature width (features rotate in pairs)",
                       expected="an even width, or an even rotary_dim", found=f"{width} features")
    return r


# -- entries ---------------------------------------------------------------------------------------------------

@register
class Rope(OpDef):
    """Rotary position embedding of ``x [..., T, ..., D]`` (sequence on ``axis``, features last), same shape.

    The first ``rotary_dim`` features (all by default) rotate in pairs by ``position * theta^(-2k/R)``:
    ``layout: half`` pairs ``k`` with ``k + R/2`` (HF Llama's ``rotate_half``), ``interleaved`` pairs ``2k``
    with ``2k + 1`` (Meta LLaMA, LlamaGen). ``grid: [h, w]`` is LlamaGen's 2-D form (first half of the pairs
    turn with the row, second half with the column of a row-major token grid; R divisible by 4).
    ``prefix`` leading positions are outside the sequence/grid: ``prefix_mode: identity`` leaves them
    as they are, ``zero`` zeroes them (LlamaGen's zero table rows). An optional second input gives integer
    positions ``[T]`` or ``[B, T]`` (default ``0..T-1``). No parameters; 3 FLOPs per rotated element.
    """

    name = "rope"
    category = "embedding"
    arity = (1, 2)
    attrs = (
        Attr("theta", "float", 10000.0, "frequency base"),
        Attr("layout", "str", "half", "feature pairing", choices=("half", "interleaved")),
        Attr("rotary_dim", "int|none", None, "rotate only the first rotary_dim features (partial rotary)"),
        Attr("axis", "int", -2, "the sequence axis (features are the last axis)"),
        Attr("grid", "ints|none", None, "[h, w]: 2-D axial positions over a row-major token grid (LlamaGen)"),
        Attr("prefix", "int", 0, "leading positions outside the sequence or grid (class/caption tokens)"),
        Attr("prefix_mode", "str", "identity", "what prefix positions get", choices=("identity", "zero")),
    )
    examples = (
        Example({}, [(2, 3, 5, 8)]),
        Example({"layout": "interleaved", "theta": 500.0, "rotary_dim": 4}, [(2, 6, 6)]),
        Example({"layout": "interleaved", "grid": [2, 3], "prefix": 1, "prefix_mode": "zero", "axis": 1},
                [(2, 7, 3, 8)]),
        Example({}, [(2, 2, 5, 4), ((2, 5), "int64")], int_high=50),
        Example({"grid": [3, 3], "prefix": 2}, [(2, 4, 8), ((4,), "int32")], int_high=11),
    )

    def check_attrs(self, attrs: dict) -> None:
        _check_rotary(attrs)
        if attrs["prefix"] < 0:
            raise SpecError("rope prefix cannot be negative", expected="prefix >= 0", found=repr(attrs["prefix"]),
                            key="prefix")
        grid = attrs["grid"]
        if grid is not None:
            if len(grid) != 2:
                raise SpecError("rope grid is [h, w]", expected="two integers", found=repr(grid), key="grid")
            require_positive(attrs, "grid")
            if attrs["rotary_dim"] is not None and attrs["rotary_dim"] % 4:
                raise SpecError("2-D rope splits the pairs between rows and columns", expected="rotary_dim "
                                "divisible by 4", found=repr(attrs["rotary_dim"]), key="rotary_dim")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        require_float(ctx, x, "rope input")
        if x.rank < 2:
            raise ctx.fail("rope needs a sequence axis and a feature axis", expected="rank >= 2", found=str(x))
        axis = normalize_axis(ctx, ctx["axis"], x.rank)
        if axis == x.rank - 1:
            raise ctx.fail("the rope sequence axis cannot be the feature (last) axis",
                           expected=f"an axis in [{-x.rank}, {-2}]", found=str(ctx["axis"]))
        r = _rotary_width(ctx, x.shape[-1], "rope")
        length = x.shape[axis]
        if ctx["grid"] is not None:
            if r % 4:
                raise ctx.fail("2-D rope splits the pairs between rows and columns",
                               expected="a rotated width divisible by 4", found=f"{r} in {x}")
            h, w = ctx["grid"]
            if is_static(length) and len(ctx.inputs) == 1 and length > ctx["prefix"] + h * w:
                raise ctx.fail("the sequence is longer than the prefix plus the token grid",
                               expected=f"at most {ctx['prefix']} + {h}x{w} = {ctx['prefix'] + h * w} positions",
                               found=f"{length} on axis {axis} of {x}")
        if len(ctx.inputs) == 2:
            pos = ctx.inputs[1]
            if pos.dtype not in INT_DTYPES:
                raise ctx.fail("rope positions must be integers", expected="int64 or int32", found=pos.dtype)
            shapes = [f"[{length}]"] + ([f"[{x.shape[0]}, {length}]"] if axis >= 1 else [])
            batched = pos.rank == 2 and axis >= 1 and pos.shape == (x.shape[0], length)
            if not (pos.shape == (length,) or batched):
                raise ctx.fail("rope positions must be [T] or [B, T] for the input's sequence",
                               expected=" or ".join(shapes), found=str(pos))
        return [x]

    def flops(self, ctx: OpContext) -> int:
        x = ctx.x
        r = ctx["rotary_dim"] if ctx["rotary_dim"] is not None else x.shape[-1]
        return ROTATION_FLOPS * x.numel() // x.shape[-1] * r

    def lower(self, ctx: OpContext) -> nn.Module:
        r = ctx["rotary_dim"] if ctx["rotary_dim"] is not None else ctx.x.shape[-1]
        axis = normalize_axis(ctx, ctx["axis"], ctx.x.rank)
        return RotaryEmbedding(r, ctx["theta"], ctx["layout"], ctx["grid"], ctx["prefix"], ctx["prefix_mode"], axis)


@register
class Alibi(OpDef):
    """Adds ALiBi's linear biases to attention scores ``[..., H, L, S]`` (heads on axis -3, static):
    ``m_h * (j - i)`` for query ``i`` and key ``j`` (queries aligned to the last ``L`` keys), or
    ``-m_h * |j - i|`` with ``symmetric``; ``m_h`` the paper's geometric slopes. Use on explicit scores
    (``matmul`` of q and k) before ``softmax``, or set ``alibi: true`` on ``gqa_attention``. Under a causal
    mask ``m_h * (j - i)`` equals BLOOM's ``m_h * j`` after softmax. No parameters; 1 FLOP per score.
    """

    name = "alibi"
    category = "embedding"
    attrs = (Attr("symmetric", "bool", False, "bidirectional distance penalty -m*|j - i|"),)
    examples = (
        Example({}, [(2, 4, 5, 5)]),
        Example({"symmetric": True}, [(2, 3, 4, 6)]),
        Example({}, [(6, 3, 7)], symbolic_batch=False),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        require_float(ctx, x, "alibi input")
        if x.rank < 3:
            raise ctx.fail("alibi adds to attention scores [..., heads, L, S]", expected="rank >= 3", found=str(x))
        if not is_static(x.shape[-3]):
            raise ctx.fail("alibi needs a static head count on axis -3", expected="[..., H, L, S] with an integer H",
                           found=str(x))
        return [x]

    def flops(self, ctx: OpContext) -> int:
        return ctx.x.numel()

    def lower(self, ctx: OpContext) -> nn.Module:
        return ALiBi(ctx.x.shape[-3], ctx["symmetric"])


@register
class AttentionMaskOp(OpDef):
    """A bool attention mask ``[B, 1, T, T]`` (True = attend) for the sequence on axis 1 of the first input
    (token ids ``[B, T]`` or tokens ``[B, T, C]``; only its shape is read unless ``pad_id`` is set).

    ``kind``: ``causal`` (key ``j <= i``), ``block_causal`` (``j // block <= i // block``: full attention within
    a block of ``block`` tokens, causal across blocks) or ``full``. ``window`` keeps keys fewer than ``window``
    positions back (Mistral's sliding window: ``i - j < window``; both ways for ``full``). Padding: keys whose id
    equals ``pad_id`` (integer ids only) and, with a second input ``lengths [B]``, keys at positions ``>= length``
    are masked; each query still sees itself, so no row is empty. Feeds ``sdpa`` (4th input) or
    ``gqa_attention`` (``masked: true``). No FLOPs.
    """

    name = "attention_mask"
    category = "attention"
    arity = (1, 2)
    attrs = (
        Attr("kind", "str", "causal", "the attention pattern", choices=("causal", "block_causal", "full")),
        Attr("block", "int|none", None, "block size of block_causal"),
        Attr("window", "int|none", None, "sliding window: keys fewer than this many positions back"),
        Attr("pad_id", "int|none", None, "token id whose keys are masked (integer ids input)"),
    )
    examples = (
        Example({}, [((2, 5), "int64")]),
        Example({"kind": "block_causal", "block": 2, "window": 3}, [(2, 6, 4)]),
        Example({"kind": "full", "pad_id": 0}, [((2, 5), "int64")], int_high=3),
        Example({"window": 2, "pad_id": 1}, [((3, 4), "int32"), ((3,), "int64")], int_high=5),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "block", "window")
        if (attrs["kind"] == "block_causal") != (attrs["block"] is not None):
            raise SpecError("attention_mask takes block exactly with kind: block_causal",
                            expected="kind: block_causal with block: N, or neither",
                            found=f"kind: {attrs['kind']}, block: {attrs['block']}", key="block")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        ref = ctx.x
        if ref.rank < 2:
            raise ctx.fail("attention_mask reads the sequence from axis 1", expected="[B, T] ids or [B, T, C] tokens",
                           found=str(ref))
        if ctx["pad_id"] is not None and ref.dtype not in INT_DTYPES:
            raise ctx.fail("pad_id compares token ids", expected="integer ids [B, T]", found=f"{ref} ({ref.dtype})")
        b, t = ref.shape[0], ref.shape[1]
        if len(ctx.inputs) == 2:
            lengths = ctx.inputs[1]
            if lengths.dtype not in INT_DTYPES or lengths.shape != (b,):
                raise ctx.fail("attention_mask lengths are one integer per sample", expected=f"int [{b}]",
                               found=f"{lengths} ({lengths.dtype})")
        return [TensorType((b, 1, t, t), "bool")]

    def lower(self, ctx: OpContext) -> nn.Module:
        return AttentionMask(ctx["kind"], ctx["block"], ctx["window"], ctx["pad_id"])


@register
class GqaAttention(OpDef):
    """Grouped-query causal self-attention on ``[B, T, C] -> [B, T, C]`` as HF transformers' ``LlamaAttention``:
    ``q_proj`` Linear(C, heads*D), ``k_proj``/``v_proj`` Linear(C, kv_heads*D), ``o_proj`` Linear(heads*D, C)
    (HF's names, so state_dicts load), ``D = head_dim`` (default C / heads).

    ``kv_heads`` key/value heads are shared by groups of ``heads / kv_heads`` query heads (None: multi-head,
    1: multi-query). ``rope`` rotates q and k (``theta``, ``rotary_dim``, ``rope_layout`` as the ``rope``
    op); ``alibi`` adds ALiBi biases; ``causal`` and ``window`` (sliding window, ``i - j < window``) mask the
    scores; with ``masked: true`` a second input, bool (True = attend) or additive, broadcastable to
    ``[B, heads, T, T]``, is combined with them (e.g. an ``attention_mask`` padding mask). MACs: the
    projections plus ``2 * T * T * heads * D`` per sample.
    """

    name = "gqa_attention"
    category = "attention"
    arity = (1, 2)
    attrs = (
        Attr("heads", "int", doc="query heads"),
        Attr("kv_heads", "int|none", None, "key/value heads (divides heads); None means heads"),
        Attr("head_dim", "int|none", None, "per-head width; None means C / heads"),
        Attr("qkv_bias", "bool", False, "bias on q_proj, k_proj, v_proj"),
        Attr("out_bias", "bool", False, "bias on o_proj"),
        Attr("rope", "bool", True, "rotary position embedding on queries and keys"),
        Attr("theta", "float", 10000.0, "rotary frequency base"),
        Attr("rotary_dim", "int|none", None, "rotate only the first rotary_dim features of each head"),
        Attr("rope_layout", "str", "half", "rotary feature pairing", choices=("half", "interleaved")),
        Attr("alibi", "bool", False, "add ALiBi biases to the scores"),
        Attr("causal", "bool", True, "causal masking"),
        Attr("window", "int|none", None, "sliding window: attend to keys fewer than this many positions back"),
        Attr("masked", "bool", False, "a second input is an attention mask"),
        Attr("scale", "float|none", None, "score scale; None means 1/sqrt(head_dim)"),
        Attr("attn_drop", "float", 0.0, "dropout probability on the attention weights (training only)"),
    )
    flop_counted = True
    examples = (
        Example({"heads": 4, "kv_heads": 2}, [(2, 5, 16)]),
        Example({"heads": 4, "kv_heads": 1, "head_dim": 6, "qkv_bias": True, "out_bias": True, "rotary_dim": 4,
                 "rope_layout": "interleaved", "window": 3}, [(2, 7, 8)]),
        Example({"heads": 2, "rope": False, "alibi": True}, [(2, 5, 8)]),
        Example({"heads": 2, "kv_heads": 1, "masked": True}, [(2, 5, 8), ((2, 1, 5, 5), "bool")]),
        Example({"heads": 3, "causal": False, "masked": True, "alibi": True, "window": 2},
                [(2, 4, 12), (4, 4)]),
        Example({"heads": 2, "attn_drop": 0.5}, [(2, 5, 8)], train=True),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "heads", "kv_heads", "head_dim", "window")
        _check_rotary(attrs)
        _check_probabilities(attrs, "attn_drop")
        kv = attrs["kv_heads"]
        if kv is not None and attrs["heads"] % kv:
            raise SpecError("key/value heads must divide the query heads", expected=f"kv_heads dividing "
                            f"heads={attrs['heads']}", found=f"kv_heads={kv}", key="kv_heads")
        if attrs["rotary_dim"] is not None and not attrs["rope"]:
            raise SpecError("rotary_dim needs rope: true", expected="rope: true", found="rope: false",
                            key="rotary_dim")

    @staticmethod
    def _dims(ctx: OpContext) -> tuple[int, int, int]:
        """(heads, kv_heads, head_dim)."""
        heads = ctx["heads"]
        kv = ctx["kv_heads"] if ctx["kv_heads"] is not None else heads
        head_dim = ctx["head_dim"] if ctx["head_dim"] is not None else ctx.x.shape[-1] // heads
        return heads, kv, head_dim

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        require_float(ctx, x, "gqa_attention input")
        if x.rank != 3:
            raise ctx.fail("gqa_attention takes [B, T, C] tokens", expected="rank 3", found=str(x))
        c = x.shape[-1]
        if not is_static(c):
            raise ctx.fail("gqa_attention needs a static channel axis", expected="an integer last dimension",
                           found=str(x))
        if ctx["head_dim"] is None and c % ctx["heads"]:
            raise ctx.fail("heads must divide the channels when head_dim is not given",
                           expected=f"C divisible by heads={ctx['heads']}", found=str(x),
                           hint="set head_dim")
        heads, _, head_dim = self._dims(ctx)
        if ctx["rope"]:
            _rotary_width(ctx, head_dim, "gqa_attention rope")
        if ctx["masked"] != (len(ctx.inputs) == 2):
            raise ctx.fail("gqa_attention takes a mask input exactly when masked: true",
                           expected=f"{2 if ctx['masked'] else 1} input(s) with masked: {str(ctx['masked']).lower()}",
                           found=f"{len(ctx.inputs)} inputs")
        if ctx["masked"]:
            b, t = x.shape[0], x.shape[1]
            _check_mask(ctx, ctx.inputs[1], (b, heads, t, t), x.dtype)
        return [x]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        c = ctx.x.shape[-1]
        heads, kv, d = self._dims(ctx)
        p: dict[str, tuple[int, ...]] = {}
        for name, out in (("q_proj", heads * d), ("k_proj", kv * d), ("v_proj", kv * d)):
            p[f"{name}.weight"] = (out, c)
            if ctx["qkv_bias"]:
                p[f"{name}.bias"] = (out,)
        p["o_proj.weight"] = (c, heads * d)
        if ctx["out_bias"]:
            p["o_proj.bias"] = (c,)
        return p

    def macs(self, ctx: OpContext) -> int:
        b, t, c = ctx.x.concrete_shape()
        heads, kv, d = self._dims(ctx)
        projections = t * c * (2 * heads * d + 2 * kv * d)
        return b * (projections + 2 * t * t * heads * d)

    def flops(self, ctx: OpContext) -> int:
        b, t, _ = ctx.x.concrete_shape()
        heads, kv, d = self._dims(ctx)
        rotated = (ctx["rotary_dim"] or d) if ctx["rope"] else 0
        return 2 * self.macs(ctx) + ROTATION_FLOPS * b * t * (heads + kv) * rotated

    def lower(self, ctx: OpContext) -> nn.Module:
        heads, kv, d = self._dims(ctx)
        return GroupedQueryAttention(
            ctx.x.shape[-1], heads, kv, d, qkv_bias=ctx["qkv_bias"], out_bias=ctx["out_bias"], rope=ctx["rope"],
            theta=ctx["theta"], rotary_dim=ctx["rotary_dim"], rope_layout=ctx["rope_layout"], alibi=ctx["alibi"],
            causal=ctx["causal"], window=ctx["window"], scale=ctx["scale"], attn_drop=ctx["attn_drop"])
