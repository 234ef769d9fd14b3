"""The positional entries beyond the generic harness: ``rope``, ``alibi``, ``attention_mask`` and ``gqa_attention``.

Rotary embeddings are checked against the complex-number form of RoFormer written out here (a feature pair
``(a, b)`` is ``a + ib``, multiplied by ``e^(i p theta_k)``), ALiBi against the paper's slopes and biases,
masks against their definitions, and grouped-query attention against plain multi-head attention whose
key/value heads are repeated.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.export import Dim
from torch.utils.flop_counter import FlopCounterMode

from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.registry import OpContext
from nasforge.types import Sym, TensorType

B = Sym.of("B")


def context(name: str, attrs: dict, *inputs: TensorType) -> tuple:
    op = get_op(name)
    ctx = OpContext(op.validate_attrs(attrs), list(inputs))
    op.check_arity(len(inputs))
    ctx.outputs = op.infer(ctx)
    return op, ctx


def build(name: str, attrs: dict, *inputs: TensorType) -> torch.nn.Module:
    op, ctx = context(name, attrs, *inputs)
    return op.lower(ctx).eval()


def t(*shape, dtype: str = "float32") -> TensorType:
    return TensorType(tuple(shape), dtype)


# -- references ---------------------------------------------------------------------------------------------

def rotate_complex(a: torch.Tensor, b: torch.Tensor, angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a + ib) * e^(i angles)`` in float64, returned as real and imaginary parts."""
    z = torch.complex(a.double(), b.double()) * torch.polar(torch.ones_like(angles), angles)
    return z.real, z.imag


def reference_angles(length: int, dim: int, theta: float) -> torch.Tensor:
    """``[T, dim/2]`` angles ``p * theta^(-2k/dim)``, float64."""
    k = torch.arange(dim // 2, dtype=torch.float64)
    return torch.arange(length, dtype=torch.float64)[:, None] * theta ** (-2 * k / dim)


def reference_rope_half(x: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """RoPE with feature k paired with k + D/2 (HF Llama), sequence on axis -2."""
    d = x.shape[-1]
    re, im = rotate_complex(x[..., : d // 2], x[..., d // 2:], reference_angles(x.shape[-2], d, theta))
    return torch.cat([re, im], dim=-1).to(x.dtype)


def reference_rope_interleaved(x: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """RoPE with features 2k and 2k + 1 paired (Meta LLaMA), sequence on axis -2."""
    d = x.shape[-1]
    re, im = rotate_complex(x[..., 0::2], x[..., 1::2], reference_angles(x.shape[-2], d, theta))
    return torch.stack([re, im], dim=-1).flatten(-2).to(x.dtype)


def reference_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d) + mask) v; a bool mask is True where attending."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return scores.softmax(-1) @ v


def causal(length: int) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool).tril()


# -- rope -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout,reference", [("half", reference_rope_half),
                                              ("interleaved", reference_rope_interleaved)])
@pytest.mark.parametrize("theta", [10000.0, 500.0])
def test_rope_matches_the_complex_formula(layout, reference, theta):
    x = torch.randn(2, 3, 9, 8)
    module = build("rope", {"layout": layout, "theta": theta}, t(2, 3, 9, 8))
    torch.testing.assert_close(module(x), reference(x, theta), atol=1e-5, rtol=1e-5)
    assert dict(module.state_dict()) == {} and list(module.parameters()) == []


def test_rope_position_zero_is_the_identity_and_norms_are_kept():
    x = torch.randn(2, 4, 6, 16)
    y = build("rope", {}, t(2, 4, 6, 16))(x)
    torch.testing.assert_close(y[..., 0, :], x[..., 0, :])
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def test_rope_scores_depend_only_on_relative_position():
    """<rope(q)_m, rope(k)_n> = <rope(q)_(m+s), rope(k)_(n+s)> for the same q and k vectors."""
    module = build("rope", {}, t(1, 12, 8))
    q, k = torch.randn(8), torch.randn(8)
    rq, rk = module(q.expand(1, 12, 8)), module(k.expand(1, 12, 8))
    scores = rq[0] @ rk[0].T
    for shift in (1, 3):
        torch.testing.assert_close(scores[shift:, shift:], scores[:-shift, :-shift], atol=1e-5, rtol=1e-5)


