"""The masking ops beyond the generic harness: ``random_masking`` against MAE's ``random_masking`` written
out here (same noise, same outputs), its train/eval behaviour, ``gather`` in both index forms,
``mask_token``, shape errors, and torch.export with a dynamic batch."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim

from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.masking import RandomMasking, gather_along, kept_tokens
from nasforge.ops.registry import OpContext
from nasforge.types import Sym, TensorType

B = Sym.of("B")


def t(*shape, dtype: str = "float32") -> TensorType:
    return TensorType(tuple(shape), dtype)


def context(name: str, attrs: dict, *inputs: TensorType) -> tuple:
    op = get_op(name)
    ctx = OpContext(op.validate_attrs(attrs), list(inputs))
    ctx.outputs = op.infer(ctx)
    return op, ctx


def mae_random_masking(x: torch.Tensor, ratio: float, noise: torch.Tensor):
    """MAE's MaskedAutoencoderViT.random_masking (facebookresearch/mae) with the noise passed in."""
    n, length, d = x.shape
    len_keep = int(length * (1 - ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, d))
    mask = torch.ones([n, length])
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return x_masked, mask, ids_restore


# -- random_masking --------------------------------------------------------------------------------

def test_kept_count_is_maes_len_keep():
    assert kept_tokens(196, 0.75) == 49                # ViT-B/16 at 224: 49 of 196 patches
    assert kept_tokens(256, 0.75) == 64                # ViT-H/14
    assert kept_tokens(10, 0.8) == 1   # 10 * (1 - 0.8) is 1.9999999999999996 in floats: MAE's int() truncates
    _, ctx = context("random_masking", {"ratio": 0.75}, t(B, 196, 768))
    assert [o.shape for o in ctx.outputs] == [(B, 49, 768), (B, 196), (B, 196)]
    assert [o.dtype for o in ctx.outputs] == ["float32", "float32", "int64"]


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.0])
def test_equals_mae_with_the_same_noise(ratio):
    gen = torch.Generator().manual_seed(0)
    x, noise = torch.randn(3, 16, 5, generator=gen), torch.rand(3, 16, generator=gen)
    module = RandomMasking(kept_tokens(16, ratio))
    for training in (True, False):   # a given noise decides the order in both modes
        module.train(training)
        for got, want in zip(module(x, noise), mae_random_masking(x, ratio, noise)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_training_draws_noise_as_mae_does():
    x = torch.randn(2, 12, 4)
    module = RandomMasking(3).train()
    torch.manual_seed(7)
    got = module(x)
    torch.manual_seed(7)
    want = mae_random_masking(x, 0.75, torch.rand(2, 12))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert any(not torch.equal(module(x)[2], got[2]) for _ in range(3))   # fresh noise on every call


def test_eval_keeps_the_first_tokens_unless_asked_for_random():
    x = torch.randn(2, 8, 3)
    kept, mask, ids_restore = RandomMasking(2).eval()(x)
    torch.testing.assert_close(kept, x[:, :2])
    torch.testing.assert_close(mask, torch.tensor([[0.0] * 2 + [1.0] * 6] * 2))
    assert torch.equal(ids_restore, torch.arange(8).expand(2, 8))
    random = RandomMasking(2, eval_random=True).eval()
    torch.manual_seed(0)
    orders = {tuple(random(x)[2][0].tolist()) for _ in range(5)}
    assert len(orders) > 1


def test_mask_restores_and_marks_the_removed_tokens():
    x = torch.randn(4, 10, 6)
    kept, mask, ids_restore = RandomMasking(4).train()(x)
    assert mask.sum(1).tolist() == [6.0] * 4
    # unshuffling [kept, zeros] puts every kept token back where it came from, zeros where masked
    full = gather_along(torch.cat([kept, torch.zeros(4, 6, 6)], dim=1), ids_restore, 1)
    torch.testing.assert_close(full, x * (1 - mask)[..., None])


@pytest.mark.parametrize("attrs, inputs, message", [
    ({"ratio": 0.75}, [t(B, 196)], "takes \\[B, N, C\\] tokens"),
    ({"ratio": 0.75}, [t(B, 196, 8, dtype="int64")], "floating-point tokens"),
    ({"ratio": 0.75}, [t(B, B, 8)], "static token count"),
    ({"ratio": 0.9}, [t(B, 5, 8)], "would keep no token"),
    ({"ratio": 0.5}, [t(B, 6, 8), t(B, 5)], "one number per token"),
    ({"ratio": 0.5}, [t(B, 6, 8), t(B, 6, dtype="int64")], "one number per token"),
])
def test_random_masking_shape_errors(attrs, inputs, message):
    with pytest.raises(ShapeError, match=message):
        context("random_masking", attrs, *inputs)


@pytest.mark.parametrize("attrs, message", [
    ({"ratio": 1.0}, "fraction of tokens removed"),
    ({"ratio": -0.1}, "fraction of tokens removed"),
    ({"ratio": 0.5, "eval_order": "last"}, "unsupported value"),
])
def test_random_masking_attribute_errors(attrs, message):
    with pytest.raises(SpecError, match=message):
        get_op("random_masking").validate_attrs(attrs)


@pytest.mark.parametrize("training", [True, False])
def test_random_masking_exports_with_a_dynamic_batch(training):
    module = RandomMasking(3).train(training)
    x = torch.randn(2, 12, 4)
    program = torch.export.export(module, (x,), dynamic_shapes=({0: Dim("batch", min=1, max=64)},))
    other = torch.randn(5, 12, 4)
    shapes = [tuple(o.shape) for o in program.module()(other)]
    assert shapes == [(5, 3, 4), (5, 12), (5, 12)]
    if not training:
        for a, b in zip(program.module()(other), module(other)):
            torch.testing.assert_close(a, b)


# -- gather ----------------------------------------------------------------------------------------

def test_gather_broadcasts_a_short_index_over_trailing_axes():
    x, index = torch.randn(2, 5, 3, 4), torch.tensor([[4, 0, 0], [1, 2, 3]])
    _, ctx = context("gather", {"axis": 1}, t(B, 5, 3, 4), t(B, 3, dtype="int64"))
    assert ctx.outputs[0].shape == (B, 3, 3, 4)
    out = gather_along(x, index, 1)
    for b in range(2):
        for m in range(3):
            torch.testing.assert_close(out[b, m], x[b, index[b, m]])


def test_gather_with_a_full_rank_index_is_torch_gather():
    x, index = torch.randn(2, 5, 4), torch.randint(0, 5, (2, 3, 4))
    _, ctx = context("gather", {"axis": 1}, t(B, 5, 4), t(B, 3, 4, dtype="int64"))
    assert ctx.outputs[0].shape == (B, 3, 4)
    torch.testing.assert_close(gather_along(x, index, 1), torch.gather(x, 1, index))
    torch.testing.assert_close(gather_along(x, index.int(), 1), torch.gather(x, 1, index))


@pytest.mark.parametrize("attrs, inputs, message", [
    ({}, [t(B, 5, 4), t(B, 3, dtype="float32")], "integer index"),
    ({}, [t(B, 5, 4), t(4, 3, dtype="int64")], "axes up to axis 1"),
    ({"axis": 2}, [t(B, 5, 4, 2), t(B, 3, dtype="int64")], "axes up to axis 2"),
    ({}, [t(B, 5, 4), t(B, 3, 6, dtype="int64")], "larger than the input on axis 2"),
    ({"axis": 3}, [t(B, 5, 4), t(B, 3, 4, dtype="int64")], "out of range"),
])
def test_gather_shape_errors(attrs, inputs, message):
    with pytest.raises(ShapeError, match=message):
        context("gather", attrs, *inputs)


# -- mask_token ------------------------------------------------------------------------------------

def test_mask_token_appends_one_learned_token():
    op, ctx = context("mask_token", {"length": 7}, t(B, 3, 4))
    assert ctx.outputs[0].shape == (B, 7, 4)
    module = op.lower(OpContext(ctx.attrs, [t(2, 3, 4)]))
    assert {k: tuple(v.shape) for k, v in module.named_parameters()} == {"token": (1, 1, 4)}
    x = torch.randn(2, 3, 4)
    out = module(x)
    torch.testing.assert_close(out[:, :3], x)
    torch.testing.assert_close(out[:, 3:], module.token.expand(2, 4, 4))


@pytest.mark.parametrize("attrs, x, error, message", [
    ({"length": 2}, t(B, 3, 4), ShapeError, "cannot shorten"),
    ({"length": 0}, t(B, 3, 4), SpecError, "must be positive"),
    ({"length": 5}, t(B, 3), ShapeError, "takes \\[B, N, C\\] tokens"),
])
def test_mask_token_errors(attrs, x, error, message):
    with pytest.raises(error, match=message):
        context("mask_token", attrs, x)
