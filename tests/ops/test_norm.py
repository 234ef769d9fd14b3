"""Normalization entries beyond the generic harness: bad inputs, layouts, numerics and export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.registry import OpContext
from nasforge.types import Sym, TensorType

B = Sym.of("B")


def lowered(name: str, attrs: dict, *shape, dtype: str = "float32"):
    """Validate, infer and lower one op on one input; return (context, module in eval mode)."""
    op = get_op(name)
    ctx = OpContext(op.validate_attrs(attrs), [TensorType(tuple(shape), dtype)])
    ctx.outputs = op.infer(ctx)
    return ctx, op.lower(ctx).eval()


@pytest.mark.parametrize("name,shape,message", [
    ("batch_norm1d", (2, 3, 4, 5), r"batch_norm1d takes \[N, C\] or \[N, C, L\]"),
    ("batch_norm2d", (2, 3, 4), r"batch_norm2d takes \[N, C, H, W\]"),
    ("batch_norm3d", (2, 3, 4, 4), r"batch_norm3d takes \[N, C, D, H, W\]"),
])
def test_batch_norm_rejects_wrong_rank(name, shape, message):
    with pytest.raises(ShapeError, match=message):
        lowered(name, {}, *shape)


def test_norms_need_static_channels_and_float_inputs():
    with pytest.raises(ShapeError, match="static size on the normalized axis 1"):
        lowered("batch_norm2d", {}, 2, B, 4, 4)
    with pytest.raises(ShapeError, match="must be a floating-point tensor") as err:
        lowered("layer_norm", {}, 2, 8, dtype="int64")
    assert "int64" in str(err.value)
    with pytest.raises(ShapeError, match="static size on the normalized axis -2"):
        lowered("rms_norm", {"dims": 2}, 2, B, 4)
    with pytest.raises(ShapeError, match="needs a rank-3\\+ input"):
        lowered("layer_norm", {"dims": 3}, 2, 4)


@pytest.mark.parametrize("name,attrs,message", [
    ("layer_norm", {"eps": 0}, "needs a positive eps"),
    ("layer_norm", {"channels_first": True, "dims": 2}, "channels_first normalizes axis 1 only"),
    ("layer_norm", {"dims": 0}, "'dims' must be positive"),
    ("batch_norm2d", {"momentum": 1.5}, r"momentum must lie in \[0, 1\]"),
    ("group_norm", {"groups": 0}, "'groups' must be positive"),
    ("group_norm", {}, "needs attribute 'groups'"),
])
def test_bad_attributes(name, attrs, message):
    with pytest.raises(SpecError, match=message):
        get_op(name).validate_attrs(attrs)


def test_group_norm_checks_groups_against_channels():
    with pytest.raises(ShapeError, match="cannot split 6 channels into 4 groups"):
        lowered("group_norm", {"groups": 4}, 2, 6, 3, 3)
    with pytest.raises(ShapeError, match="more than one value per group"):
        lowered("group_norm", {"groups": 6}, 2, 6)


def test_channels_first_layer_norm_equals_layer_norm_on_permuted_input():
    ctx, module = lowered("layer_norm", {"channels_first": True, "eps": 1e-6}, 2, 4, 3, 5)
    torch.nn.init.normal_(module.weight)
    torch.nn.init.normal_(module.bias)
    x = torch.randn(2, 4, 3, 5)
    want = F.layer_norm(x.permute(0, 2, 3, 1), (4,), module.weight, module.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(module(x), want)
    assert get_op("layer_norm").params(ctx) == {"weight": (4,), "bias": (4,)}


def test_layer_norm_over_two_trailing_axes_and_without_bias():
    ctx, module = lowered("layer_norm", {"dims": 2, "bias": False}, 2, 3, 4)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(module(x), F.layer_norm(x, (3, 4)))
    assert get_op("layer_norm").params(ctx) == {"weight": (3, 4)}


def test_rms_norm_formula():
    _, module = lowered("rms_norm", {"eps": 1e-6}, 2, 3, 8)
    torch.nn.init.normal_(module.weight)
    x = torch.randn(2, 3, 8)
    want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * module.weight
    torch.testing.assert_close(module(x), want)


def test_layer_scale_scales_the_channel_axis():
    _, last = lowered("layer_scale", {"init": 0.5}, 2, 3, 4)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(last(x), 0.5 * x)
    _, first = lowered("layer_scale", {"channels_first": True}, 2, 4, 3, 3)
    with torch.no_grad():
        first.gamma.copy_(torch.arange(4.0))
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(first(x), x * torch.arange(4.0)[:, None, None])


def convnextv2_grn(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The reference GRN of the ConvNeXt V2 paper, channels-last [N, H, W, C]."""
    gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    return gamma * (x * nx) + beta + x


def test_grn_matches_convnextv2_in_both_layouts():
    _, last = lowered("grn", {}, 2, 3, 5, 8)
    _, first = lowered("grn", {"channels_first": True}, 2, 8, 3, 5)
    weight, bias = torch.randn(8), torch.randn(8)
    for module in (last, first):
        with torch.no_grad():
            module.weight.copy_(weight)
            module.bias.copy_(bias)
    x = torch.randn(2, 3, 5, 8)
    want = convnextv2_grn(x, weight, bias)
    torch.testing.assert_close(last(x), want)
    torch.testing.assert_close(first(x.permute(0, 3, 1, 2)), want.permute(0, 3, 1, 2))


def test_grn_needs_spatial_axes():
    with pytest.raises(ShapeError, match="grn needs a rank-3\\+ input"):
        lowered("grn", {}, 2, 8)


def test_flop_convention():
    ctx, _ = lowered("layer_norm", {}, 2, 3, 8)
    assert get_op("layer_norm").flops(ctx) == 48 * 7
    ctx, _ = lowered("batch_norm2d", {"affine": False}, 2, 3, 4, 4)
    assert get_op("batch_norm2d").flops(ctx) == 96 * 2
    ctx, _ = lowered("rms_norm", {}, 2, 8)
    assert get_op("rms_norm").flops(ctx) == 16 * 4


@pytest.mark.parametrize("name,attrs,shape", [
    ("layer_norm", {"channels_first": True}, (2, 4, 3, 3)),
    ("layer_scale", {"channels_first": True}, (2, 4, 3, 3)),
    ("grn", {}, (2, 3, 3, 4)),
    ("grn", {"channels_first": True}, (2, 4, 3, 3)),
])
def test_custom_modules_export_with_dynamic_batch(name, attrs, shape):
    _, module = lowered(name, attrs, *shape)
    x = torch.randn(*shape)
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(module, (x,), dynamic_shapes=({0: batch},))
    y = torch.randn(5, *shape[1:])
    torch.testing.assert_close(program.module()(y), module(y))
