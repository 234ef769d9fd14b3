"""fake_quantize beyond the generic harness: the grid against torch's own fake-quantization kernels,
levels and exact zero, the straight-through gradient, the cost model, attribute and shape errors, and a
spec that quantizes built, counted and exported with a dynamic batch."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim

import nasforge
from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.quantization import fake_quantize
from nasforge.ops.registry import OpContext
from nasforge.types import TensorType


def context(attrs: dict, t: TensorType) -> OpContext:
    op = get_op("fake_quantize")
    ctx = OpContext(op.validate_attrs(attrs), [t])
    ctx.outputs = op.infer(ctx)
    return ctx


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_symmetric_per_tensor_matches_torch_kernel(bits):
    torch.manual_seed(bits)
    x = torch.randn(3, 5, 7, 7)
    levels = 2 ** (bits - 1) - 1
    scale = x.abs().max() / levels
    want = torch.fake_quantize_per_tensor_affine(x, scale.item(), 0, -levels, levels)
    got = fake_quantize(x, bits)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # every value is an integer multiple of the scale, and the extreme magnitude is exact
    steps = got / scale
    torch.testing.assert_close(steps, steps.round(), rtol=0, atol=1e-4)
    assert steps.abs().max().round().item() == levels
    assert (got - x).abs().max() <= scale / 2 + 1e-6


@pytest.mark.parametrize("bits", [3, 8])
def test_asymmetric_per_tensor_matches_torch_kernel(bits):
    torch.manual_seed(10 + bits)
    x = torch.randn(4, 6) * 3 + 1
    levels = 2 ** bits - 1
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    scale = (hi - lo) / levels
    zero_point = round(-lo / scale)
    want = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, levels)
    torch.testing.assert_close(fake_quantize(x, bits, symmetric=False), want, rtol=0, atol=1e-5)


def test_per_channel_matches_torch_kernel_on_each_axis():
    torch.manual_seed(3)
    weight = torch.randn(8, 4, 3, 3) * torch.linspace(0.1, 4.0, 8).view(8, 1, 1, 1)
    levels = 127
    scale = weight.abs().amax(dim=(1, 2, 3)) / levels
    want = torch.fake_quantize_per_channel_affine(weight, scale, torch.zeros(8, dtype=torch.int32), 0,
                                                  -levels, levels)
    torch.testing.assert_close(fake_quantize(weight, 8, per_channel=True, axis=0), want, rtol=0, atol=1e-6)
    tokens = torch.randn(2, 9, 6) * torch.arange(1.0, 7.0)
    lo = tokens.amin(dim=(0, 1)).clamp_max(0)
    hi = tokens.amax(dim=(0, 1)).clamp_min(0)
    scale = (hi - lo) / 15
    zero_point = torch.round(-lo / scale).to(torch.int32)
    want = torch.fake_quantize_per_channel_affine(tokens, scale, zero_point, 2, 0, 15)
    got = fake_quantize(tokens, 4, symmetric=False, per_channel=True, axis=-1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_levels_zero_and_relu_activations():
    x = torch.tensor([[-1.0, -0.4, 0.0, 0.1, 0.55, 1.0]])
    # 2-bit symmetric: only -1, 0 and 1 times max|x|
    assert fake_quantize(x, 2).tolist() == [[-1.0, 0.0, 0.0, 0.0, 1.0, 1.0]]
    # asymmetric grids keep 0 exact, and a non-negative (post-ReLU) tensor uses all 2^b levels from 0
    relu = torch.relu(torch.randn(1000, generator=torch.Generator().manual_seed(1)))
    q = fake_quantize(relu, 4, symmetric=False)
    assert (q[relu == 0] == 0).all()
    scale = relu.max() / 15
    assert torch.unique(torch.round(q / scale)).tolist() == list(range(16))


def test_straight_through_gradient():
    x = torch.randn(2, 3, 5, requires_grad=True)
    weights = torch.randn(2, 3, 5)
    (fake_quantize(x, 4, symmetric=False, per_channel=True) * weights).sum().backward()
    torch.testing.assert_close(x.grad, weights)


def test_shape_rule_cost_and_lowering():
    ctx = context({"bits": 8}, TensorType((2, 16, 8, 8)))
    op = get_op("fake_quantize")
    assert ctx.outputs == [TensorType((2, 16, 8, 8))]
    assert op.params(ctx) == {} and op.macs(ctx) == 0
    assert op.flops(ctx) == 9 * 2 * 16 * 8 * 8
    asym = context({"bits": 8, "symmetric": False}, TensorType((4, 10)))
    assert op.flops(asym) == 11 * 40
    call = op.lower(ctx)
    assert call.fn is fake_quantize and call.kwargs == {"bits": 8, "symmetric": True, "per_channel": False,
                                                         "axis": 1}


@pytest.mark.parametrize("bits", [1, 0, 17, 32])
def test_bits_out_of_range(bits):
    with pytest.raises(SpecError, match="'bits' is out of range") as info:
        get_op("fake_quantize").validate_attrs({"bits": bits})
    assert info.value.expected == "an integer in 2..16"


@pytest.mark.parametrize("attrs,t,message", [
    ({"bits": 8}, TensorType((2, 5), "int64"), "must be a floating-point tensor"),
    ({"bits": 8, "per_channel": True, "axis": 3}, TensorType((2, 5, 4)), "axis 3 is out of range"),
])
def test_shape_errors(attrs, t, message):
    with pytest.raises(ShapeError) as info:
        context(attrs, t)
    assert message in info.value.message


def test_axis_is_ignored_without_per_channel():
    assert context({"bits": 8, "axis": 7}, TensorType((2, 3))).outputs == [TensorType((2, 3))]


SPEC = """
inputs: {x: [B, 3, 8, 8]}
graph:
  - {id: conv1, op: conv2d, out: 8, kernel: 3, padding: 1}
  - {id: act, op: relu}
  - {id: quant, op: fake_quantize, bits: 4, symmetric: false}
  - {id: conv2, op: conv2d, out: 4, kernel: 1}
"""


def test_spec_builds_counts_and_exports_with_a_dynamic_batch():
    spec = nasforge.loads(SPEC, "fq.yaml")
    totals = spec.check().totals
    assert totals.params == (3 * 9 * 8 + 8) + (8 * 4 + 4)
    assert totals.macs == 64 * 27 * 8 + 64 * 8 * 4
    gm = spec.build().eval()
    x = torch.randn(2, 3, 8, 8)
    program = torch.export.export(gm, (x,), dynamic_shapes=({0: Dim("batch", min=1, max=64)},))
    other = torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(program.module()(other), gm(other))
    # the graph quantizes conv1's activations: conv2 sees at most 16 distinct values
    quantized = fake_quantize(torch.relu(gm.conv1(other)), 4, symmetric=False)
    assert torch.unique(quantized).numel() <= 16
    torch.testing.assert_close(gm(other), gm.conv2(quantized))