def test_interleaved_is_half_under_a_feature_permutation():
    """HF's checkpoint conversion permutes Meta's q/k rows: interleaved(x) = P^-1 half(P x)."""
    x = torch.randn(2, 7, 8)
    to_half = torch.cat([torch.arange(0, 8, 2), torch.arange(1, 8, 2)])  # features 0,2,4,6,1,3,5,7
    half = build("rope", {}, t(2, 7, 8))
    interleaved = build("rope", {"layout": "interleaved"}, t(2, 7, 8))
    back = torch.argsort(to_half)
    torch.testing.assert_close(half(x[..., to_half])[..., back], interleaved(x), atol=1e-6, rtol=1e-6)


def test_partial_rotary_leaves_the_other_features():
    x = torch.randn(2, 5, 10)
    y = build("rope", {"rotary_dim": 4}, t(2, 5, 10))(x)
    torch.testing.assert_close(y[..., 4:], x[..., 4:])
    torch.testing.assert_close(y[..., :4], reference_rope_half(x[..., :4]), atol=1e-5, rtol=1e-5)


def test_rope_sequence_axis_and_positions_input():
    x = torch.randn(2, 6, 3, 8)                     # [B, T, H, D] as LlamaGen
    on_axis1 = build("rope", {"axis": 1}, t(2, 6, 3, 8))(x)
    torch.testing.assert_close(on_axis1, reference_rope_half(x.transpose(1, 2)).transpose(1, 2),
                               atol=1e-5, rtol=1e-5)
    # explicit positions: [T] and per-sample [B, T]; shifting positions by s equals the default at p + s
    y = torch.randn(2, 3, 4, 8)
    shifted = torch.arange(4) + 5
    module = build("rope", {}, t(2, 3, 4, 8), t(4, dtype="int64"))
    longer = reference_rope_half(torch.cat([torch.zeros(2, 3, 5, 8), y], dim=2))[..., 5:, :]
    torch.testing.assert_close(module(y, shifted), longer, atol=1e-5, rtol=1e-5)
    per_sample = torch.stack([torch.arange(4), shifted])
    batched = build("rope", {}, t(2, 3, 4, 8), t(2, 4, dtype="int64"))(y, per_sample)
    torch.testing.assert_close(batched[0], reference_rope_half(y)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[1], longer[1], atol=1e-5, rtol=1e-5)


