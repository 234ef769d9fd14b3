"""Pooling entries: torch's output-size rule (ceil_mode included), error messages, FLOP conventions."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.pooling import adaptive_window_total
from nasforge.types import Sym
from tests.ops.test_conv import context, out_shape

GRID = [(size, k, s, p, d, ceil) for size, k, s, d, ceil in itertools.product(range(1, 8), (1, 2, 3), (1, 2, 3),
                                                                              (1, 2), (False, True))
        for p in range(k // 2 + 1)]


@pytest.mark.parametrize("size,kernel,stride,padding,dilation,ceil_mode", GRID)
def test_max_pool_output_size_agrees_with_torch(size, kernel, stride, padding, dilation, ceil_mode):
    attrs = {"kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation, "ceil_mode": ceil_mode}
    try:
        want = tuple(F.max_pool1d(torch.randn(1, 1, size), kernel, stride, padding, dilation, ceil_mode).shape)
    except RuntimeError:
        with pytest.raises(ShapeError, match="output would be empty"):
            context("max_pool1d", attrs, (1, 1, size))
        return
    assert out_shape("max_pool1d", attrs, (1, 1, size)) == want


def test_ceil_mode_drops_a_window_that_starts_in_the_right_padding():
    attrs = {"kernel": 2, "stride": 2, "padding": 1, "ceil_mode": True}
    assert out_shape("avg_pool2d", attrs, (1, 1, 3, 4)) == (1, 1, 2, 3)
    assert tuple(F.avg_pool2d(torch.randn(1, 1, 3, 4), 2, 2, 1, ceil_mode=True).shape) == (1, 1, 2, 3)


def test_stride_defaults_to_kernel_and_symbolic_batch_passes():
    b = Sym.of("B")
    assert out_shape("max_pool2d", {"kernel": 2}, (b, 3, 8, 6)) == (b, 3, 4, 3)
    t = Sym.of("T")
    assert out_shape("max_pool1d", {"kernel": 3, "stride": 1, "padding": 1}, (b, 3, t)) == (b, 3, t)


def test_window_pool_flops_count_every_tap():
    ctx = context("avg_pool2d", {"kernel": 3, "stride": 2, "padding": 1}, (2, 3, 8, 8))
    assert get_op("avg_pool2d").flops(ctx) == 2 * 3 * 4 * 4 * 9
    assert get_op("avg_pool2d").macs(ctx) == 0


def test_adaptive_pool_keeps_null_axes_and_counts_window_lengths():
    ctx = context("adaptive_max_pool2d", {"size": [None, 3]}, (2, 4, 6, 5))
    assert ctx.outputs[0].shape == (2, 4, 6, 3)
    assert adaptive_window_total(5, 3) == 2 + 3 + 2
    assert adaptive_window_total(6, 6) == 6
    assert get_op("adaptive_max_pool2d").flops(ctx) == 2 * 4 * 6 * 7


@pytest.mark.parametrize("keepdim,want", [(True, (Sym.of("B"), 8, 1, 1)), (False, (Sym.of("B"), 8))])
def test_global_pool_shapes(keepdim, want):
    assert out_shape("global_avg_pool", {"keepdim": keepdim}, (Sym.of("B"), 8, 5, 7)) == want
    assert out_shape("global_max_pool", {"keepdim": keepdim}, (Sym.of("B"), 8, 5, 7)) == want


@pytest.mark.parametrize("name,attrs,shape,message", [
    ("max_pool2d", {"kernel": 2}, (1, 3, 8), "needs a rank-4 input"),
    ("avg_pool1d", {"kernel": 4}, (1, 3, 3), "output would be empty on spatial axis 2"),
    ("max_pool1d", {"kernel": 2}, (1, 3, Sym.of("T")), "needs a static size on spatial axis 2"),
    ("adaptive_avg_pool2d", {"size": [1, 1]}, (1, 3, 8), "needs a rank-4 input"),
    ("adaptive_avg_pool1d", {"size": [None]}, (1, 3, Sym.of("T")), "size null needs a static length"),
    ("global_avg_pool", {}, (2, 8), "needs at least one spatial axis"),
])
def test_bad_inputs_raise_shape_errors(name, attrs, shape, message):
    with pytest.raises(ShapeError, match=message):
        context(name, attrs, shape)


def test_integer_input_is_rejected():
    with pytest.raises(ShapeError, match="input must be a floating-point tensor"):
        context("avg_pool2d", {"kernel": 2}, (1, 3, 4, 4), dtype="int64")


@pytest.mark.parametrize("name,attrs,message", [
    ("max_pool2d", {"kernel": 3, "padding": 2}, "padding must be at most half the kernel size"),
    ("avg_pool2d", {"kernel": [2, 4], "padding": [1, 3]}, "padding must be at most half the kernel size"),
    ("max_pool2d", {"kernel": [2, 2, 2]}, "'kernel' needs 2 values"),
    ("max_pool1d", {"kernel": 2, "stride": 0}, "'stride' must be positive"),
    ("avg_pool1d", {"kernel": 2, "dilation": 2}, "has no attribute 'dilation'"),
    ("max_pool1d", {"kernel": 2, "count_include_pad": False}, "has no attribute 'count_include_pad'"),
    ("adaptive_avg_pool2d", {"size": [2, "x"]}, "'size' has the wrong type"),
    ("adaptive_avg_pool2d", {"size": [2, 0]}, "'size' must be positive"),
    ("adaptive_max_pool2d", {"size": [2, 2, 2]}, "'size' needs 2 values"),
])
def test_bad_attributes_raise_spec_errors(name, attrs, message):
    with pytest.raises(SpecError, match=message):
        get_op(name).validate_attrs(attrs)
