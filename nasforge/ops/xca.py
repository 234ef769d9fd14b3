"""Cross-covariance attention and its Fourier position encoding (XCiT, El-Nouby et al., NeurIPS 2021),
as EdgeNeXt's SDTA encoder uses them (Maaz et al., ECCV Workshops 2022).

``xca`` attends across channels instead of tokens: per head, the ``d x d`` attention map is the
cross-covariance ``softmax(q_hat k_hat^T * temperature)`` of L2-normalised queries and keys (each channel
normalised over the tokens), applied to the values; so its cost grows linearly with the token count.
``pos_embed_fourier`` adds XCiT's position encoding: fixed sine/cosine features of the normalised row and
column coordinates, projected to the channels by a learned 1x1 convolution.

Parameter names follow the reference implementations (XCiT's / EdgeNeXt's ``XCA`` and
``PositionalEncodingFourier``), so state_dict keys match theirs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nasforge.errors import SpecError
from nasforge.ops.registry import Attr, Example, OpContext, OpDef, nn, prod, register, require_positive
from nasforge.types import FLOAT_DTYPES, TensorType


# -- modules ---------------------------------------------------------------------------------------

class CrossCovarianceAttention(nn.Module):
    """XCA on channels-last input ``[B, *tokens, C]`` (``[B, N, C]`` tokens or a ``[B, H, W, C]`` map,
    tokens in row-major order): fused ``qkv = Linear(C, 3C)``, per-head learned ``temperature
    [heads, 1, 1]``, ``proj = Linear(C, C)``. Output has the input's shape."""

    def __init__(self, channels: int, heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(channels, channels)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(1, -2)                                    # [B, N, C]
        b, n, c = tokens.shape
        # [B, N, 3, heads, d] -> [3, B, heads, d, N]: each head's channels attend to each other over N
        q, k, v = self.qkv(tokens).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 4, 1).unbind(0)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1))   # [B, heads, d, d]
        out = (attn @ v).permute(0, 3, 1, 2).reshape(b, n, c)       # [B, heads, d, N] -> [B, N, C]
        return self.proj_drop(self.proj(out)).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"heads={self.heads}"


def fourier_features(h: int, w: int, hidden: int, temperature: float) -> torch.Tensor:
    """XCiT's Fourier features ``[1, 2*hidden, h, w]``: the row coordinate ``y`` (1..h) and column
    coordinate ``x`` (1..w), each scaled to ``(0, 2*pi]``, divided by ``temperature^(2*floor(i/2)/hidden)``
    for ``i < hidden``, sines at even ``i`` and cosines at odd ``i``; row features first, then column
    features. Computed in float32 exactly as the reference (coordinates divided by ``size + 1e-6``)."""
    scale, eps = 2 * math.pi, 1e-6
    y = torch.arange(1, h + 1, dtype=torch.float32)[:, None].expand(h, w)
    x = torch.arange(1, w + 1, dtype=torch.float32)[None, :].expand(h, w)
    y = y / (h + eps) * scale
    x = x / (w + eps) * scale
    dim_t = torch.arange(hidden, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / hidden)

    def encode(coord: torch.Tensor) -> torch.Tensor:
        angles = coord[:, :, None] / dim_t                          # [h, w, hidden]
        return torch.stack((angles[:, :, 0::2].sin(), angles[:, :, 1::2].cos()), dim=3).flatten(2)

    return torch.cat((encode(y), encode(x)), dim=2).permute(2, 0, 1)[None]


