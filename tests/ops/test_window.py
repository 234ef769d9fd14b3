"""The window ops beyond the generic harness: layouts against plain loops, the relative position index and
the shifted-window mask against their definitions in the Swin paper, window attention against a per-window
reference, shape errors, and torch.export with a dynamic batch."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.export import Dim

from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.registry import OpContext
from nasforge.ops.window import partition_windows, relative_position_index, reverse_windows, shift_mask
from nasforge.types import Sym, TensorType

B = Sym.of("B")


def t(*shape, dtype: str = "float32") -> TensorType:
    return TensorType(tuple(shape), dtype)


def context(name: str, attrs: dict, *inputs: TensorType) -> tuple:
    op = get_op(name)
    ctx = OpContext(op.validate_attrs(attrs), list(inputs))
    ctx.outputs = op.infer(ctx)
    return op, ctx


# -- partition / reverse ---------------------------------------------------------------------------

@pytest.mark.parametrize("window", [(2, 2), (3, 2), (1, 4)])
def test_partition_puts_each_window_in_place(window):
    wh, ww = window
    x = torch.randn(2, 6, 8, 3)
    windows = partition_windows(x, wh, ww)
    assert windows.shape == (2, 6 // wh, 8 // ww, wh, ww, 3)
    for i, j in itertools.product(range(6 // wh), range(8 // ww)):
        torch.testing.assert_close(windows[:, i, j], x[:, i * wh:(i + 1) * wh, j * ww:(j + 1) * ww])
    torch.testing.assert_close(reverse_windows(windows), x)


def test_rules_for_partition_and_reverse():
    _, ctx = context("window_partition", {"window": 7}, t(B, 56, 56, 96))
    assert ctx.outputs[0].shape == (B, 8, 8, 7, 7, 96)
    _, ctx = context("window_partition", {"window": [2, 3]}, t(B, 4, 9, 5))
    assert ctx.outputs[0].shape == (B, 2, 3, 2, 3, 5)
    _, ctx = context("window_reverse", {}, t(B, 8, 8, 7, 7, 96))
    assert ctx.outputs[0].shape == (B, 56, 56, 96)


@pytest.mark.parametrize("name, attrs, x, message", [
    ("window_partition", {"window": 7}, t(B, 24, 28, 3), "H is not a multiple of the window"),
    ("window_partition", {"window": [2, 3]}, t(B, 4, 4, 3), "W is not a multiple of the window"),
    ("window_partition", {"window": 2}, t(B, 3, 4, 4, 2), "channels-last map"),
    ("window_partition", {"window": 2}, t(B, B, 4, 2), "static H"),
    ("window_reverse", {}, t(B, 4, 4, 3), "rank 6|output of window_partition"),
    ("window_attention", {"heads": 2}, t(B, 16, 8), "window_partition"),
    ("window_attention", {"heads": 3}, t(B, 2, 2, 4, 4, 8), "heads must divide"),
    ("window_attention", {"heads": 2, "shift": 4}, t(B, 2, 2, 4, 4, 8), "smaller than the window"),
    ("window_attention", {"heads": 2, "shift": [0, 3]}, t(B, 2, 2, 4, 3, 8), "smaller than the window"),
    ("window_attention", {"heads": 2}, t(B, 2, 2, 4, 4, 8, dtype="int64"), "floating-point"),
])
def test_shape_errors_say_what_was_expected(name, attrs, x, message):
    with pytest.raises(ShapeError, match=message) as err:
        context(name, attrs, x)
    assert err.value.expected and err.value.found


@pytest.mark.parametrize("name, attrs", [
    ("window_partition", {"window": 0}),
    ("window_partition", {"window": [2, 2, 2]}),
    ("window_attention", {"heads": 2, "shift": -1}),
    ("window_attention", {"heads": 0}),
    ("window_attention", {"heads": 2, "attn_drop": 1.0}),
])
def test_bad_attributes(name, attrs):
    with pytest.raises(SpecError):
        get_op(name).validate_attrs(attrs)


# -- relative positions and the shift mask, from their definitions ----------------------------------

@pytest.mark.parametrize("window", [(7, 7), (2, 3)])
def test_relative_position_index_reads_the_offset(window):
    """Token pair (p, q) of a window reads the table row of the offset p - q = (dy, dx), with dy in
    (-wh, wh) and dx in (-ww, ww) laid out row-major: (dy + wh - 1) * (2ww - 1) + (dx + ww - 1)."""
    wh, ww = window
    index = relative_position_index(wh, ww)
    tokens = [(y, x) for y in range(wh) for x in range(ww)]
    for p, (py, px) in enumerate(tokens):
        for q, (qy, qx) in enumerate(tokens):
            assert index[p, q] == (py - qy + wh - 1) * (2 * ww - 1) + (px - qx + ww - 1)
    assert index.max() == (2 * wh - 1) * (2 * ww - 1) - 1


@pytest.mark.parametrize("grid, window, shift", [((8, 8), (7, 7), (3, 3)), ((2, 3), (4, 2), (2, 1)),
                                                 ((3, 2), (3, 3), (1, 0))])
def test_shift_mask_separates_tokens_the_roll_wrapped_around(grid, window, shift):
    """After rolling by -s, the rows r >= S - s of an axis of length S came round from the other border.
    Two tokens of one window may attend to each other only if, on each axis, both or neither wrapped."""
    mask = shift_mask(grid, window, shift)
    n = window[0] * window[1]
    assert mask.shape == (grid[0] * grid[1], n, n)
    sizes = [g * w for g, w in zip(grid, window)]
    for gi, gj in itertools.product(range(grid[0]), range(grid[1])):
        tokens = [(gi * window[0] + y, gj * window[1] + x) for y in range(window[0]) for x in range(window[1])]
        wrapped = [tuple(c >= size - s if s else False for c, size, s in zip(tok, sizes, shift)) for tok in tokens]
        expected = torch.tensor([[0.0 if a == b else -100.0 for b in wrapped] for a in wrapped])
        torch.testing.assert_close(mask[gi * grid[1] + gj], expected)


def test_no_shift_masks_nothing():
    assert not shift_mask((2, 2), (3, 3), (0, 0)).any()


# -- window attention ------------------------------------------------------------------------------

def reference_window_attention(module, x: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
    """Self-attention window by window, as the paper writes it: softmax(Q K^T / sqrt(d) + B + M) V with
    B[p, q] the learned bias of offset p - q and M the shifted-window mask; then the output projection."""
    b, gh, gw, wh, ww, c = x.shape
    heads = module.heads
    d = c // heads
    table = module.relative_position_bias_table
    mask = shift_mask((gh, gw), (wh, ww), shift) if any(shift) else None
    tokens = [(y, xx) for y in range(wh) for xx in range(ww)]
    bias = torch.stack([torch.stack([table[(py - qy + wh - 1) * (2 * ww - 1) + (px - qx + ww - 1)]
                                     for (qy, qx) in tokens]) for (py, px) in tokens])      # N N heads
    out = torch.empty_like(x)
    for i, j in itertools.product(range(gh), range(gw)):
        w = x[:, i, j].reshape(b, wh * ww, c)
        q, k, v = module.qkv(w).reshape(b, -1, 3, heads, d).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / d ** 0.5 + bias.permute(2, 0, 1)
        if mask is not None:
            scores = scores + mask[i * gw + j]
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, -1, c)
        out[:, i, j] = module.proj(y).reshape(b, wh, ww, c)
    return out


@pytest.mark.parametrize("shape, heads, shift", [
    ((2, 2, 2, 3, 3, 8), 2, (0, 0)),
    ((2, 3, 2, 4, 4, 12), 3, (2, 2)),
    ((1, 2, 3, 3, 2, 4), 1, (1, 1)),
])
def test_window_attention_matches_a_per_window_reference(shape, heads, shift):
    op, ctx = context("window_attention", {"heads": heads, "shift": list(shift)}, t(*shape))
    module = op.lower(ctx).eval()
    with torch.no_grad():
        module.relative_position_bias_table.normal_()
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(module(x), reference_window_attention(module, x, shift), rtol=1e-4, atol=1e-5)


def test_window_attention_parameters_are_swins():
    op, ctx = context("window_attention", {"heads": 3}, t(B, 8, 8, 7, 7, 96))
    assert op.params(ctx) == {"relative_position_bias_table": (169, 3), "qkv.weight": (288, 96),
                              "qkv.bias": (288,), "proj.weight": (96, 96), "proj.bias": (96,)}
    module = op.lower(ctx)
    # the index and the mask are derived from static sizes: buffers, not saved with the weights
    assert set(module.state_dict()) == set(op.params(ctx))
    # MACs: qkv 3136*96*288, proj 3136*96*96, Q K^T and A V 2 * 64 windows * 49^2 * 96
    one = OpContext(ctx.attrs, [t(1, 8, 8, 7, 7, 96)])
    assert op.macs(one) == 3136 * 96 * 288 + 3136 * 96 * 96 + 2 * 64 * 49 * 49 * 96 == 145_108_992
    no_bias = context("window_attention", {"heads": 3, "relative_bias": False}, t(B, 8, 8, 7, 7, 96))
    assert "relative_position_bias_table" not in no_bias[0].params(no_bias[1])


def test_shifted_window_attention_exports_with_a_dynamic_batch():
    op, ctx = context("window_attention", {"heads": 2, "shift": 2}, t(2, 2, 2, 4, 4, 8))
    module = op.lower(ctx).eval()

    class Shifted(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = module

        def forward(self, x):
            w = partition_windows(torch.roll(x, (-2, -2), (1, 2)), 4, 4)
            return torch.roll(reverse_windows(self.attn(w)), (2, 2), (1, 2))

    net = Shifted().eval()
    program = torch.export.export(net, (torch.randn(2, 8, 8, 8),), dynamic_shapes=({0: Dim("batch", min=1, max=16)},))
    x = torch.randn(3, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), net(x))
