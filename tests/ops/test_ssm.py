"""The state-space ops beyond the generic harness: ``s4d`` (convolutional and recurrent forms against each other
and against the S4D formulas in complex arithmetic), ``selective_scan`` (parallel and sequential forms against
each other and against Mamba's recurrence written out), ``hyena_filter`` against the Hyena filter written out,
their shape errors, cost conventions and torch.export with a dynamic batch."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.export import Dim
from torch.utils.flop_counter import FlopCounterMode

from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.registry import OpContext
from nasforge.ops.ssm import S4D, HyenaFilter, SelectiveScan, associative_scan
from nasforge.types import Sym, TensorType

B = Sym.of("B")


def t(*shape, dtype: str = "float32") -> TensorType:
    return TensorType(tuple(shape), dtype)


def context(name: str, attrs: dict, *inputs: TensorType) -> tuple:
    op = get_op(name)
    ctx = OpContext(op.validate_attrs(attrs), list(inputs))
    ctx.outputs = op.infer(ctx)
    return op, ctx


def randn(*shape, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- s4d -----------------------------------------------------------------------------------------------

def s4d_reference(layer: S4D, u: torch.Tensor) -> torch.Tensor:
    """S4D from its formulas in complex arithmetic: A = -exp(log_A_real) + i A_imag, ZOH with B folded into C,
    K[h, l] = 2 Re(sum_n C_n (exp(dt A_n) - 1) / A_n exp(dt A_n l)), y = K * u (direct causal sum) + D u."""
    kernel = layer.kernel
    dt = kernel.log_dt.exp().to(torch.complex128)[:, None]
    a = torch.complex(-kernel.log_A_real.exp().double(), kernel.A_imag.double())
    c = torch.complex(kernel.C[..., 0].double(), kernel.C[..., 1].double())
    steps = torch.arange(u.shape[-1], dtype=torch.float64)
    powers = torch.exp(dt[..., None] * a[..., None] * steps)                 # [H, N/2, L]
    k = 2 * ((c * (torch.exp(dt * a) - 1) / a)[..., None] * powers).sum(1).real
    y = torch.zeros_like(u)
    for step in range(u.shape[-1]):
        y[..., step] = (k[:, : step + 1].flip(-1) * u[..., : step + 1]).sum(-1)
    return y + u * layer.D.double()[:, None]


def test_s4d_conv_and_recurrent_forms_agree():
    layer = S4D(8, 64)
    u = randn(2, 8, 256, seed=1)
    recurrent = copy.deepcopy(layer)
    recurrent.mode = "recurrent"
    with torch.no_grad():
        conv, rec = layer(u), recurrent(u)
        # float64: the two forms are the same function
        torch.testing.assert_close(layer.double()(u.double()), recurrent.double()(u.double()), rtol=0, atol=1e-10)
    # float32 at sequential-CIFAR scale: both carry float32 rounding of the kernel (~2e-6 relative)
    assert (conv - rec).abs().max() <= 1e-5 * max(1.0, conv.abs().max().item())


def test_s4d_matches_its_formulas():
    layer = S4D(4, 16, dt_min=0.01, dt_max=0.5).double()
    u = randn(2, 4, 40, seed=2, dtype=torch.float64)
    with torch.no_grad():
        expected = s4d_reference(layer, u)
        torch.testing.assert_close(layer(u), expected, rtol=1e-9, atol=1e-9)
        layer.mode = "recurrent"
        torch.testing.assert_close(layer(u), expected, rtol=1e-9, atol=1e-9)


def test_s4d_parameters_and_initialization():
    op, ctx = context("s4d", {"d_state": 64}, t(B, 128, 1024))
    params = op.params(ctx)
    assert params == {"D": (128,), "kernel.log_dt": (128,), "kernel.C": (128, 32, 2), "kernel.log_A_real": (128, 32),
                      "kernel.A_imag": (128, 32)}
    assert sum(math.prod(s) for s in params.values()) == 128 + 2 * 128 * 64 + 128
    layer = op.lower(ctx)
    assert {n: tuple(p.shape) for n, p in layer.named_parameters()} == params
    # S4D-Lin: A = -1/2 + i pi n; dt log-uniform in [1e-3, 1e-1]
    torch.testing.assert_close(layer.kernel.log_A_real.exp(), torch.full((128, 32), 0.5))
    torch.testing.assert_close(layer.kernel.A_imag[0], math.pi * torch.arange(32.0))
    dt = layer.kernel.log_dt.exp()
    assert dt.min() >= 1e-3 - 1e-9 and dt.max() <= 1e-1 + 1e-9


@pytest.mark.parametrize("init", ["lin", "inv", "real"])
def test_s4d_initializations(init):
    layer = get_op("s4d").lower(context("s4d", {"d_state": 8, "init": init}, t(B, 3, 16))[1])
    n = torch.arange(4.0)
    expected = {"lin": (torch.full((4,), 0.5), math.pi * n),
                "inv": (torch.full((4,), 0.5), 8 / math.pi * (8 / (2 * n + 1) - 1)),     # S4D paper, Section 4
                "real": (n + 1, torch.zeros(4))}[init]
    torch.testing.assert_close(layer.kernel.log_A_real.exp()[1], expected[0])
    torch.testing.assert_close(layer.kernel.A_imag[2], expected[1])
    recurrent = copy.deepcopy(layer)
    recurrent.mode = "recurrent"
    u = randn(2, 3, 16, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(layer(u), recurrent(u), rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode, macs", [("conv", 8 * 6 * 20), ("recurrent", 3 * 8 * 6 * 20)])
def test_s4d_macs_are_what_torch_counts(mode, macs):
    op, ctx = context("s4d", {"d_state": 6, "mode": mode}, t(3, 8, 20))
    assert op.macs(ctx) == macs
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        op.lower(ctx)(torch.randn(3, 8, 20))
    assert counter.get_total_flops() == 2 * macs


@pytest.mark.parametrize("attrs, message", [
    ({"d_state": 5}, "must be even"),
    ({"d_state": 0}, "must be positive"),
    ({"dt_min": 0.2, "dt_max": 0.1}, "positive and ordered"),
    ({"mode": "scan"}, "unsupported value"),
    ({"init": "hippo"}, "unsupported value"),
])
def test_s4d_attribute_errors(attrs, message):
    with pytest.raises(SpecError) as info:
        get_op("s4d").validate_attrs(attrs)
    assert message in info.value.message


@pytest.mark.parametrize("x, message", [
    (t(B, 8), "channels-first sequences"),
    (t(B, 8, 16, dtype="float16"), "float32 or float64"),
    (t(B, 8, B), "static sizes"),
])
def test_s4d_shape_errors(x, message):
    with pytest.raises(ShapeError) as info:
        context("s4d", {}, x)
    assert message in info.value.message


@pytest.mark.parametrize("mode", ["conv", "recurrent"])
def test_s4d_exports_with_a_dynamic_batch(mode):
    layer = S4D(4, 8, mode=mode)
    program = torch.export.export(layer, (torch.randn(2, 4, 12),), dynamic_shapes=({0: Dim("batch", min=1, max=8)},))
    other = torch.randn(3, 4, 12)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(other), layer(other))


# -- selective_scan --------------------------------------------------------------------------------------

def mamba_recurrence(scan: SelectiveScan, u, delta, b, c, z=None, softplus=True) -> torch.Tensor:
    """Mamba's S6 written out on [batch, channels, time] in float64, one time step and one state entry at a
    time: h[d, n] <- exp(delta_t[d] A[d, n]) h[d, n] + delta_t[d] B_t[n] u_t[d]; y_t[d] = sum_n C_t[n] h[d, n]."""
    u, delta, b, c = (x.double().transpose(1, 2) for x in (u, delta, b, c))
    if softplus:
        delta = torch.log1p(torch.exp(delta))
    a = -torch.exp(scan.A_log.double())
    batch, channels, length = u.shape
    y = torch.zeros_like(u)
    for i in range(batch):
        h = torch.zeros(channels, a.shape[1], dtype=torch.float64)
        for step in range(length):
            for n in range(a.shape[1]):
                h[:, n] = torch.exp(delta[i, :, step] * a[:, n]) * h[:, n] + delta[i, :, step] * b[i, n, step] * u[i, :, step]
            y[i, :, step] = (h * c[i, :, step]).sum(-1)
    y = y + u * scan.D.double()[:, None]
    if z is not None:
        zt = z.double().transpose(1, 2)
        y = y * zt * torch.sigmoid(zt)
    return y.transpose(1, 2)


def scan_inputs(batch=2, length=9, d=5, n=3, seed=0, gate=True):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(batch, length, d), (batch, length, d), (batch, length, n), (batch, length, n)] + ([(batch, length, d)] if gate else [])
    inputs = [torch.randn(s, generator=gen) for s in shapes]
    inputs[1] = inputs[1] - 1.0          # delta before softplus: steps around 0.3
    return inputs


@pytest.mark.parametrize("gate, softplus", [(True, True), (False, True), (True, False)])
def test_selective_scan_matches_the_recurrence(gate, softplus):
    inputs = scan_inputs(gate=gate)
    if not softplus:
        inputs[1] = inputs[1].abs()
    expected = mamba_recurrence(SelectiveScan(5, 3), *inputs[:4], inputs[4] if gate else None, softplus=softplus)
    for impl in ("parallel", "sequential"):
        scan = SelectiveScan(5, 3, impl=impl, delta_softplus=softplus)
        with torch.no_grad():
            torch.testing.assert_close(scan(*inputs).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [1, 2, 3, 5, 8, 13, 64, 100])
def test_associative_scan_equals_the_loop(length):
    a = torch.rand(2, length, 3, 4, generator=torch.Generator().manual_seed(length), dtype=torch.float64)
    b = randn(2, length, 3, 4, seed=length, dtype=torch.float64)
    h, expected = torch.zeros(2, 3, 4, dtype=torch.float64), []
    for step in range(length):
        h = a[:, step] * h + b[:, step]
        expected.append(h)
    torch.testing.assert_close(associative_scan(a, b), torch.stack(expected, 1), rtol=1e-12, atol=1e-12)


def test_selective_scan_parallel_equals_sequential_at_mamba_scale():
    """A Mamba-130M-like channel slice (d_state 16, dt around softplus(-4..1)) over 1,000 odd-length steps."""
    inputs = scan_inputs(batch=2, length=1001, d=48, n=16, seed=3)
    inputs[1] = inputs[1] - 2.0
    parallel, sequential = SelectiveScan(48, 16), SelectiveScan(48, 16, impl="sequential")
    with torch.no_grad():
        a, b = parallel(*inputs), sequential(*inputs)
    assert (a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item())
    # gradients agree as well
    grads = []
    for scan in (parallel, sequential):
        x = [i.clone().requires_grad_() for i in scan_inputs(length=33, d=6, n=4, seed=4)]
        scan = SelectiveScan(6, 4, impl=scan.impl)
        scan(*x).square().sum().backward()
        grads.append([i.grad for i in x] + [scan.A_log.grad, scan.D.grad])
    for g1, g2 in zip(*grads):
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-5)


def test_selective_scan_parameters_and_costs():
    op, ctx = context("selective_scan", {}, t(B, 1024, 1536), t(B, 1024, 1536), t(B, 1024, 16), t(B, 1024, 16),
                      t(B, 1024, 1536))
    assert ctx.outputs == [t(B, 1024, 1536)]
    assert op.params(ctx) == {"A_log": (1536, 16), "D": (1536,)}
    assert op.macs(ctx) == 1024 * 1536 * 16
    assert op.flops(ctx) == 9 * 1024 * 1536 * 16 + 11 * 1024 * 1536
    scan = op.lower(ctx)
    # S4D-Real initialization: A = -(1..N) on every channel; D = 1
    torch.testing.assert_close(-scan.A_log.exp(), -torch.arange(1, 17.0).repeat(1536, 1))
    torch.testing.assert_close(scan.D, torch.ones(1536))


@pytest.mark.parametrize("inputs, message", [
    ((t(B, 8, 4), t(B, 8, 4), t(B, 8, 2)), "takes 4 to 5"),
    ((t(B, 8), t(B, 8, 4), t(B, 8, 2), t(B, 8, 2)), "input u must be a channels-last sequence"),
    ((t(B, 8, 4), t(B, 8, 4), t(B, 8, 2), t(B, 8, 3)), "the same static state size"),
    ((t(B, 8, 4), t(B, 7, 4), t(B, 8, 2), t(B, 8, 2)), "input delta does not match u"),
    ((t(B, 8, 4), t(B, 8, 4), t(B, 8, 2), t(B, 8, 2), t(B, 8, 5)), "input z does not match u"),
    ((t(B, 8, 4), t(B, 8, 4), t(B, 8, 2), t(B, 8, 2, dtype="float64")), "one dtype"),
    ((t(B, 8, 4), t(B, 8, 4), t(B, 8, 2, dtype="int64"), t(B, 8, 2)), "must be floating-point"),
    ((t(B, B, 4), t(B, B, 4), t(B, B, 2), t(B, B, 2)), "static sizes"),
])
def test_selective_scan_shape_errors(inputs, message):
    op = get_op("selective_scan")
    with pytest.raises((ShapeError, SpecError)) as info:
        op.check_arity(len(inputs))
        context("selective_scan", {}, *inputs)
    assert message in info.value.message


def test_selective_scan_parallel_exports_to_a_small_graph():
    scan = SelectiveScan(6, 4)
    inputs = tuple(scan_inputs(length=64, d=6, n=4))
    dynamic = tuple({0: Dim("batch", min=1, max=8)} for _ in inputs)
    program = torch.export.export(scan, inputs, dynamic_shapes=dynamic)
    other = tuple(scan_inputs(batch=3, length=64, d=6, n=4, seed=5))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*other), scan(*other))
    # log2(64) = 6 levels of a few ops each, not 64 unrolled steps
    assert len(program.graph.nodes) < 200
    sequential = torch.export.export(SelectiveScan(6, 4, impl="sequential"), inputs, dynamic_shapes=dynamic)
    assert len(sequential.graph.nodes) > 64 * 5


# -- hyena_filter ----------------------------------------------------------------------------------------

def hyena_filter_reference(f: HyenaFilter, length: int, emb_dim: int) -> torch.Tensor:
    """The Hyena filter from its description: features [t, cos(f w), -sin(f w)] at the first `length` positions
    (t in [0, 1] over the table, w = 2 pi l / table length, bands f evenly in [1e-4, bands - 1]), an FFN whose
    Linear layers alternate with sin(freq * x) (one freq for all), then exp(-t |delta_c|) per channel."""
    table = f.pos_emb.z.shape[1]
    bands = (emb_dim - 1) // 2
    pos = torch.arange(length, dtype=torch.float64)
    time = pos / (table - 1)
    w = 2 * math.pi * pos / table
    freqs = torch.linspace(1e-4, bands - 1, bands, dtype=torch.float64)
    z = torch.cat([time[:, None], torch.cos(w[:, None] * freqs), -torch.sin(w[:, None] * freqs)], dim=1)
    layers = [m for m in f.implicit_filter if isinstance(m, torch.nn.Linear)]
    freq = f.implicit_filter[1].freq.double()
    h = z
    for linear in layers[:-1]:
        h = torch.sin(freq * F.linear(h, linear.weight.double(), linear.bias.double()))
    h = F.linear(h, layers[-1].weight.double())
    slowest, fastest = math.log(1e-2) / 1.5, math.log(1e-2) / 0.3
    rates = torch.linspace(slowest, fastest, h.shape[1], dtype=torch.float64).abs()
    return (h * torch.exp(-time[:, None] * rates)).t()


@pytest.mark.parametrize("length", [32, 20])
def test_hyena_filter_matches_its_description(length):
    f = HyenaFilter(6, 32, emb_dim=5, width=8, inner=2, w=3.0)
    with torch.no_grad():
        k = f(torch.zeros(2, 6, length))
    assert k.shape == (6, length)
    torch.testing.assert_close(k.double(), hyena_filter_reference(f, length, 5), rtol=1e-5, atol=1e-5)


def test_hyena_filter_parameters_and_costs():
    op, ctx = context("hyena_filter", {"channels": 864, "seq_len": 2048, "emb_dim": 33, "width": 64, "w": 14.0},
                      t(B, 864, 1024))
    assert ctx.outputs == [t(864, 1024)]
    params = op.params(ctx)
    assert params == {"pos_emb.z": (1, 2048, 33), "implicit_filter.0.weight": (64, 33), "implicit_filter.0.bias": (64,),
                      "implicit_filter.1.freq": (1, 64), "implicit_filter.2.weight": (64, 64),
                      "implicit_filter.2.bias": (64,), "implicit_filter.4.weight": (64, 64),
                      "implicit_filter.4.bias": (64,), "implicit_filter.6.weight": (864, 64)}
    # one shared Sin: its frequencies count once; z is trained (safari registers it with a learning rate)
    assert sum(math.prod(s) for s in params.values()) == 134_304 - 864
    module = op.lower(ctx)
    assert {n: tuple(p.shape) for n, p in module.named_parameters()} == params
    assert module.implicit_filter[1] is module.implicit_filter[3] is module.implicit_filter[5]
    assert sorted(n for n, _ in module.named_buffers()) == ["modulation.deltas", "pos_emb.t"]
    assert op.macs(ctx) == 1024 * (33 * 64 + 2 * 64 * 64 + 64 * 864)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(torch.zeros(1, 864, 1024))
    assert counter.get_total_flops() == 2 * op.macs(ctx)


def test_hyena_filter_modulation_can_be_off():
    f = HyenaFilter(4, 16, modulate=False)
    g = copy.deepcopy(f)
    g.modulation.modulate = True
    x = torch.zeros(1, 4, 16)
    with torch.no_grad():
        assert not torch.allclose(f(x), g(x))
        torch.testing.assert_close(f(x)[:, 0], g(x)[:, 0])      # the window is 1 at t = 0


@pytest.mark.parametrize("attrs, x, message", [
    ({"channels": 4, "seq_len": 8}, t(B, 4, 9), "longer than the filter's positional table"),
    ({"channels": 4, "seq_len": 8}, t(B, 4, B), "integer L"),
])
def test_hyena_filter_shape_errors(attrs, x, message):
    with pytest.raises(ShapeError) as info:
        context("hyena_filter", attrs, x)
    assert message in f"{info.value.message} / {info.value.expected}"


@pytest.mark.parametrize("attrs, message", [
    ({"channels": 4, "seq_len": 8, "emb_dim": 4}, "odd emb_dim >= 3"),
    ({"channels": 4, "seq_len": 8, "emb_dim": 1}, "odd emb_dim >= 3"),
    ({"channels": 4, "seq_len": 8, "inner": -1}, "cannot be negative"),
    ({"channels": 0, "seq_len": 8}, "must be positive"),
])
def test_hyena_filter_attribute_errors(attrs, message):
    with pytest.raises(SpecError) as info:
        get_op("hyena_filter").validate_attrs(attrs)
    assert message in f"{info.value.message} / {info.value.expected}"


def test_no_backend_limits():  # s4d's FFT is exported as a direct convolution where a backend has none
    assert get_op("s4d").backend_limits == {}
    assert get_op("selective_scan").backend_limits == {}
