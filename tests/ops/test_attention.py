"""The attention entries beyond the generic harness: bad inputs, numerics against a plain reference,
FlopCounterMode on the CPU flash kernel, export with a dynamic batch and timm's ViT parameter counts."""

from __future__ import annotations

import math

import pytest
import torch
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
    module = op.lower(ctx)
    return module.eval()


def t(*shape, dtype: str = "float32") -> TensorType:
    return TensorType(tuple(shape), dtype)


def reference_attention(q, k, v, mask=None, causal=False, scale=None):
    """softmax(q k^T * scale + mask) v, written out."""
    scores = q @ k.transpose(-2, -1) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return scores.softmax(-1) @ v


# -- sdpa -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("inputs,message", [
    ((t(2, 5, 4), t(2, 7, 3), t(2, 7, 4)), "same feature width"),
    ((t(2, 5, 4), t(2, 7, 4), t(2, 6, 4)), "same sequence length"),
    ((t(2, 5, 4), t(3, 7, 4), t(3, 7, 4)), "same leading"),
    ((t(2, 3, 5, 4), t(2, 7, 4), t(2, 7, 4)), "same leading"),
    ((t(4), t(4), t(4)), "rank >= 2|sequence and a feature axis"),
    ((t(2, 5, 4, dtype="int64"), t(2, 7, 4), t(2, 7, 4)), "floating-point"),
    ((t(2, 5, 4), t(2, 7, 4, dtype="float64"), t(2, 7, 4)), "one dtype"),
    ((t(2, 5, 4), t(2, 7, 4), t(2, 7, 4), t(5, 6, dtype="bool")), "does not broadcast"),
    ((t(2, 5, 4), t(2, 7, 4), t(2, 7, 4), t(3, 2, 5, 7, dtype="bool")), "does not broadcast"),
    ((t(2, 5, 4), t(2, 7, 4), t(2, 7, 4), t(5, 7, dtype="int64")), "bool .* or additive"),
])
def test_sdpa_rejects_bad_inputs(inputs, message):
    with pytest.raises(ShapeError, match=message):
        context("sdpa", {}, *inputs)


def test_sdpa_rejects_causal_with_mask_and_bad_dropout():
    with pytest.raises(ShapeError, match="causal attention takes no explicit mask"):
        context("sdpa", {"causal": True}, t(2, 5, 4), t(2, 5, 4), t(2, 5, 4), t(5, 5, dtype="bool"))
    with pytest.raises(SpecError, match="dropout probability"):
        get_op("sdpa").validate_attrs({"p": 1.0})


def test_sdpa_shape_is_symbolic_and_counts_full_scores():
    op, ctx = context("sdpa", {"causal": True}, t(B, 4, 5, 8), t(B, 4, 7, 8), t(B, 4, 7, 6))
    assert ctx.outputs == [t(B, 4, 5, 6)]
    _, concrete = context("sdpa", {"causal": True}, t(2, 4, 5, 8), t(2, 4, 7, 8), t(2, 4, 7, 6))
    assert op.macs(concrete) == 2 * 4 * 5 * 7 * (8 + 6)


@pytest.mark.parametrize("attrs,mask", [
    ({}, None),
    ({"causal": True}, None),
    ({"scale": 0.3}, torch.rand(5, 5) > 0.3),
    ({}, torch.randn(2, 1, 5, 5)),
])
def test_sdpa_matches_reference(attrs, mask):
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    types = [t(*x.shape) for x in (q, k, v)] + ([] if mask is None else
                                                 [t(*mask.shape, dtype="bool" if mask.dtype == torch.bool else "float32")])
    op, ctx = context("sdpa", attrs, *types)
    lowered = op.lower(ctx)
    got = lowered.fn(q, k, v, *([] if mask is None else [mask]), **lowered.kwargs)
    want = reference_attention(q, k, v, mask, attrs.get("causal", False), attrs.get("scale"))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_sdpa_dropout_only_in_training():
    q, k, v = (torch.randn(2, 5, 4) for _ in range(3))
    op, ctx = context("sdpa", {"p": 0.5}, t(2, 5, 4), t(2, 5, 4), t(2, 5, 4))
    module = op.lower(ctx).eval()
    torch.testing.assert_close(module(q, k, v), reference_attention(q, k, v))
    module.train()
    assert not torch.allclose(module(q, k, v), reference_attention(q, k, v))


def test_flop_counter_counts_the_cpu_flash_kernel_forward_and_backward():
    # 4-D, equal query/value widths and no dropout: CPU picks the flash kernel torch has no formula for
    q = torch.randn(2, 3, 5, 8, requires_grad=True)
    k, v = torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    with FlopCounterMode(display=False) as counter:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    forward = counter.get_total_flops()
    assert forward == 2 * 2 * 3 * 5 * 7 * (8 + 8)
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() > forward