def reference_rope_grid(x: torch.Tensor, grid: tuple[int, int], prefix: int, zero_prefix: bool,
                        theta: float = 10000.0) -> torch.Tensor:
    """LlamaGen's 2-D rope, written from its description: ``[B, T, H, D]``; pairs (2k, 2k + 1); the first D/4
    pairs turn with the row, the last D/4 with the column of position ``t - prefix`` on a row-major grid,
    frequencies theta^(-2k/(D/2)); prefix positions get a zero (or identity) rotation."""
    d = x.shape[-1]
    quarter = torch.arange(d // 4, dtype=torch.float64)
    freqs = theta ** (-2 * quarter / (d // 2))
    rows = torch.arange(grid[0], dtype=torch.float64).repeat_interleave(grid[1])
    cols = torch.arange(grid[1], dtype=torch.float64).repeat(grid[0])
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=-1)          # [h*w, D/2]
    table = torch.polar(torch.ones_like(angles), angles)
    head = torch.zeros(prefix, d // 2, dtype=table.dtype) if zero_prefix else torch.ones(prefix, d // 2,
                                                                                          dtype=table.dtype)
    table = torch.cat([head, table])[: x.shape[1]]                                      # [T, D/2]
    z = torch.complex(x[..., 0::2].double(), x[..., 1::2].double()) * table[None, :, None, :]
    return torch.stack([z.real, z.imag], dim=-1).flatten(-2).to(x.dtype)


@pytest.mark.parametrize("prefix,mode", [(1, "zero"), (2, "identity"), (0, "identity")])
def test_rope_grid_matches_llamagen_2d_table(prefix, mode):
    x = torch.randn(2, prefix + 11, 3, 16)         # one short of prefix + 3x4 grid, as LlamaGen's training
    attrs = {"layout": "interleaved", "grid": [3, 4], "prefix": prefix, "prefix_mode": mode, "axis": 1}
    y = build("rope", attrs, t(*x.shape))(x)
    torch.testing.assert_close(y, reference_rope_grid(x, (3, 4), prefix, mode == "zero"), atol=1e-5, rtol=1e-5)
    if prefix and mode == "zero":
        assert (y[:, :prefix] == 0).all()


@pytest.mark.parametrize("attrs,inputs,message", [
    ({}, (t(2, 5, 7),), "even feature width"),
    ({"rotary_dim": 10}, (t(2, 5, 8),), "wider than the features"),
    ({"axis": -1}, (t(2, 5, 8),), "cannot be the feature"),
    ({"axis": 3}, (t(2, 5, 8),), "out of range"),
    ({}, (t(8),), "rank >= 2"),
    ({}, (t(2, 5, 8, dtype="int64"),), "floating-point"),
    ({}, (t(2, 5, Sym.of("D")),), "static feature width"),
    ({"grid": [2, 2], "prefix": 1}, (t(2, 6, 8),), "longer than the prefix plus the token grid"),
    ({"grid": [2, 2]}, (t(2, 4, 6),), "divisible by 4"),
    ({}, (t(2, 5, 8), t(5, dtype="float32")), "positions must be integers"),
    ({}, (t(2, 5, 8), t(6, dtype="int64")), r"\[T\] or \[B, T\]"),
    ({}, (t(2, 3, 5, 8), t(3, 5, dtype="int64")), r"\[T\] or \[B, T\]"),
])
def test_rope_rejects_bad_inputs(attrs, inputs, message):
    with pytest.raises(ShapeError, match=message):
        context("rope", attrs, *inputs)


@pytest.mark.parametrize("attrs,message", [
    ({"theta": 0.0}, "theta must be positive"),
    ({"rotary_dim": 3}, "must be even"),
    ({"grid": [2]}, "grid is"),
    ({"grid": [2, 0]}, "must be positive"),
    ({"grid": [2, 2], "rotary_dim": 6}, "divisible by 4"),
    ({"prefix": -1}, "cannot be negative"),
    ({"layout": "rotate_half"}, "unsupported value"),
])
def test_rope_rejects_bad_attributes(attrs, message):
    with pytest.raises(SpecError, match=message):
        get_op("rope").validate_attrs(attrs)


def test_rope_counts_three_flops_per_rotated_element_and_no_macs():
    op, ctx = context("rope", {"rotary_dim": 4}, t(2, 3, 5, 8))
    assert op.macs(ctx) == 0 and op.flops(ctx) == 3 * 2 * 3 * 5 * 4
    _, sym = context("rope", {}, t(B, 3, 5, 8), t(B, 5, dtype="int64"))
    assert sym.outputs == [t(B, 3, 5, 8)]


# -- alibi ------------------------------------------------------------------------------------------------------

def test_alibi_slopes_follow_the_paper():
    from nasforge.ops.rope import alibi_slopes
    # 8 heads: 1/2, 1/4, ..., 1/256 (Press et al., Section 3)
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -h for h in range(1, 9)]))
    # 16 heads: 2^-0.5, 2^-1, ..., 2^-8
    torch.testing.assert_close(alibi_slopes(16), torch.tensor([2.0 ** (-h / 2) for h in range(1, 17)]))
    # 12 heads: the 8-head slopes, then every other 16-head slope: 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5
    want = [2.0 ** -h for h in range(1, 9)] + [2.0 ** -(h + 0.5) for h in range(4)]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(want))


def test_alibi_adds_linear_distance_biases():
    from nasforge.ops.rope import alibi_slopes
    scores = torch.randn(2, 4, 5, 5)
    got = build("alibi", {}, t(2, 4, 5, 5))(scores)
    i, j = torch.arange(5)[:, None], torch.arange(5)[None, :]
    bias = alibi_slopes(4)[:, None, None] * (j - i)
    torch.testing.assert_close(got, scores + bias)
    symmetric = build("alibi", {"symmetric": True}, t(2, 4, 5, 5))(scores)
    torch.testing.assert_close(symmetric, scores - alibi_slopes(4)[:, None, None] * (j - i).abs())
    # fewer queries than keys: queries are the last positions
    tail = build("alibi", {}, t(1, 4, 2, 5))(torch.zeros(1, 4, 2, 5))
    torch.testing.assert_close(tail[0], bias[:, 3:])


