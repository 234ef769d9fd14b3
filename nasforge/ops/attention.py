"""Attention: ``sdpa`` (functional scaled dot-product attention) and ``attention`` (multi-head, ViT-style).

Cost convention: the MACs of attention are those of its two matrix products, ``L*S*E`` for ``Q K^T`` and
``L*S*Ev`` for ``softmax(.) V`` per batch and head, counted in full even under a causal or explicit mask
(as papers and torch's FlopCounterMode do). Softmax, scaling and masking are not counted.

torch's FlopCounterMode has formulas for the CUDA attention kernels but not for the CPU flash kernel
``aten._scaled_dot_product_flash_attention_for_cpu``, which CPU ``F.scaled_dot_product_attention`` picks
for 4-D inputs with equal query and value widths and no dropout; so its count depended on which kernel
ran. Importing this module registers torch's own SDPA formulas for that kernel and its backward, so every
kernel is counted alike (the math fallback is counted through its ``bmm`` calls already).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch.utils import flop_counter

from nasforge.errors import ShapeError, SpecError
from nasforge.ops.registry import (Attr, Call, Example, OpContext, OpDef, broadcast_shapes, nn, prod,
                                   register, require_positive)
from nasforge.types import FLOAT_DTYPES, Dim, TensorType


def _count_cpu_flash_attention() -> None:
    """Teach FlopCounterMode the CPU flash-attention kernels (same formulas as the CUDA kernels)."""
    forward = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if forward is not None and forward not in flop_counter.flop_registry:
        @flop_counter.register_flop_formula(forward)
        def _forward(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                     **kwargs: Any) -> int:
            return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)
    if backward is not None and backward not in flop_counter.flop_registry:
        @flop_counter.register_flop_formula(backward)
        def _backward(grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                      out_shape: Any = None, **kwargs: Any) -> int:
            return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_count_cpu_flash_attention()


# -- shared checks ----------------------------------------------------------------------------------

def _check_probabilities(attrs: Mapping[str, Any], *names: str) -> None:
    """Raise SpecError unless every named dropout probability lies in [0, 1)."""
    for name in names:
        if not 0.0 <= attrs[name] < 1.0:
            raise SpecError(f"attribute {name!r} is a dropout probability", expected="a number in [0, 1)",
                            found=repr(attrs[name]))


def _require_float(ctx: OpContext, t: TensorType, role: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise ctx.fail(f"the {role} must be a floating-point tensor", expected="a float dtype",
                       found=f"{t} ({t.dtype})")


def _check_mask(ctx: OpContext, mask: TensorType, scores: tuple[Dim, ...], dtype: str) -> None:
    """A mask is bool (True = attend) or additive in the query dtype, broadcastable to the score shape."""
    if mask.dtype not in ("bool", dtype):
        raise ctx.fail("an attention mask must be bool (True = attend) or additive in the query dtype",
                       expected=f"bool or {dtype}", found=mask.dtype)
    try:
        fits = mask.rank <= len(scores) and broadcast_shapes(ctx, scores, mask.shape) == scores
    except ShapeError:
        fits = False
    if not fits:
        raise ctx.fail("the attention mask does not broadcast to the attention scores",
                       expected=f"a shape broadcastable to {TensorType(scores)}", found=str(mask))


# -- modules -----------------------------------------------------------------------------------------

class ScaledDotProductAttention(nn.Module):
    """``F.scaled_dot_product_attention`` with dropout on the attention weights in training mode only."""

    def __init__(self, p: float = 0.0, causal: bool = False, scale: float | None = None) -> None:
        super().__init__()
        self.p = p
        self.causal = causal
        self.scale = scale

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.p if self.training else 0.0,
                                              is_causal=self.causal, scale=self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}, causal={self.causal}, scale={self.scale}"


class MultiHeadAttention(nn.Module):
    """The part of multi-head attention after the input projections: heads, ``proj = Linear(dim, C)``,
    dropout. :class:`SelfAttention` and :class:`CrossAttention` add the projections, named as timm."""

    def __init__(self, channels: int, heads: int, dim: int, proj_bias: bool = True, causal: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.attend = ScaledDotProductAttention(attn_drop, causal)
        self.proj = nn.Linear(dim, channels, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def split(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """``[B, N, n*dim] -> [n, B, heads, N, head_dim]``."""
        return t.unflatten(-1, (n, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4)

    def attend_and_project(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           mask: torch.Tensor | None) -> torch.Tensor:
        """Per-head attention, heads merged back to ``[B, N, dim]``, then the output projection."""
        out = self.attend(q, k, v, mask)
        return self.proj_drop(self.proj(out.transpose(1, 2).flatten(2)))


class SelfAttention(MultiHeadAttention):
    """Self-attention on ``[B, N, C]`` exactly as timm's ViT ``Attention``: fused ``qkv = Linear(C, 3*dim)``."""

    def __init__(self, channels: int, heads: int, dim: int, qkv_bias: bool = True, **kwargs: Any) -> None:
        super().__init__(channels, heads, dim, **kwargs)
        self.qkv = nn.Linear(channels, 3 * dim, bias=qkv_bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.split(self.qkv(x), 3).unbind(0)
        return self.attend_and_project(q, k, v, mask)


class CrossAttention(MultiHeadAttention):
    """Queries ``[B, N, C]`` attend to a context ``[B, M, Cc]``: ``q = Linear(C, dim)``, ``kv = Linear(Cc, 2*dim)``."""

    def __init__(self, channels: int, heads: int, dim: int, context_dim: int, qkv_bias: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(channels, heads, dim, **kwargs)
        self.q = nn.Linear(channels, dim, bias=qkv_bias)
        self.kv = nn.Linear(context_dim, 2 * dim, bias=qkv_bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        k, v = self.split(self.kv(context), 2).unbind(0)
        return self.attend_and_project(self.split(self.q(x), 1)[0], k, v, mask)


# -- entries -------------------------------------------------------------------------------------------

@register
class Sdpa(OpDef):
    """Scaled dot-product attention ``softmax(q k^T * scale + mask) v`` (``F.scaled_dot_product_attention``).

    Inputs ``q [..., L, E]``, ``k [..., S, E]``, ``v [..., S, Ev]`` with equal leading axes, and optionally a
    4th input ``mask`` broadcastable to ``[..., L, S]``: bool (True = attend) or additive in the query dtype.
    Output ``[..., L, Ev]``. ``causal`` masks future positions (top-left aligned) and excludes a mask input.
    MACs ``L*S*(E + Ev)`` per leading index, counted in full under masks.
    """

    name = "sdpa"
    category = "attention"
    arity = (3, 4)
    attrs = (
        Attr("causal", "bool", False, "causal (lower-triangular) masking"),
        Attr("scale", "float|none", None, "score scale; None means 1/sqrt(E)"),
        Attr("p", "float", 0.0, "dropout probability on the attention weights (training only)"),
    )
    flop_counted = True
    examples = (
        Example({}, [(2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8)]),
        Example({"causal": True, "scale": 0.5}, [(2, 5, 4), (2, 5, 4), (2, 5, 6)]),
        Example({}, [(2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8), ((5, 7), "bool")]),
        Example({}, [(2, 5, 4), (2, 7, 4), (2, 7, 4), (2, 5, 7)]),
        Example({"p": 0.5}, [(2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 4)], train=True),
    )

    def check_attrs(self, attrs: dict) -> None:
        _check_probabilities(attrs, "p")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        q, k, v = ctx.inputs[:3]
        for t, role in ((q, "query"), (k, "key"), (v, "value")):
            _require_float(ctx, t, role)
            if t.rank < 2:
                raise ctx.fail(f"the {role} needs a sequence and a feature axis", expected="rank >= 2",
                               found=str(t))
        if not (q.rank == k.rank == v.rank and q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
            raise ctx.fail("query, key and value need the same leading (batch, head) axes",
                           expected="q [..., L, E], k [..., S, E], v [..., S, Ev]", found=f"{q}, {k}, {v}")
        if k.shape[-1] != q.shape[-1]:
            raise ctx.fail("query and key need the same feature width", expected=f"k [..., S, {q.shape[-1]}]",
                           found=f"q {q}, k {k}")
        if v.shape[-2] != k.shape[-2]:
            raise ctx.fail("key and value need the same sequence length", expected=f"v [..., {k.shape[-2]}, Ev]",
                           found=f"k {k}, v {v}")
        if k.dtype != q.dtype or v.dtype != q.dtype:
            raise ctx.fail("query, key and value need one dtype", expected=q.dtype,
                           found=f"{q.dtype}, {k.dtype}, {v.dtype}")
        if len(ctx.inputs) == 4:
            if ctx["causal"]:
                raise ctx.fail("causal attention takes no explicit mask", expected="3 inputs with causal=true",
                               found="a 4th (mask) input", hint="fold the causal pattern into the mask")
            _check_mask(ctx, ctx.inputs[3], q.shape[:-1] + (k.shape[-2],), q.dtype)
        return [q.with_shape(q.shape[:-1] + (v.shape[-1],))]

    def macs(self, ctx: OpContext) -> int:
        q, k, v = (t.concrete_shape() for t in ctx.inputs[:3])
        return prod(q[:-1]) * k[-2] * (q[-1] + v[-1])

    def lower(self, ctx: OpContext) -> nn.Module | Call:
        if ctx["p"] > 0:
            return ScaledDotProductAttention(ctx["p"], ctx["causal"], ctx["scale"])
        return Call(F.scaled_dot_product_attention, kwargs={"is_causal": ctx["causal"], "scale": ctx["scale"]})


@register
class Attention(OpDef):
    """Multi-head attention on tokens ``[B, N, C] -> [B, N, C]``, parameters laid out as timm's ViT ``Attention``.

    One input: self-attention, a fused ``qkv`` Linear(C, 3*dim) and ``proj`` Linear(dim, C) (names and
    shapes as timm, so ViT parameter counts match). Two inputs: cross-attention of the queries on a
    context ``[B, M, Cc]``, with ``q`` Linear(C, dim) and ``kv`` Linear(Cc, 2*dim). With ``masked: true``
    the last input is a mask broadcastable to ``[B, heads, N, M]`` (e.g. ``[N, M]``): bool (True = attend) or
    additive in the token dtype. MACs: the projections plus ``2*N*M*dim`` for ``Q K^T`` and ``A V`` per sample.
    """

    name = "attention"
    category = "attention"
    arity = (1, 3)
    attrs = (
        Attr("heads", "int", doc="number of heads; must divide dim"),
        Attr("dim", "int|none", None, "inner (all heads) width; None means the token width C"),
        Attr("qkv_bias", "bool", True, "bias on the q/k/v projections"),
        Attr("proj_bias", "bool", True, "bias on the output projection"),
        Attr("causal", "bool", False, "causal (lower-triangular) masking; excludes a mask input"),
        Attr("masked", "bool", False, "the last input is an attention mask"),
        Attr("attn_drop", "float", 0.0, "dropout probability on the attention weights (training only)"),
        Attr("proj_drop", "float", 0.0, "dropout probability on the output (training only)"),
    )
    flop_counted = True
    examples = (
        Example({"heads": 2}, [(2, 5, 8)]),
        Example({"heads": 2, "dim": 12, "qkv_bias": False, "proj_bias": False, "causal": True}, [(2, 5, 8)]),
        Example({"heads": 3, "dim": 6}, [(2, 5, 8), (2, 7, 4)]),
        Example({"heads": 2, "masked": True}, [(2, 5, 8), (2, 7, 4), ((5, 7), "bool")]),
        Example({"heads": 2, "masked": True}, [(2, 5, 8), (2, 1, 1, 5)]),
        Example({"heads": 2, "attn_drop": 0.5, "proj_drop": 0.5}, [(2, 5, 8)], train=True),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "heads", "dim")
        _check_probabilities(attrs, "attn_drop", "proj_drop")
        if attrs["dim"] is not None and attrs["dim"] % attrs["heads"]:
            raise SpecError("attention heads must divide the inner width", expected=f"dim divisible by "
                            f"heads={attrs['heads']}", found=f"dim={attrs['dim']}")

    @staticmethod
    def _inner(ctx: OpContext) -> int:
        return ctx["dim"] if ctx["dim"] is not None else ctx.x.shape[-1]

    @staticmethod
    def _context(ctx: OpContext) -> TensorType | None:
        """The cross-attention context, or None for self-attention."""
        return ctx.inputs[1] if len(ctx.inputs) - ctx["masked"] == 2 else None

    def infer(self, ctx: OpContext) -> list[TensorType]:
        n_tokens = len(ctx.inputs) - ctx["masked"]
        if n_tokens not in (1, 2):
            raise ctx.fail("attention takes tokens, an optional context, and a mask only with masked=true",
                           expected="1 or 2 token inputs" + (" plus a mask" if ctx["masked"] else ""),
                           found=f"{len(ctx.inputs)} inputs with masked={str(ctx['masked']).lower()}")
        context = self._context(ctx)
        for t, role in ((ctx.x, "token input"), (context, "context")):
            if t is None:
                continue
            _require_float(ctx, t, role)
            if t.rank != 3:
                raise ctx.fail(f"the attention {role} must be [B, N, C] tokens", expected="rank 3", found=str(t))
            if not isinstance(t.shape[-1], int):
                raise ctx.fail(f"the attention {role} needs a static channel axis",
                               expected="an integer last dimension", found=str(t))
        b, n, c = ctx.x.shape
        m = n
        if context is not None:
            if context.shape[0] != b:
                raise ctx.fail("tokens and context need the same batch", expected=f"[{b}, M, Cc]",
                               found=str(context))
            if context.dtype != ctx.x.dtype:
                raise ctx.fail("tokens and context need one dtype", expected=ctx.x.dtype, found=context.dtype)
            m = context.shape[1]
        inner = self._inner(ctx)
        if inner % ctx["heads"]:
            raise ctx.fail("attention heads must divide the inner width (dim defaults to the channels)",
                           expected=f"dim divisible by heads={ctx['heads']}", found=f"dim={inner} from {ctx.x}")
        if ctx["masked"]:
            if ctx["causal"]:
                raise ctx.fail("causal attention takes no explicit mask", expected="masked=false with causal=true",
                               found="masked=true", hint="fold the causal pattern into the mask")
            _check_mask(ctx, ctx.inputs[-1], (b, ctx["heads"], n, m), ctx.x.dtype)
        return [ctx.x]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        c, inner = ctx.x.shape[-1], self._inner(ctx)
        context = self._context(ctx)
        layers = ({"qkv": (3 * inner, c)} if context is None
                  else {"q": (inner, c), "kv": (2 * inner, context.shape[-1])})
        p: dict[str, tuple[int, ...]] = {}
        for layer, shape in layers.items():
            p[f"{layer}.weight"] = shape
            if ctx["qkv_bias"]:
                p[f"{layer}.bias"] = (shape[0],)
        p["proj.weight"] = (c, inner)
        if ctx["proj_bias"]:
            p["proj.bias"] = (c,)
        return p

    def macs(self, ctx: OpContext) -> int:
        b, n, c = ctx.x.concrete_shape()
        context = self._context(ctx)
        inner = self._inner(ctx)
        if context is None:
            m, projections = n, n * c * 3 * inner
        else:
            _, m, cc = context.concrete_shape()
            projections = n * c * inner + m * cc * 2 * inner
        return b * (projections + n * inner * c + 2 * n * m * inner)

    def lower(self, ctx: OpContext) -> nn.Module:
        common = {"qkv_bias": ctx["qkv_bias"], "proj_bias": ctx["proj_bias"], "causal": ctx["causal"],
                  "attn_drop": ctx["attn_drop"], "proj_drop": ctx["proj_drop"]}
        context = self._context(ctx)
        if context is None:
            return SelfAttention(ctx.x.shape[-1], ctx["heads"], self._inner(ctx), **common)
        return CrossAttention(ctx.x.shape[-1], ctx["heads"], self._inner(ctx), context.shape[-1], **common)
