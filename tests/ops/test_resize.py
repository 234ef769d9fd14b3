"""Resize entries: interpolate's size rule against torch, error messages, pixel shuffle round trips."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.types import Sym
from tests.ops.test_conv import context, out_shape


@pytest.mark.parametrize("size,scale", [(3, 1.7), (5, 0.5), (7, 0.3), (4, 2.5), (9, 1.0 / 3), (10, 0.1)])
def test_fractional_scale_floors_like_torch(size, scale):
    want = tuple(F.interpolate(torch.randn(1, 1, size, size), scale_factor=scale).shape)
    assert out_shape("interpolate", {"scale": scale}, (1, 1, size, size)) == want


def test_whole_scale_keeps_symbolic_dims():
    b, t = Sym.of("B"), Sym.of("T")
    assert out_shape("interpolate", {"scale": 2, "mode": "linear"}, (b, 4, t)) == (b, 4, 2 * t)


def test_interpolate_flops_per_mode():
    op = get_op("interpolate")
    assert op.flops(context("interpolate", {"scale": 2}, (1, 2, 3, 3))) == 0
    assert op.flops(context("interpolate", {"size": [6, 6], "mode": "bilinear"}, (1, 2, 3, 3))) == 2 * 4 * 72
    assert op.flops(context("interpolate", {"size": 6, "mode": "bicubic"}, (1, 2, 3, 3))) == 2 * 16 * 72


@pytest.mark.parametrize("attrs,shape,message", [
    ({"scale": 2, "mode": "bilinear"}, (1, 2, 5), "mode 'bilinear' needs a rank-4 input"),
    ({"scale": 2}, (2, 5), "mode 'nearest' needs a rank-3/4/5 input"),
    ({"size": [4, 4, 4]}, (1, 2, 5, 5), "size needs one value per spatial axis"),
    ({"scale": [2.0]}, (1, 2, 5, 5), "scale needs one value per spatial axis"),
    ({"scale": 1.5}, (1, 2, Sym.of("T")), "fractional scale needs a static size on axis 2"),
    ({"scale": 0.1}, (1, 2, 5), "output would be empty on axis 2"),
])
def test_interpolate_bad_inputs_raise_shape_errors(attrs, shape, message):
    with pytest.raises(ShapeError, match=message):
        context("interpolate", attrs, shape)


@pytest.mark.parametrize("attrs,message", [
    ({}, "exactly one of 'size' and 'scale'"),
    ({"size": 4, "scale": 2.0}, "exactly one of 'size' and 'scale'"),
    ({"scale": 2.0, "align_corners": True}, "align_corners only applies to interpolating modes"),
    ({"scale": -1.0}, "'scale' must be positive"),
    ({"size": [4, 0]}, "'size' must be positive"),
    ({"size": 4, "mode": "area"}, "unsupported value"),
])
def test_interpolate_bad_attributes_raise_spec_errors(attrs, message):
    with pytest.raises(SpecError, match=message):
        get_op("interpolate").validate_attrs(attrs)


def test_pixel_shuffle_round_trip_with_symbolic_batch():
    b = Sym.of("B")
    assert out_shape("pixel_shuffle", {"factor": 2}, (b, 12, 3, 4)) == (b, 3, 6, 8)
    assert out_shape("pixel_unshuffle", {"factor": 2}, (b, 3, 6, 8)) == (b, 12, 3, 4)
    shuffle = get_op("pixel_shuffle").lower(context("pixel_shuffle", {"factor": 2}, (1, 12, 3, 4)))
    unshuffle = get_op("pixel_unshuffle").lower(context("pixel_unshuffle", {"factor": 2}, (1, 3, 6, 8)))
    x = torch.randn(1, 12, 3, 4)
    torch.testing.assert_close(unshuffle.fn(shuffle.fn(x, **shuffle.kwargs), **unshuffle.kwargs), x)


@pytest.mark.parametrize("name,shape,message", [
    ("pixel_shuffle", (1, 6, 3, 3), "channels must be divisible by 4"),
    ("pixel_unshuffle", (1, 3, 5, 4), "height must be divisible by 2"),
    ("pixel_unshuffle", (1, 3, 4, 7), "width must be divisible by 2"),
    ("pixel_shuffle", (4, 4), "needs \\[\\*, C, H, W\\]"),
])
def test_pixel_shuffle_bad_inputs_raise_shape_errors(name, shape, message):
    with pytest.raises(ShapeError, match=message):
        context(name, {"factor": 2}, shape)


def test_pixel_shuffle_factor_must_be_positive():
    with pytest.raises(SpecError, match="'factor' must be positive"):
        get_op("pixel_shuffle").validate_attrs({"factor": 0})
