"""Token masking for masked-image modelling: ``random_masking``, ``mask_token`` and ``gather``.

MAE (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022; facebookresearch/mae
``models_mae.py``) drops most patch tokens before the encoder and restores the full sequence before the
decoder. The three ops here spell that out in a spec:

* ``random_masking`` keeps ``int(N * (1 - ratio))`` of ``N`` tokens (the reference's ``len_keep``) and
  also returns the binary mask and ``ids_restore``, the permutation that puts the shuffled sequence back
  in order;
* ``mask_token`` appends copies of one learned token until the sequence is ``length`` long;
* ``gather`` picks entries along an axis by an integer index (``torch.gather``; an index that stops at
  the axis is broadcast over the trailing axes): with ``ids_restore`` it unshuffles the kept and mask
  tokens, as the reference's ``torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, D))``.

None has MACs; torch's FlopCounterMode counts none (argsort, gather and concatenation are not
arithmetic it counts).
"""

from __future__ import annotations

import torch

from nasforge.errors import SpecError
from nasforge.ops.registry import Attr, Call, Example, OpContext, OpDef, nn, normalize_axis, register
from nasforge.types import FLOAT_DTYPES, TensorType, dim_str, is_static

INDEX_DTYPES = ("int64", "int32")


def _require_tokens(ctx: OpContext, t: TensorType, op: str) -> None:
    """Fail unless ``t`` is float ``[B, N, C]`` tokens with static N and C."""
    if t.rank != 3:
        raise ctx.fail(f"{op} takes [B, N, C] tokens", expected="rank 3", found=str(t))
    if t.dtype not in FLOAT_DTYPES:
        raise ctx.fail(f"{op} takes floating-point tokens", expected="a float dtype", found=f"{t} ({t.dtype})")
    if not all(isinstance(d, int) for d in t.shape[1:]):
        raise ctx.fail(f"{op} needs a static token count and width", expected="integer N and C",
                       found=str(t))


def kept_tokens(n: int, ratio: float) -> int:
    """How many of ``n`` tokens survive masking with ``ratio``: ``int(n * (1 - ratio))``, exactly MAE's
    ``len_keep``, a float product truncated (196 at 0.75 keep 49; 10 at 0.8 keep 1, since 10 * (1 - 0.8)
    is 1.9999999999999996 in floating point)."""
    return int(n * (1 - ratio))


# -- modules -----------------------------------------------------------------------------------------

class RandomMasking(nn.Module):
    """MAE's per-sample random masking of ``[B, N, C]`` tokens (``MaskedAutoencoderViT.random_masking``).

    Each sample's tokens are ordered by ``noise`` (ascending: small is kept) and the first ``keep`` are
    returned in that order, with the mask (0 kept, 1 removed, in token order) and ``ids_restore``.
    ``noise`` is the optional second input; without it, training mode (or ``eval_random``) draws
    ``torch.rand(B, N)`` as the reference does, and eval mode uses ``0, 1, ..., N-1``: the first ``keep``
    tokens in their own order, ``ids_restore`` the identity.
    """

    def __init__(self, keep: int, eval_random: bool = False) -> None:
        super().__init__()
        self.keep = keep
        self.eval_random = eval_random

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        if noise is None:
            if self.training or self.eval_random:
                noise = torch.rand(b, n, device=x.device)
            else:
                noise = torch.arange(n, device=x.device, dtype=torch.float32).expand(b, n)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :self.keep]
        kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, c))
        # token j sits at position ids_restore[j] of the shuffled order: removed iff that is >= keep
        mask = (ids_restore >= self.keep).to(x.dtype)
        return kept, mask, ids_restore

    def extra_repr(self) -> str:
        return f"keep={self.keep}, eval_random={self.eval_random}"


class MaskTokens(nn.Module):
    """Appends ``count`` copies of the learned ``token [1, 1, C]`` to ``[B, N, C]`` (MAE's decoder)."""

    def __init__(self, count: int, channels: int) -> None:
        super().__init__()
        self.count = count
        self.token = nn.Parameter(nn.init.normal_(torch.empty(1, 1, channels), std=0.02))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.token.to(x.dtype).expand(x.shape[0], self.count, -1)], dim=1)