def test_causal_alibi_equals_blooms_key_position_form_after_softmax():
    from nasforge.ops.rope import alibi_slopes
    scores = torch.randn(1, 4, 6, 6)
    mask = causal(6)
    ours = build("alibi", {}, t(1, 4, 6, 6))(scores).masked_fill(~mask, float("-inf")).softmax(-1)
    bloom = (scores + alibi_slopes(4)[:, None, None] * torch.arange(6)).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(ours, bloom.softmax(-1), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("inputs,message", [
    ((t(4, 5),), "rank >= 3"),
    ((t(2, Sym.of("H"), 5, 5),), "static head count"),
    ((t(2, 4, 5, 5, dtype="int64"),), "floating-point"),
])
def test_alibi_rejects_bad_inputs(inputs, message):
    with pytest.raises(ShapeError, match=message):
        context("alibi", {}, *inputs)


# -- attention_mask -------------------------------------------------------------------------------------------

def test_causal_block_causal_and_window_patterns():
    ids = torch.zeros(2, 6, dtype=torch.int64)
    i, j = torch.arange(6)[:, None], torch.arange(6)[None, :]
    cases = [
        ({}, j <= i),
        ({"kind": "full"}, torch.ones(6, 6, dtype=torch.bool)),
        ({"kind": "block_causal", "block": 2}, j // 2 <= i // 2),
        ({"window": 3}, (j <= i) & (i - j < 3)),
        ({"kind": "full", "window": 2}, (i - j).abs() < 2),
        ({"kind": "block_causal", "block": 3, "window": 2}, (j // 3 <= i // 3) & (i - j < 2)),
    ]
    for attrs, want in cases:
        mask = build("attention_mask", attrs, t(2, 6, dtype="int64"))(ids)
        assert mask.dtype == torch.bool and mask.shape == (2, 1, 6, 6)
        assert torch.equal(mask, want.expand(2, 1, 6, 6)), attrs


def test_padding_masks_from_ids_and_lengths_keep_the_diagonal():
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 0]])            # left-padded, right-padded (pad id 0)
    mask = build("attention_mask", {"pad_id": 0}, t(2, 4, dtype="int64"))(ids)
    keys = ids != 0
    want = (causal(4) & (keys[:, None, :] | torch.eye(4, dtype=torch.bool)))[:, None]
    assert torch.equal(mask, want)
    assert mask.any(-1).all()                                       # no query is left with nothing
    lengths = torch.tensor([2, 4])
    full = build("attention_mask", {"kind": "full"}, t(2, 4, 3), t(2, dtype="int64"))(torch.randn(2, 4, 3), lengths)
    within = torch.arange(4)[None, :] < lengths[:, None]
    assert torch.equal(full, (within[:, None, :] | torch.eye(4, dtype=torch.bool))[:, None])


def test_attention_mask_feeds_sdpa():
    op, ctx = context("attention_mask", {"window": 2}, t(B, 5, dtype="int64"))
    assert ctx.outputs == [t(B, 1, 5, 5, dtype="bool")]
    context("sdpa", {}, t(B, 2, 5, 4), t(B, 2, 5, 4), t(B, 2, 5, 4), ctx.outputs[0])


@pytest.mark.parametrize("attrs,inputs,message", [
    ({}, (t(5, dtype="int64"),), "axis 1"),
    ({"pad_id": 0}, (t(2, 5, 3),), "pad_id compares token ids"),
    ({}, (t(2, 5, dtype="int64"), t(3, dtype="int64")), "one integer per sample"),
    ({}, (t(2, 5, dtype="int64"), t(2, dtype="float32")), "one integer per sample"),
])
def test_attention_mask_rejects_bad_inputs(attrs, inputs, message):
    with pytest.raises(ShapeError, match=message):
        context("attention_mask", attrs, *inputs)


@pytest.mark.parametrize("attrs,message", [
    ({"kind": "block_causal"}, "block exactly with kind: block_causal"),
    ({"block": 2}, "block exactly with kind: block_causal"),
    ({"window": 0}, "must be positive"),
    ({"kind": "sliding"}, "unsupported value"),
])
def test_attention_mask_rejects_bad_attributes(attrs, message):
    with pytest.raises(SpecError, match=message):
        get_op("attention_mask").validate_attrs(attrs)


# -- gqa_attention --------------------------------------------------------------------------------------------

def reference_gqa(module, x, mask=None, rope="half", rotary_dim=None, theta=10000.0):
    """Plain multi-head attention with the key/value heads repeated (repeat_interleave) to the query heads."""
    b, n, _ = x.shape
    h, kv, d = module.heads, module.kv_heads, module.head_dim
    q = module.q_proj(x).view(b, n, h, d).transpose(1, 2)
    k = module.k_proj(x).view(b, n, kv, d).transpose(1, 2)
    v = module.v_proj(x).view(b, n, kv, d).transpose(1, 2)
    if rope is not None:
        r = rotary_dim or d
        fn = reference_rope_half if rope == "half" else reference_rope_interleaved
        q = torch.cat([fn(q[..., :r], theta), q[..., r:]], dim=-1)
        k = torch.cat([fn(k[..., :r], theta), k[..., r:]], dim=-1)
    k, v = k.repeat_interleave(h // kv, dim=1), v.repeat_interleave(h // kv, dim=1)
    out = reference_attention(q, k, v, causal(n) if mask is None else mask)
    return module.o_proj(out.transpose(1, 2).reshape(b, n, h * d))


@pytest.mark.parametrize("attrs", [
    {"heads": 4, "kv_heads": 2},
    {"heads": 4, "kv_heads": 1, "head_dim": 6, "qkv_bias": True, "out_bias": True},
    {"heads": 4, "theta": 500.0, "rope_layout": "interleaved", "rotary_dim": 2},
])
def test_gqa_matches_repeated_kv_reference(attrs):
    x = torch.randn(2, 7, 16)
    module = build("gqa_attention", attrs, t(2, 7, 16))
    want = reference_gqa(module, x, rope=attrs.get("rope_layout", "half"), rotary_dim=attrs.get("rotary_dim"),
                         theta=attrs.get("theta", 10000.0))
    torch.testing.assert_close(module(x), want, atol=1e-5, rtol=1e-5)


def test_gqa_equals_multi_head_attention_with_repeated_kv_weights():
    x = torch.randn(2, 6, 16)
    gqa = build("gqa_attention", {"heads": 4, "kv_heads": 2}, t(2, 6, 16))
    mha = build("gqa_attention", {"heads": 4}, t(2, 6, 16))
    state = gqa.state_dict()
    for name in ("k_proj.weight", "v_proj.weight"):    # kv head g serves query heads 2g and 2g + 1
        state[name] = state[name].view(2, 4, 16).repeat_interleave(2, dim=0).reshape(16, 16)
    mha.load_state_dict(state)
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=1e-5)


def test_gqa_sliding_window_alibi_and_mask_input():
    from nasforge.ops.rope import alibi_slopes
    x = torch.randn(2, 8, 12)
    i, j = torch.arange(8)[:, None], torch.arange(8)[None, :]
    window = build("gqa_attention", {"heads": 3, "window": 3}, t(2, 8, 12))
    torch.testing.assert_close(window(x), reference_gqa(window, x, (j <= i) & (i - j < 3)), atol=1e-5, rtol=1e-5)

    alibi = build("gqa_attention", {"heads": 4, "rope": False, "alibi": True}, t(2, 8, 12))
    bias = (alibi_slopes(4)[:, None, None] * (j - i)).masked_fill(~causal(8), float("-inf"))
    torch.testing.assert_close(alibi(x), reference_gqa(alibi, x, bias, rope=None), atol=1e-5, rtol=1e-5)

    ids = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 0, 0]])
    padding = build("attention_mask", {"kind": "full", "pad_id": 0}, t(2, 8, dtype="int64"))(ids)
    masked = build("gqa_attention", {"heads": 2, "kv_heads": 1, "masked": True},
                   t(2, 8, 12), t(2, 1, 8, 8, dtype="bool"))
    want = reference_gqa(masked, x, padding & causal(8))         # the mask input is combined with causal
    torch.testing.assert_close(masked(x, padding), want, atol=1e-5, rtol=1e-5)


