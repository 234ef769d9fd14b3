"""``fft_conv`` beyond the generic harness: the FFT convolution against a direct causal sum, causality, the
skip term, shape errors, cost conventions and torch.export with a dynamic batch."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim
from torch.utils.flop_counter import FlopCounterMode

from nasforge.errors import ShapeError
from nasforge.ops import get_op
from nasforge.ops.fft import FFTConv, causal_fft_conv
from nasforge.ops.registry import OpContext
from nasforge.types import Sym, TensorType

B = Sym.of("B")


def t(*shape, dtype: str = "float32") -> TensorType:
    return TensorType(tuple(shape), dtype)


def context(attrs: dict, *inputs: TensorType) -> tuple:
    op = get_op("fft_conv")
    ctx = OpContext(op.validate_attrs(attrs), list(inputs))
    ctx.outputs = op.infer(ctx)
    return op, ctx


def direct_causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """y[..., c, t] = sum_{s <= t, s < Lk} k[c, s] u[..., c, t - s], written as a plain loop."""
    y = torch.zeros_like(u)
    for step in range(u.shape[-1]):
        for s in range(min(step + 1, k.shape[-1])):
            y[..., step] += k[:, s] * u[..., step - s]
    return y


@pytest.mark.parametrize("u_shape, k_len", [((2, 3, 16), 16), ((2, 3, 17), 5), ((2, 4, 3, 9), 9), ((1, 1, 1), 1)])
def test_fft_conv_is_the_causal_convolution(u_shape, k_len):
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(u_shape, generator=gen, dtype=torch.float64)
    k = torch.randn(u_shape[-2], k_len, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(causal_fft_conv(u, k), direct_causal_conv(u, k), rtol=1e-10, atol=1e-10)


def test_fft_conv_is_causal_and_float32_accurate():
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(2, 8, 1024, generator=gen)
    k = torch.randn(8, 1024, generator=gen) * torch.exp(-torch.arange(1024) / 200.0)
    y = causal_fft_conv(u, k)
    later = u.clone()
    later[..., 600:] = torch.randn(2, 8, 424, generator=gen)
    torch.testing.assert_close(causal_fft_conv(later, k)[..., :600], y[..., :600], rtol=0, atol=2e-5)
    exact = causal_fft_conv(u.double(), k.double())
    assert (y.double() - exact).abs().max() < 1e-4


def test_skip_term_adds_d_times_input():
    module = FFTConv(3, skip=True)
    u, k = torch.randn(2, 3, 10), torch.randn(3, 10)
    with torch.no_grad():
        torch.testing.assert_close(module(u, k), causal_fft_conv(u, k) + u * module.D[:, None])
    assert [n for n, _ in module.named_parameters()] == ["D"]
    assert list(FFTConv(3).parameters()) == []


def test_rule_params_and_costs():
    op, ctx = context({"skip": True}, t(B, 8, 1024), t(8, 1024))
    assert ctx.outputs == [t(B, 8, 1024)]
    assert op.params(ctx) == {"D": (8,)}
    assert op.macs(ctx) == 0
    # three transforms of n = 2048 (2 per sample row + 1 per kernel row), complex products, the skip term
    assert op.flops(ctx) == int(2.5 * 2048 * 11) * (2 * 8 + 8) + 6 * 1025 * 8 + 2 * 8 * 1024
    module = op.lower(ctx)
    with FlopCounterMode(display=False) as counter:
        module(torch.randn(2, 8, 1024), torch.randn(8, 1024))
    assert counter.get_total_flops() == 0


@pytest.mark.parametrize("inputs, message", [
    ((t(B, 3, 8, dtype="float16"), t(3, 8, dtype="float16")), "float32 or float64 signal"),
    ((t(B, 3, 8), t(3, 8, dtype="float64")), "one dtype"),
    ((t(8), t(1, 8)), "a channel and a sequence axis"),
    ((t(B, 3, 8), t(1, 3, 8)), "one kernel per channel"),
    ((t(B, 3, 8), t(4, 8)), "one row per channel"),
    ((t(B, 3, 8), t(3, 9)), "may not be longer than the signal"),
    ((t(B, 3, B), t(3, 8)), "static channel and sequence axes"),
])
def test_shape_errors(inputs, message):
    with pytest.raises(ShapeError) as info:
        context({}, *inputs)
    assert message in info.value.message


def test_exports_with_a_dynamic_batch():
    module = FFTConv(4, skip=True)
    u, k = torch.randn(2, 4, 12), torch.randn(4, 12)
    program = torch.export.export(module, (u, k), dynamic_shapes=({0: Dim("batch", min=1, max=8)}, None))
    other = torch.randn(5, 4, 12)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(other, k), module(other, k))


def test_declares_the_tvm_limit():
    assert "fft" in get_op("fft_conv").backend_limits["tvm"]
