"""The embedding entries beyond the generic harness: bad inputs, the sin-cos tables against their papers'
formulas, buffers vs parameters, and export with a dynamic batch."""

from __future__ import annotations

import math

import pytest
import torch

from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.registry import OpContext
from nasforge.types import Sym, TensorType

B = Sym.of("B")


def context(name: str, attrs: dict, x: TensorType) -> tuple:
    op = get_op(name)
    ctx = OpContext(op.validate_attrs(attrs), [x])
    ctx.outputs = op.infer(ctx)
    return op, ctx


def build(name: str, attrs: dict, x: TensorType) -> torch.nn.Module:
    op, ctx = context(name, attrs, x)
    return op.lower(ctx).eval()


def t(*shape, dtype: str = "float32") -> TensorType:
    return TensorType(tuple(shape), dtype)


@pytest.mark.parametrize("name,attrs,x,message", [
    ("embedding", {"num": 5, "dim": 3}, t(2, 4), "integer token ids"),
    ("pos_embed_learned", {}, t(4), "rank >= 2"),
    ("pos_embed_learned", {}, t(2, Sym.of("N"), 4), "static non-batch"),
    ("pos_embed_learned", {}, t(2, 5, 4, dtype="int64"), "floating-point"),
    ("pos_embed_learned", {"tokens": 4}, t(2, 5, 4), "longer than the position table"),
    ("pos_embed_learned", {"tokens": 8}, t(2, 3, 4, 4), r"\[B, N, C\] tokens"),
    ("pos_embed_sincos", {}, t(2, 5, 5), "even channel count"),
    ("pos_embed_sincos", {"grid": True}, t(2, 9, 6), "divisible by 4"),
    ("pos_embed_sincos", {"grid": True}, t(2, 8, 4), "square token count"),
    ("pos_embed_sincos", {"grid": True, "h": 2, "w": 3}, t(2, 8, 4), "N = h\\*w = 6"),
    ("pos_embed_sincos", {}, t(2, 4, 4, 4), "rank 3"),
    ("class_token", {}, t(2, 4), "rank 3"),
    ("class_token", {}, t(2, Sym.of("N"), 4), "static non-batch"),
])
def test_rejects_bad_inputs(name, attrs, x, message):
    with pytest.raises(ShapeError, match=message):
        context(name, attrs, x)


@pytest.mark.parametrize("name,attrs,message", [
    ("embedding", {"num": 5, "dim": 3, "padding_idx": 5}, "padding_idx must be a valid id"),
    ("embedding", {"num": 0, "dim": 3}, "must be positive"),
    ("pos_embed_learned", {"tokens": 0}, "must be positive"),
    ("pos_embed_sincos", {"h": 2, "w": 2}, "only with grid: true"),
    ("pos_embed_sincos", {"grid": True, "h": 2}, "both h and w"),
    ("class_token", {"count": 0}, "must be positive"),
])
def test_rejects_bad_attributes(name, attrs, message):
    with pytest.raises(SpecError, match=message):
        get_op(name).validate_attrs(attrs)


def test_embedding_shape_and_padding_row():
    _, ctx = context("embedding", {"num": 7, "dim": 3}, t(B, 2, 5, dtype="int32"))
    assert ctx.outputs == [t(B, 2, 5, 3)]
    module = build("embedding", {"num": 7, "dim": 3, "padding_idx": -1}, t(2, 5, dtype="int64"))
    assert torch.equal(module(torch.tensor([6])), torch.zeros(1, 3))


def test_learned_position_table_shapes_and_slicing():
    op, ctx = context("pos_embed_learned", {}, t(B, 3, 4, 4))
    assert op.params(ctx) == {"pos": (1, 3, 4, 4)}
    module = build("pos_embed_learned", {"tokens": 8}, t(2, 5, 4))
    assert tuple(module.pos.shape) == (1, 8, 4)
    assert float(module.pos.detach().abs().max()) <= 0.04  # truncated normal, std 0.02
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(module(x), x + module.pos[:, :5])


def test_sincos_1d_is_vaswani():
    n, c = 6, 8
    module = build("pos_embed_sincos", {}, t(2, n, c))
    want = torch.tensor([[math.sin(pos / 10000 ** (i / c)) if i % 2 == 0 else math.cos(pos / 10000 ** ((i - 1) / c))
                          for i in range(c)] for pos in range(n)])
    torch.testing.assert_close(module(torch.zeros(1, n, c))[0], want)


def mae_1d(dim: int, pos: int) -> list[float]:
    """MAE's get_1d_sincos_pos_embed_from_grid for one position: sines, then cosines."""
    omegas = [1.0 / 10000 ** (i / (dim / 2)) for i in range(dim // 2)]
    return [math.sin(pos * o) for o in omegas] + [math.cos(pos * o) for o in omegas]


def test_sincos_grid_is_mae():
    h, w, c = 2, 3, 8
    module = build("pos_embed_sincos", {"grid": True, "h": h, "w": w}, t(2, h * w, c))
    want = torch.tensor([mae_1d(c // 2, col) + mae_1d(c // 2, row) for row in range(h) for col in range(w)])
    torch.testing.assert_close(module(torch.zeros(1, h * w, c))[0], want)


def test_sincos_table_is_a_buffer_in_the_input_dtype():
    module = build("pos_embed_sincos", {"grid": True}, t(2, 4, 4, dtype="float64"))
    assert not list(module.parameters()) and not module.state_dict()
    assert module(torch.zeros(2, 4, 4, dtype=torch.float64)).dtype == torch.float64


def test_class_tokens_come_first():
    op, ctx = context("class_token", {"count": 2}, t(B, 5, 4))
    assert ctx.outputs == [t(B, 7, 4)]
    module = build("class_token", {"count": 2}, t(3, 5, 4))
    x = torch.randn(3, 5, 4)
    out = module(x)
    torch.testing.assert_close(out[:, 2:], x)
    torch.testing.assert_close(out[:, :2], module.token.expand(3, -1, -1))


@pytest.mark.parametrize("name,attrs", [
    ("class_token", {"count": 2}),
    ("pos_embed_learned", {"tokens": 8}),
    ("pos_embed_sincos", {"grid": True}),
])
def test_exports_with_dynamic_batch(name, attrs):
    module = build(name, attrs, t(3, 4, 8))
    program = torch.export.export(module, (torch.randn(3, 4, 8),), dynamic_shapes=[{0: torch.export.Dim("batch")}])
    wider = torch.randn(6, 4, 8)
    torch.testing.assert_close(program.module()(wider), module(wider))