def test_gqa_parameters_follow_hf_names_and_macs_match_torch():
    op, ctx = context("gqa_attention", {"heads": 32, "kv_heads": 4}, t(1, 16, 2048))
    assert op.params(ctx) == {"q_proj.weight": (2048, 2048), "k_proj.weight": (256, 2048),
                              "v_proj.weight": (256, 2048), "o_proj.weight": (2048, 2048)}
    assert op.macs(ctx) == 16 * 2048 * (2048 + 256 + 256 + 2048) + 2 * 16 * 16 * 2048
    small_op, small = context("gqa_attention", {"heads": 4, "kv_heads": 2, "window": 2}, t(2, 5, 16))
    module = small_op.lower(small).eval()
    assert {k: tuple(v.shape) for k, v in module.named_parameters()} == small_op.params(small)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(torch.randn(2, 5, 16))
    assert counter.get_total_flops() == 2 * small_op.macs(small)


def test_gqa_exports_with_dynamic_batch():
    module = build("gqa_attention", {"heads": 4, "kv_heads": 2, "window": 3, "masked": True},
                   t(2, 6, 16), t(2, 1, 6, 6, dtype="bool"))
    x, mask = torch.randn(2, 6, 16), torch.ones(2, 1, 6, 6, dtype=torch.bool)
    program = torch.export.export(module, (x, mask), dynamic_shapes=({0: Dim("batch")}, {0: Dim("batch")}))
    x3, mask3 = torch.randn(3, 6, 16), torch.rand(3, 1, 6, 6) > 0.2
    mask3 |= torch.eye(6, dtype=torch.bool)
    torch.testing.assert_close(program.module()(x3, mask3), module(x3, mask3))


