"""Convolution entries: error messages for bad inputs, 'same' padding numerics, MAC counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.conv import PaddedConv, same_padding
from nasforge.ops.registry import OpContext
from nasforge.types import Sym, TensorType


def context(name: str, attrs: dict, *shapes: tuple, dtype: str = "float32") -> OpContext:
    """Validate ``attrs`` for op ``name`` and run its shape rule on inputs of ``shapes``."""
    op = get_op(name)
    ctx = OpContext(op.validate_attrs(attrs), [TensorType(tuple(s), dtype) for s in shapes])
    ctx.outputs = op.infer(ctx)
    return ctx


def out_shape(name: str, attrs: dict, *shapes: tuple, dtype: str = "float32") -> tuple:
    return context(name, attrs, *shapes, dtype=dtype).outputs[0].shape


@pytest.mark.parametrize("size,kernel,stride,dilation", [
    (7, 3, 1, 1), (8, 4, 1, 1), (9, 2, 1, 3), (7, 3, 2, 1), (8, 3, 2, 1), (11, 5, 3, 2), (5, 1, 2, 1),
])
def test_same_padding_gives_ceil_outputs_and_matches_reference(size, kernel, stride, dilation):
    attrs = {"out": 3, "kernel": kernel, "stride": stride, "dilation": dilation, "padding": "same"}
    ctx = context("conv2d", attrs, (2, 2, size, size))
    assert ctx.outputs[0].shape == (2, 3, -(-size // stride), -(-size // stride))
    module = get_op("conv2d").lower(ctx)
    x = torch.randn(2, 2, size, size)
    lo, hi = same_padding(size, kernel, stride, dilation)
    want = F.conv2d(F.pad(x, (lo, hi, lo, hi)), module.weight, module.bias, stride, 0, dilation)
    torch.testing.assert_close(module(x), want)


def test_stride_one_same_keeps_a_symbolic_size():
    assert out_shape("conv1d", {"out": 4, "kernel": 4, "padding": "same"}, (Sym.of("B"), 2, Sym.of("T"))) == \
        (Sym.of("B"), 4, Sym.of("T"))


def test_asymmetric_same_uses_padded_conv_that_exports():
    ctx = context("conv2d", {"out": 4, "kernel": 3, "stride": 2, "padding": "same", "padding_mode": "reflect"},
                  (1, 2, 8, 6))
    module = get_op("conv2d").lower(ctx)
    assert isinstance(module, PaddedConv)
    assert {k for k, _ in module.named_parameters()} == {"weight", "bias"}
    x = torch.randn(1, 2, 8, 6)
    want = F.conv2d(F.pad(x, (0, 1, 0, 1), mode="reflect"), module.weight, module.bias, 2)
    torch.testing.assert_close(module(x), want)
    exported = torch.export.export(module, (x,))
    torch.testing.assert_close(exported.module()(x), want)


def test_macs_match_formula_for_depthwise_and_band_kernels():
    op = get_op("conv2d")
    depthwise = context("conv2d", {"out": 4, "kernel": 3, "padding": 1, "groups": 4}, (1, 4, 8, 8))
    assert op.macs(depthwise) == 4 * 8 * 8 * 9
    band = context("conv2d", {"out": 6, "kernel": [1, 7], "padding": [0, 3]}, (2, 3, 5, 9))
    assert op.macs(band) == 2 * 6 * 5 * 9 * 3 * 7
    transposed = context("conv_transpose2d", {"out": 6, "kernel": 2, "stride": 2, "groups": 2}, (1, 4, 3, 3))
    assert get_op("conv_transpose2d").macs(transposed) == 4 * 3 * 3 * 3 * 4


@pytest.mark.parametrize("name,attrs,shape,message", [
    ("conv2d", {"out": 4, "kernel": 3, "groups": 2}, (1, 3, 8, 8), "input channels must be divisible by groups"),
    ("conv2d", {"out": 4, "kernel": 3}, (3, 8, 8), "needs a rank-4 input"),
    ("conv1d", {"out": 4, "kernel": 3}, (1, Sym.of("C"), 8), "needs a static channel axis"),
    ("conv2d", {"out": 4, "kernel": 5}, (1, 3, 4, 8), "output would be empty on spatial axis 2"),
    ("conv2d", {"out": 4, "kernel": 3, "dilation": [1, 4]}, (1, 3, 8, 8),
     "output would be empty on spatial axis 3"),
    ("conv1d", {"out": 4, "kernel": 5, "padding": 3, "padding_mode": "reflect"}, (1, 3, 3),
     "reflect padding 3 is too large"),
    ("conv1d", {"out": 4, "kernel": 3, "stride": 2, "padding": "same"}, (1, 3, Sym.of("T")),
     "strided 'same' padding needs static spatial sizes"),
    ("conv1d", {"out": 4, "kernel": 3, "stride": 2}, (1, 3, Sym.of("T")), "needs a static size on spatial axis 2"),
    ("conv_transpose1d", {"out": 4, "kernel": 3, "stride": 2}, (1, 3, Sym.of("T")), "needs a static size"),
    ("conv_transpose1d", {"out": 4, "kernel": 1, "padding": 1}, (1, 3, 1), "output would be empty"),
])
def test_bad_inputs_raise_shape_errors(name, attrs, shape, message):
    with pytest.raises(ShapeError, match=message):
        context(name, attrs, shape)


def test_integer_input_is_rejected():
    with pytest.raises(ShapeError, match="input must be a floating-point tensor"):
        context("conv1d", {"out": 2, "kernel": 1}, (1, 3, 4), dtype="int64")


@pytest.mark.parametrize("name,attrs,message", [
    ("conv2d", {"out": 6, "kernel": 3, "groups": 4}, "output channels must be divisible by groups"),
    ("conv2d", {"out": 6, "kernel": [3, 3, 3]}, "'kernel' needs 2 values"),
    ("conv2d", {"out": 6, "kernel": 3, "padding": "full"}, "unsupported padding 'full'"),
    ("conv2d", {"out": 6, "kernel": 3, "padding": -1}, "'padding' must not be negative"),
    ("conv2d", {"out": 6, "kernel": 0}, "'kernel' must be positive"),
    ("conv2d", {"out": 6, "kernel": 3, "padding_mode": "mirror"}, "unsupported value"),
    ("conv_transpose2d", {"out": 6, "kernel": 3, "stride": 2, "output_padding": 2},
     "output_padding must be smaller than stride or dilation"),
])
def test_bad_attributes_raise_spec_errors(name, attrs, message):
    with pytest.raises(SpecError, match=message):
        get_op(name).validate_attrs(attrs)


@pytest.mark.parametrize("size,kernel,stride,padding,output_padding,dilation", [
    (1, 1, 1, 0, 0, 1), (4, 3, 2, 1, 1, 1), (5, 4, 3, 2, 2, 1), (3, 3, 1, 2, 1, 2), (6, 2, 2, 0, 0, 3),
])
def test_transposed_output_size_matches_torch(size, kernel, stride, padding, output_padding, dilation):
    attrs = {"out": 2, "kernel": kernel, "stride": stride, "padding": padding, "output_padding": output_padding,
             "dilation": dilation}
    ctx = context("conv_transpose1d", attrs, (1, 2, size))
    got = get_op("conv_transpose1d").lower(ctx)(torch.randn(1, 2, size))
    assert tuple(got.shape) == ctx.outputs[0].shape


@pytest.mark.parametrize("attrs,key", [
    ({"out": 6, "kernel": 3, "padding": "full"}, "padding"),
    ({"out": 6, "kernel": [3, 3, 3]}, "kernel"),
    ({"out": 6, "kernel": 3, "groups": 4}, "groups"),
    ({"out": 6, "kernel": 3, "stride": [1, -1]}, "stride"),
])
def test_attribute_errors_name_their_key(attrs, key):
    with pytest.raises(SpecError) as info:
        get_op("conv2d").validate_attrs(attrs)
    assert info.value.key == key