# -- attention ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("attrs,inputs,message", [
    ({"heads": 3}, (t(2, 5, 8),), "heads must divide"),
    ({"heads": 2}, (t(10, 8),), "rank 3"),
    ({"heads": 2}, (t(2, 5, 8), t(2, 5, 8), t(5, 5)), "mask only with masked=true"),
    ({"heads": 2, "masked": True}, (t(2, 5, 8),), "1 or 2 token inputs plus a mask"),
    ({"heads": 2, "masked": True, "causal": True}, (t(2, 5, 8), t(5, 5, dtype="bool")), "no explicit mask"),
    ({"heads": 2}, (t(2, 5, 8), t(3, 7, 4)), "same batch"),
    ({"heads": 2}, (t(2, 5, 8), t(2, 7, 4, dtype="float64")), "one dtype"),
    ({"heads": 2}, (t(2, 5, 8), t(2, 7)), "context must be"),
    ({"heads": 2}, (t(2, 5, 8, dtype="int64"),), "floating-point"),
    ({"heads": 2}, (t(2, 5, Sym.of("C")),), "static channel"),
    ({"heads": 2, "masked": True}, (t(2, 5, 8), t(2, 7, 4), t(5, 5, dtype="bool")), "does not broadcast"),
    ({"heads": 2, "masked": True}, (t(2, 5, 8), t(2, 3, 5, 5)), "does not broadcast"),
])
def test_attention_rejects_bad_inputs(attrs, inputs, message):
    with pytest.raises(ShapeError, match=message):
        context("attention", attrs, *inputs)


@pytest.mark.parametrize("attrs,message", [
    ({"heads": 3, "dim": 8}, "heads must divide"),
    ({"heads": 0}, "must be positive"),
    ({"heads": 2, "attn_drop": -0.1}, "dropout probability"),
    ({"heads": 2, "proj_drop": 1.5}, "dropout probability"),
])
def test_attention_rejects_bad_attributes(attrs, message):
    with pytest.raises(SpecError, match=message):
        get_op("attention").validate_attrs(attrs)


def test_attention_shape_is_symbolic_in_batch():
    _, ctx = context("attention", {"heads": 2, "masked": True}, t(B, 5, 8), t(B, 7, 4), t(B, 1, 1, 7))
    assert ctx.outputs == [t(B, 5, 8)]


def test_attention_matches_timm_vit_parameter_count():
    # timm vit_base_patch16_224 block attention: qkv Linear(768, 2304) and proj Linear(768, 768), with biases
    op, ctx = context("attention", {"heads": 12}, t(1, 197, 768))
    params = op.params(ctx)
    assert params == {"qkv.weight": (2304, 768), "qkv.bias": (2304,), "proj.weight": (768, 768),
                      "proj.bias": (768,)}
    assert sum(math.prod(s) for s in params.values()) == 2_362_368
    assert op.macs(ctx) == 197 * 768 * 2304 + 197 * 768 * 768 + 2 * 197 * 197 * 768


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def test_self_attention_matches_reference():
    x = torch.randn(2, 5, 8)
    module = build("attention", {"heads": 2, "dim": 12, "causal": True}, t(2, 5, 8))
    q, k, v = (split_heads(part, 2) for part in module.qkv(x).chunk(3, dim=-1))
    want = module.proj(reference_attention(q, k, v, causal=True).transpose(1, 2).flatten(2))
    torch.testing.assert_close(module(x), want, atol=1e-5, rtol=1e-5)


def test_masked_cross_attention_matches_reference():
    x, ctx_tokens = torch.randn(2, 5, 8), torch.randn(2, 7, 4)
    mask = torch.rand(5, 7) > 0.3
    mask[:, 0] = True  # every query attends somewhere
    module = build("attention", {"heads": 2, "masked": True}, t(2, 5, 8), t(2, 7, 4), t(5, 7, dtype="bool"))
    q = split_heads(module.q(x), 2)
    k, v = (split_heads(part, 2) for part in module.kv(ctx_tokens).chunk(2, dim=-1))
    want = module.proj(reference_attention(q, k, v, mask).transpose(1, 2).flatten(2))
    torch.testing.assert_close(module(x, ctx_tokens, mask), want, atol=1e-5, rtol=1e-5)


def test_attention_dropout_is_identity_in_eval():
    x = torch.randn(2, 5, 8)
    module = build("attention", {"heads": 2, "attn_drop": 0.5, "proj_drop": 0.5}, t(2, 5, 8))
    torch.testing.assert_close(module(x), module(x))
    assert not torch.allclose(module.train()(x), module.eval()(x))


@pytest.mark.parametrize("attrs,shapes", [
    ({"heads": 2}, [(3, 5, 8)]),
    ({"heads": 2, "masked": True}, [(3, 5, 8), (3, 7, 4), (3, 1, 1, 7)]),
])
def test_attention_exports_with_dynamic_batch(attrs, shapes):
    types = [t(*s) for s in shapes]
    module = build("attention", attrs, *types)
    inputs = tuple(torch.randn(s) for s in shapes)
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, inputs, dynamic_shapes=[{0: batch} for _ in shapes])
    wider = tuple(torch.randn((6,) + s[1:]) for s in shapes)
    torch.testing.assert_close(program.module()(*wider), module(*wider))
