"""``fft_conv`` beyond the generic harness: the FFT convolution against a direct causal sum, causality, the
skip term, shape errors, cost conventions and torch.export with a dynamic batch."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim
from torch.utils.flop_counter import FlopCounterMode

from nasforge.errors import ShapeError
from nasforge.ops import get_op
from nasforge.ops.fft import FFTConv, causal_direct_conv, causal_fft_conv, computed_directly, direct_note
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


@pytest.mark.parametrize("conv", [causal_fft_conv, causal_direct_conv], ids=["fft", "direct"])
@pytest.mark.parametrize("u_shape, k_len", [((2, 3, 16), 16), ((2, 3, 17), 5), ((2, 4, 3, 9), 9), ((1, 1, 1), 1)])
def test_fft_conv_is_the_causal_convolution_by_fft_and_in_the_direct_form(conv, u_shape, k_len):
    """The FFT form, and the direct form exported for backends without an FFT, against a plain loop."""
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(u_shape, generator=gen, dtype=torch.float64)
    k = torch.randn(u_shape[-2], k_len, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(conv(u, k), direct_causal_conv(u, k), rtol=1e-10, atol=1e-10)


def test_computed_directly_exports_no_fft_and_leaves_the_module_alone():
    """The exported graph has a convolution where the module has an FFT (for TVM and ONNX, which import
    none), for the dtypes asked; outside the block the module computes by FFT."""
    s4d = get_op("s4d").lower(OpContext(get_op("s4d").validate_attrs({"d_state": 4}), [t(2, 3, 8)]))
    recurrent = get_op("s4d").lower(OpContext(get_op("s4d").validate_attrs({"d_state": 4, "mode": "recurrent"}),
                                              [t(2, 3, 8)]))
    model = torch.nn.ModuleDict({"fft": FFTConv(3, skip=True), "s4d": s4d, "scan": recurrent})
    assert direct_note(model, "X") == ("2 long convolutions (fft_conv, s4d) computed directly, O(L x kernel length) "
                                       "per channel instead of by FFT: X has no FFT")
    assert direct_note(torch.nn.Linear(2, 2), "X") is None

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, u, k):
            return self.inner["s4d"](self.inner["fft"](u, k))

    def calls(program) -> set[str]:
        return {str(n.target) for n in program.graph.nodes if n.op == "call_function"}

    net, u, k = Net().eval(), torch.randn(2, 3, 8), torch.randn(3, 8)
    with computed_directly():
        program = torch.export.export(net, (u, k))
    assert not any("fft" in name for name in calls(program)) and "aten.conv1d.default" in calls(program)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(u, k), net(u, k), rtol=1e-5, atol=1e-5)
    assert any("fft" in name for name in calls(torch.export.export(net, (u, k))))  # outside: FFTs again
    with computed_directly((torch.float64,)):  # only the dtypes asked for
        assert any("fft" in name for name in calls(torch.export.export(net, (u, k))))


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


def test_no_backend_limit_is_declared_since_every_backend_runs_it_directly_or_by_fft():
    assert get_op("fft_conv").backend_limits == {}


def test_a_constant_folded_s4d_still_exports_without_fft():
    """Constant folding traces s4d into a GraphModule (its kernel becomes a buffer); the convolution stays one
    call, decided when it runs, so the export for a backend without an FFT still has none."""
    import nasforge
    from nasforge.compiler.passes import optimize

    spec = nasforge.loads("name: tiny_s4d\ninputs: {x: [B, 3, 8]}\ngraph:\n  - {id: ssm, op: s4d, d_state: 4}\n")
    gm = optimize(spec.build().eval())
    assert isinstance(gm.get_submodule("ssm"), torch.fx.GraphModule)
    assert direct_note(gm, "X").startswith("1 long convolution ")
    x = torch.randn(2, 3, 8)
    with computed_directly():
        program = torch.export.export(gm, (x,))
    called = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("fft" in name for name in called) and "aten.conv1d.default" in called
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), gm(x), rtol=1e-5, atol=1e-5)