def gather_along(x: torch.Tensor, index: torch.Tensor, axis: int) -> torch.Tensor:
    """``torch.gather(x, axis, index)``; an index of rank ``axis + 1`` below ``x``'s rank is first expanded
    over ``x``'s trailing axes (``x[b, index[b, m], ...]`` for ``axis=1``). int32 indices are widened."""
    if index.dim() < x.dim():
        trailing = x.dim() - index.dim()
        index = index.reshape(index.shape + (1,) * trailing).expand(*index.shape, *x.shape[index.dim():])
    return torch.gather(x, axis, index.to(torch.int64))


# -- entries -------------------------------------------------------------------------------------------

@register
class RandomMaskingOp(OpDef):
    """Per-sample random masking of ``[B, N, C]`` tokens, as MAE (``models_mae.py``, ``random_masking``).

    Keeps ``K = int(N * (1 - ratio))`` tokens (MAE's ``len_keep``, the float product truncated: 49 of
    196 at ratio 0.75) and returns three outputs: the kept tokens ``[B, K, C]`` in shuffled order, the
    ``mask [B, N]`` in the tokens' dtype (0 kept, 1 removed, in token order) and ``ids_restore [B, N]``
    int64 (the argsort of the shuffle: ``gather`` with it unshuffles). The order comes from ``noise``, an
    optional second input ``[B, N]`` (float; the smallest noise is kept, as HF's ViTMAE ``noise``
    argument), else from ``torch.rand``. The ratio applies in both modes, so shapes are static.
    Training mode draws noise, as the reference does. In eval mode ``eval_order: first`` (the default)
    keeps the first K tokens in order (the mask is K zeros then ones, ``ids_restore`` the identity):
    deterministic, for export and backend comparisons. ``eval_order: random`` draws noise in eval mode
    too, as the reference's forward, which masks whenever it runs. No parameters or MACs.
    """

    name = "random_masking"
    category = "masking"
    arity = (1, 2)
    backend_limits = {"tvm": "training mode and eval_order: random draw noise with aten.rand, which TVM's "
                             "from_exported_program does not convert (it has randn, not rand): the import fails "
                             "with 'Unsupported function types ['rand.default']'. The default eval-mode lowering "
                             "(eval_order: first: arange, sort, gather) and a given noise input import."}
    attrs = (
        Attr("ratio", "float", doc="fraction of tokens removed, in [0, 1); MAE: 0.75"),
        Attr("eval_order", "str", "first", "eval-mode order without a noise input: the first K tokens, or random "
             "as in training", choices=("first", "random")),
    )
    examples = (
        Example({"ratio": 0.75}, [(2, 16, 4)]),
        Example({"ratio": 0.75}, [(2, 16, 4)], train=True),
        Example({"ratio": 0.5, "eval_order": "random"}, [(3, 7, 5)]),
        Example({"ratio": 0.6}, [(2, 10, 3), (2, 10)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        if not 0.0 <= attrs["ratio"] < 1.0:
            raise SpecError("random_masking ratio is the fraction of tokens removed", expected="a number in [0, 1)",
                            found=repr(attrs["ratio"]), key="ratio")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        _require_tokens(ctx, x, "random_masking")
        b, n, c = x.shape
        keep = kept_tokens(n, ctx["ratio"])
        if keep < 1:
            raise ctx.fail("random_masking would keep no token", expected="int(N * (1 - ratio)) >= 1",
                           found=f"N={n}, ratio={ctx['ratio']}")
        if len(ctx.inputs) == 2:
            noise = ctx.inputs[1]
            if noise.dtype not in FLOAT_DTYPES or noise.shape != (b, n):
                raise ctx.fail("the noise input gives one number per token", expected=f"float [{dim_str(b)}, {n}]",
                               found=f"{noise} ({noise.dtype})")
        return [x.with_shape((b, keep, c)), x.with_shape((b, n)), TensorType((b, n), "int64")]

    def lower(self, ctx: OpContext) -> nn.Module:
        return RandomMasking(kept_tokens(ctx.x.shape[1], ctx["ratio"]), ctx["eval_order"] == "random")


@register
class Gather(OpDef):
    """Pick entries along ``axis`` by an integer index (``torch.gather``), in one of two forms:

    * an index of ``x``'s rank: ``torch.gather`` itself, ``out[i][j][k] = x[index[i][j][k]][j][k]`` for
      ``axis: 0``; the output has the index's shape, and on every other axis the index is no larger than
      ``x`` (routing probabilities of chosen experts, code vectors of token ids);
    * an index of rank ``axis + 1`` (below ``x``'s rank) with ``x``'s leading axes: broadcast over the
      trailing axes, ``out[b, m, ...] = x[b, index[b, m], ...]`` for ``axis: 1``, the output
      ``x.shape[:axis] + [M] + x.shape[axis+1:]``. MAE's decoder unshuffles ``[B, N, C]`` tokens with its
      ``ids_restore [B, N]`` this way (the reference repeats the index over C first).

    int64 or int32 indices, within ``[0, x.shape[axis])`` (checked by torch at run time). No MACs.
    """

    name = "gather"
    category = "tensor"
    arity = (2, 2)
    attrs = (Attr("axis", "int", 1, "the axis the index selects along"),)
    examples = (
        Example({}, [(2, 6, 4), ((2, 9), "int64")], int_high=6),
        Example({"axis": 0}, [(5, 3), ((7,), "int64")], int_high=5, symbolic_batch=False),
        Example({"axis": 2}, [(2, 3, 6, 4, 2), ((2, 3, 2), "int32")], int_high=6),
        Example({"axis": -1}, [(2, 5, 8), ((2, 5, 3), "int64")], int_high=8),
        Example({"axis": 1}, [(2, 6, 4), ((2, 3, 4), "int64")], int_high=6),
        Example({"axis": 0}, [(5, 4), ((2, 3), "int64")], int_high=5, symbolic_batch=False),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x, index = ctx.inputs
        if x.rank == 0:
            raise ctx.fail("gather needs an input with at least one axis", expected="rank >= 1", found=str(x))
        axis = normalize_axis(ctx, ctx["axis"], x.rank)
        if index.dtype not in INDEX_DTYPES:
            raise ctx.fail("gather takes an integer index as its second input", expected="int64 or int32",
                           found=f"{index} ({index.dtype})")
        if index.rank == x.rank:
            for d, (a, b) in enumerate(zip(x.shape, index.shape)):
                if d != axis and a != b and not (is_static(a) and is_static(b) and b <= a):
                    raise ctx.fail(f"the gather index is larger than the input on axis {d}",
                                   expected=f"size <= {dim_str(a)} on axis {d}", found=f"index {index} for input {x}")
            return [TensorType(index.shape, x.dtype)]
        if index.rank != axis + 1 or index.shape[:axis] != x.shape[:axis]:
            lead = "".join(f"{dim_str(d)}, " for d in x.shape[:axis])
            raise ctx.fail(f"the gather index must have the input's rank, or its axes up to axis {ctx['axis']}",
                           expected=f"rank {x.rank}, or [{lead}M] for input {x}", found=str(index))
        return [x.with_shape(x.shape[:axis] + (index.shape[axis],) + x.shape[axis + 1:])]

    def lower(self, ctx: OpContext) -> Call:
        return Call(gather_along, (normalize_axis(ctx, ctx["axis"], ctx.x.rank),))


@register
class MaskToken(OpDef):
    """Append copies of one learned token to ``[B, N, C]`` tokens until there are ``length``:
    ``[B, N, C] -> [B, length, C]`` (parameter ``token [1, 1, C]``, normal init with std 0.02 as MAE).

    MAE's decoder appends ``N_patches - N_kept`` mask tokens to the kept tokens before unshuffling them
    with ``gather``; ``length`` is the full patch count, so the spec need not repeat the kept count.
    """

    name = "mask_token"
    category = "masking"
    attrs = (Attr("length", "int", doc="sequence length after appending (>= N)"),)
    examples = (
        Example({"length": 8}, [(2, 3, 4)]),
        Example({"length": 5}, [(2, 5, 6)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        if attrs["length"] < 1:
            raise SpecError("mask_token length must be positive", expected="an integer >= 1",
                            found=repr(attrs["length"]), key="length")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        _require_tokens(ctx, ctx.x, "mask_token")
        b, n, c = ctx.x.shape
        if n > ctx["length"]:
            raise ctx.fail("mask_token cannot shorten the sequence", expected=f"N <= length={ctx['length']}",
                           found=str(ctx.x))
        return [ctx.x.with_shape((b, ctx["length"], c))]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        return {"token": (1, 1, ctx.x.shape[2])}

    def lower(self, ctx: OpContext) -> nn.Module:
        return MaskTokens(ctx["length"] - ctx.x.shape[1], ctx.x.shape[2])