class FourierPositionEncoding(nn.Module):
    """Adds ``token_projection(features)`` to a ``[B, C, H, W]`` map, where ``features`` are the fixed
    Fourier features of the ``H x W`` grid (a non-persistent buffer) and ``token_projection`` a learned
    1x1 conv ``2*hidden -> C`` with bias. The encoding does not depend on the input, so it is computed
    once per call and broadcast over the batch."""

    def __init__(self, channels: int, h: int, w: int, hidden: int = 32, temperature: float = 10000.0) -> None:
        super().__init__()
        self.token_projection = nn.Conv2d(2 * hidden, channels, kernel_size=1)
        self.register_buffer("features", fourier_features(h, w, hidden, temperature), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.token_projection(self.features.to(x.dtype))


# -- entries ---------------------------------------------------------------------------------------

def _require_float(ctx: OpContext, what: str) -> None:
    if ctx.x.dtype not in FLOAT_DTYPES:
        raise ctx.fail(f"{what} takes a floating-point input", expected="a float dtype", found=str(ctx.x))


@register
class XCA(OpDef):
    """Cross-covariance attention (XCiT): attention across channels, not tokens. Channels-last input
    ``[B, *tokens, C]`` (``[B, N, C]`` tokens, or a ``[B, H, W, C]`` map whose positions are the tokens)
    -> the same shape. Per head of ``d = C / heads`` channels, ``softmax(norm(q) norm(k)^T * temperature) v``
    with q and k L2-normalised over the tokens and a learned temperature per head (shape heads x 1 x 1).

    Parameters as XCiT's / EdgeNeXt's ``XCA``: ``qkv`` Linear(C, 3C), ``proj`` Linear(C, C), ``temperature``.
    MACs per sample: ``N*C*3C + N*C*C`` for the projections plus ``2*N*C*d`` for ``q k^T`` (``d x d`` per
    head over N tokens) and ``attn v``; normalisation, scaling and softmax are not counted (as ``attention``).
    """

    name = "xca"
    category = "attention"
    attrs = (
        Attr("heads", "int", doc="number of heads; must divide the channels"),
        Attr("qkv_bias", "bool", True, "bias on the q/k/v projection"),
        Attr("attn_drop", "float", 0.0, "dropout probability on the attention weights (training only)"),
        Attr("proj_drop", "float", 0.0, "dropout probability on the output (training only)"),
    )
    flop_counted = True
    examples = (
        Example({"heads": 2}, [(2, 5, 8)]),
        Example({"heads": 4, "qkv_bias": False}, [(2, 3, 4, 8)]),
        Example({"heads": 1, "attn_drop": 0.5, "proj_drop": 0.5}, [(2, 6, 4)], train=True),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "heads")
        for name in ("attn_drop", "proj_drop"):
            if not 0.0 <= attrs[name] < 1.0:
                raise SpecError(f"attribute {name!r} is a dropout probability", expected="a number in [0, 1)",
                                found=repr(attrs[name]))

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        _require_float(ctx, "xca")
        if x.rank < 3:
            raise ctx.fail("xca takes channels-last tokens", expected="[B, N, C] or [B, H, W, C]", found=str(x))
        c = x.shape[-1]
        if not isinstance(c, int):
            raise ctx.fail("xca needs a static channel axis", expected="an integer last dimension", found=str(x))
        if c % ctx["heads"]:
            raise ctx.fail("xca heads must divide the channels", expected=f"C divisible by heads={ctx['heads']}",
                           found=str(x))
        return [x]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        c = ctx.x.shape[-1]
        p = {"temperature": (ctx["heads"], 1, 1), "qkv.weight": (3 * c, c)}
        if ctx["qkv_bias"]:
            p["qkv.bias"] = (3 * c,)
        p["proj.weight"] = (c, c)
        p["proj.bias"] = (c,)
        return p

    def macs(self, ctx: OpContext) -> int:
        shape = ctx.x.concrete_shape()
        b, n, c = shape[0], prod(shape[1:-1]), shape[-1]
        d = c // ctx["heads"]
        return b * n * (3 * c * c + c * c + 2 * c * d)

    def lower(self, ctx: OpContext) -> nn.Module:
        return CrossCovarianceAttention(ctx.x.shape[-1], ctx["heads"], ctx["qkv_bias"], ctx["attn_drop"],
                                        ctx["proj_drop"])


@register
class PosEmbedFourier(OpDef):
    """Adds XCiT's Fourier position encoding to a channels-first map ``[B, C, H, W]``: fixed sine/cosine
    features of the normalised row and column coordinates (``hidden`` per axis, wavelengths set by
    ``temperature``, as DETR's sine encoding), projected to C channels by a learned 1x1 conv
    ``token_projection`` (``2*hidden -> C``, with bias; parameter names as XCiT / EdgeNeXt).

    The encoding depends only on H and W, so it is computed once per forward pass and broadcast over the
    batch: its ``H*W*2*hidden*C`` MACs do not grow with the batch (the reference implementations repeat it
    per sample; the per-sample count is the same).
    """

    name = "pos_embed_fourier"
    category = "embedding"
    attrs = (
        Attr("hidden", "int", 32, "Fourier features per coordinate axis (2*hidden in all)"),
        Attr("temperature", "float", 10000.0, "base of the feature wavelengths"),
    )
    flop_counted = True
    examples = (
        Example({}, [(2, 8, 3, 4)]),
        Example({"hidden": 4, "temperature": 100.0}, [(2, 6, 5, 5)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "hidden")
        if attrs["temperature"] <= 0:
            raise SpecError("pos_embed_fourier needs a positive temperature", expected="temperature > 0",
                            found=repr(attrs["temperature"]))

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        _require_float(ctx, "pos_embed_fourier")
        if x.rank != 4 or not all(isinstance(d, int) for d in x.shape[1:]):
            raise ctx.fail("pos_embed_fourier takes a channels-first map with static C, H and W",
                           expected="[B, C, H, W]", found=str(x))
        return [x]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        c = ctx.x.shape[1]
        return {"token_projection.weight": (c, 2 * ctx["hidden"], 1, 1), "token_projection.bias": (c,)}

    def macs(self, ctx: OpContext) -> int:
        _, c, h, w = ctx.x.shape
        return h * w * 2 * ctx["hidden"] * c

    def flops(self, ctx: OpContext) -> int:
        _, c, h, w = ctx.x.shape
        return 2 * self.macs(ctx) + c * h * w + ctx.outputs[0].numel()    # projection, its bias, the add

    def lower(self, ctx: OpContext) -> nn.Module:
        _, c, h, w = ctx.x.shape
        return FourierPositionEncoding(c, h, w, ctx["hidden"], ctx["temperature"])
