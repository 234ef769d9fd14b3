"""``local_response_norm`` beyond the generic harness: Caffe's LRN formula written out, bad inputs, FLOPs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.registry import OpContext
from nasforge.types import TensorType


def context(attrs: dict, shape: tuple, dtype: str = "float32"):
    op = get_op("local_response_norm")
    ctx = OpContext(op.validate_attrs(attrs), [TensorType(shape, dtype)])
    ctx.outputs = op.infer(ctx)
    return op, ctx


def caffe_lrn(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """Caffe's ACROSS_CHANNELS LRN: scale_c = k + alpha/size * sum of x^2 over channels
    [c - size//2, c + (size-1)//2] (zero padded); out = x * scale^-beta. Caffe allows odd sizes only (a
    centred window); for even sizes this is torch's window, one channel longer on the low side."""
    channels = x.shape[1]
    lo, hi = size // 2, (size - 1) // 2
    scale = torch.stack([x[:, max(0, c - lo): min(channels, c + hi + 1)].pow(2).sum(1) for c in range(channels)], 1)
    return x * (k + alpha / size * scale).pow(-beta)


@pytest.mark.parametrize("attrs", [{}, {"size": 3, "alpha": 0.5, "beta": 0.5, "k": 2.0}, {"size": 4}])
def test_matches_caffes_formula(attrs):
    op, ctx = context(attrs, (2, 7, 3, 3))
    call = op.lower(ctx)
    x = 3 * torch.randn(2, 7, 3, 3, generator=torch.Generator().manual_seed(0))
    a = op.validate_attrs(attrs)
    torch.testing.assert_close(call.fn(x, *call.args, **call.kwargs),
                               caffe_lrn(x, a["size"], a["alpha"], a["beta"], a["k"]))
    assert call.fn is F.local_response_norm


def test_bad_inputs():
    with pytest.raises(ShapeError, match="channels-first"):
        context({}, (2, 7))
    with pytest.raises(ShapeError, match="floating"):
        context({}, (2, 7, 3), "int64")
    with pytest.raises(SpecError, match="positive"):
        get_op("local_response_norm").validate_attrs({"size": 0})


def test_costs():
    op, ctx = context({}, (1, 96, 55, 55))
    assert op.macs(ctx) == 0
    assert op.flops(ctx) == 96 * 55 * 55 * 10