def test_rope_exports_with_dynamic_batch_and_sequence():
    module = build("rope", {"grid": [4, 4], "prefix": 1, "prefix_mode": "zero", "layout": "interleaved",
                            "axis": 1}, t(2, 9, 3, 8))
    x = torch.randn(2, 9, 3, 8)
    program = torch.export.export(module, (x,), dynamic_shapes=({0: Dim("batch"), 1: Dim("seq", max=17)},))
    y = torch.randn(3, 12, 3, 8)
    torch.testing.assert_close(program.module()(y), module(y))


@pytest.mark.parametrize("attrs,inputs,message", [
    ({"heads": 3}, (t(2, 5, 8),), "heads must divide the channels"),
    ({"heads": 2}, (t(10, 8),), "rank 3"),
    ({"heads": 2}, (t(2, 5, 8, dtype="int64"),), "floating-point"),
    ({"heads": 2}, (t(2, 5, Sym.of("C")),), "static channel"),
    ({"heads": 2, "head_dim": 5}, (t(2, 5, 8),), "even feature width"),
    ({"heads": 2}, (t(2, 5, 8), t(5, 5, dtype="bool")), "exactly when masked"),
    ({"heads": 2, "masked": True}, (t(2, 5, 8),), "exactly when masked"),
    ({"heads": 2, "masked": True}, (t(2, 5, 8), t(2, 3, 5, 5, dtype="bool")), "does not broadcast"),
    ({"heads": 2, "masked": True}, (t(2, 5, 8), t(5, 5, dtype="int64")), "bool .* or additive"),
])
def test_gqa_rejects_bad_inputs(attrs, inputs, message):
    with pytest.raises(ShapeError, match=message):
        context("gqa_attention", attrs, *inputs)


@pytest.mark.parametrize("attrs,message", [
    ({"heads": 4, "kv_heads": 3}, "must divide the query heads"),
    ({"heads": 0}, "must be positive"),
    ({"heads": 2, "window": 0}, "must be positive"),
    ({"heads": 2, "rope": False, "rotary_dim": 4}, "rotary_dim needs rope"),
    ({"heads": 2, "rotary_dim": 3}, "must be even"),
    ({"heads": 2, "attn_drop": 1.0}, "dropout probability"),
])
def test_gqa_rejects_bad_attributes(attrs, message):
    with pytest.raises(SpecError, match=message):
        get_op("gqa_attention").validate_attrs(attrs)
