"""The recurrent entries (``lstm``, ``gru``) beyond the generic harness: bad inputs, the fused and unrolled
forms against each other and against torch's nn.LSTM / nn.GRU and a Caffe-style one-bias LSTM written out
here, FlopCounterMode on the oneDNN LSTM kernel, and torch.export with a dynamic batch."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.export import Dim
from torch.utils.flop_counter import FlopCounterMode

from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.registry import OpContext
from nasforge.types import Sym, TensorType

B = Sym.of("B")


def t(*shape, dtype: str = "float32") -> TensorType:
    return TensorType(tuple(shape), dtype)


def context(name: str, attrs: dict, *inputs: TensorType) -> tuple:
    op = get_op(name)
    ctx = OpContext(op.validate_attrs(attrs), list(inputs))
    op.check_arity(len(inputs))
    ctx.outputs = op.infer(ctx)
    return op, ctx


def build(name: str, attrs: dict, *inputs: TensorType) -> torch.nn.Module:
    op, ctx = context(name, attrs, *inputs)
    return op.lower(ctx).eval()


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


# -- shape rules and attribute checks ------------------------------------------------------------------

@pytest.mark.parametrize("name,attrs,inputs,message", [
    ("lstm", {"hidden": 4}, (t(2, 5),), "takes a sequence \\[B, T, C\\]"),
    ("gru", {"hidden": 4, "batch_first": False}, (t(2, 3, 5, 6),), "takes a sequence \\[T, B, C\\]"),
    ("lstm", {"hidden": 4}, (t(2, 3, 5, dtype="int64"),), "floating-point"),
    ("gru", {"hidden": 4}, (t(2, 3, B),), "static feature size"),
    ("lstm", {"hidden": 4, "impl": "unrolled"}, (t(2, B, 5),), "unrolled needs a static sequence length"),
    ("lstm", {"hidden": 4}, (t(2, 3, 5), t(2, 1, 4)), "h0 and c0 together"),
    ("lstm", {"hidden": 4}, (t(2, 3, 5), t(2, 2, 4), t(2, 2, 4)), "initial state h0 does not fit"),
    ("lstm", {"hidden": 4, "proj_size": 2}, (t(2, 3, 5), t(2, 1, 2), t(2, 1, 2)), "initial state c0"),
    ("gru", {"hidden": 4, "bidirectional": True}, (t(2, 3, 5), t(2, 1, 4)), "h0 does not fit"),
    ("gru", {"hidden": 4, "batch_first": False}, (t(3, 2, 5), t(2, 1, 4)), "h0 does not fit"),
    ("gru", {"hidden": 4}, (t(2, 3, 5), t(2, 1, 4, dtype="float64")), "h0 does not fit"),
])
def test_bad_inputs_are_reported(name, attrs, inputs, message):
    with pytest.raises(ShapeError, match=message) as info:
        context(name, attrs, *inputs)
    assert info.value.expected and info.value.found


@pytest.mark.parametrize("name,attrs,message", [
    ("lstm", {"hidden": 4, "dropout": 0.3}, "one layer has none"),
    ("gru", {"hidden": 4, "layers": 2, "dropout": 1.0}, "probability"),
    ("lstm", {"hidden": 0}, "must be positive"),
    ("lstm", {"hidden": 4, "proj_size": 4}, "smaller than hidden"),
    ("lstm", {"hidden": 4, "bias": "output"}, "unsupported value"),
    ("gru", {"hidden": 4, "bias": "input"}, "wrong type"),
    ("gru", {"hidden": 4, "impl": "scan"}, "unsupported value"),
    ("gru", {"hidden": 4, "proj_size": 2}, "no attribute 'proj_size'"),
])
def test_bad_attributes_are_reported(name, attrs, message):
    with pytest.raises(SpecError, match=message):
        get_op(name).validate_attrs(attrs)


def test_arity():
    with pytest.raises(SpecError, match="1 to 2 input"):
        get_op("gru").check_arity(3)
    get_op("lstm").check_arity(3)


def test_output_types_and_state_layouts():
    op, ctx = context("lstm", {"hidden": 8, "layers": 2, "bidirectional": True, "proj_size": 3,
                               "return_state": True}, t(B, 7, 5))
    assert [o.shape for o in ctx.outputs] == [(B, 7, 6), (B, 4, 3), (B, 4, 8)]
    op, ctx = context("gru", {"hidden": 8, "batch_first": False, "return_state": True}, t(7, B, 5))
    assert [o.shape for o in ctx.outputs] == [(7, B, 8), (1, B, 8)]
    op, ctx = context("lstm", {"hidden": 8}, t(B, Sym.of("T"), 5, dtype="float64"))   # fused: T may be symbolic
    assert ctx.outputs == [t(B, Sym.of("T"), 8, dtype="float64")]


# -- parameters and costs --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {}, {"num_layers": 2, "bidirectional": True}, {"num_layers": 3, "proj_size": 2, "bias": False},
])
def test_parameters_are_torchs(kwargs):
    ref = torch.nn.LSTM(5, 6, batch_first=True, **kwargs)
    attrs = {"hidden": 6, "layers": kwargs.get("num_layers", 1), "bias": kwargs.get("bias", True),
             "bidirectional": kwargs.get("bidirectional", False), "proj_size": kwargs.get("proj_size")}
    for impl in ("fused", "unrolled"):
        op, ctx = context("lstm", {**attrs, "impl": impl}, t(2, 3, 5))
        want = [(n, tuple(p.shape)) for n, p in ref.named_parameters()]
        assert list(op.params(ctx).items()) == want
        assert [(n, tuple(p.shape)) for n, p in op.lower(ctx).named_parameters()] == want


def test_macs_by_hand():
    # one-layer LSTM: 4*(C*H + H*H) per token
    op, ctx = context("lstm", {"hidden": 650}, t(1, 35, 650))
    assert op.macs(ctx) == 35 * 4 * (650 * 650 + 650 * 650)
    # two layers, bidirectional, projection: layer 1 reads 2*P features; each direction adds H*P
    op, ctx = context("lstm", {"hidden": 8, "layers": 2, "bidirectional": True, "proj_size": 3}, t(2, 5, 4))
    per_token = 2 * (32 * (4 + 3) + 3 * 8) + 2 * (32 * (6 + 3) + 3 * 8)
    assert op.macs(ctx) == 2 * 5 * per_token
    op, ctx = context("gru", {"hidden": 8, "layers": 2}, t(2, 5, 4))
    assert op.macs(ctx) == 2 * 5 * (24 * (4 + 8) + 24 * (8 + 8))
    # FLOPs: 2 x MACs plus the cell's element-wise work (gate sums, biases and 9H / 7H per step)
    op, ctx = context("lstm", {"hidden": 8, "bias": "input"}, t(1, 5, 4))
    assert op.flops(ctx) == 2 * op.macs(ctx) + 5 * (32 * 2 + 9 * 8)
    op, ctx = context("gru", {"hidden": 8}, t(1, 5, 4))
    assert op.flops(ctx) == 2 * op.macs(ctx) + 5 * (24 * 3 + 7 * 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_flop_counter_sees_the_onednn_lstm_kernel(dtype):
    """float32 CPU nn.LSTM runs as aten.mkldnn_rnn_layer (counted by the formula this module registers);
    float64 takes the decomposed kernel (counted through mm/addmm). Both equal 2 x our MACs."""
    op, ctx = context("lstm", {"hidden": 7, "layers": 2, "bidirectional": True}, t(2, 4, 5))
    module = op.lower(ctx).to(dtype)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(randn(2, 4, 5).to(dtype))
    kernels = {str(k) for k in counter.get_flop_counts()["Global"]}
    assert counter.get_total_flops() == 2 * op.macs(ctx)
    assert ("aten.mkldnn_rnn_layer" in kernels) == (dtype == torch.float32 and torch.backends.mkldnn.is_available())


def test_flop_counter_counts_the_onednn_backward_as_twice_the_forward():
    op, ctx = context("lstm", {"hidden": 7}, t(2, 4, 5))
    module = op.lower(ctx)
    x = randn(2, 4, 5).requires_grad_()
    with FlopCounterMode(display=False) as counter:
        module(x).sum().backward()
    assert counter.get_total_flops() == 3 * 2 * op.macs(ctx)


# -- numerics ---------------------------------------------------------------------------------------------

LSTM_CASES = [
    {},
    {"layers": 2, "bidirectional": True, "return_state": True},
    {"layers": 2, "proj_size": 3, "return_state": True},
    {"bias": False, "bidirectional": True},
    {"bias": "input", "layers": 2, "return_state": True},
    {"batch_first": False, "layers": 2, "return_state": True},
]
GRU_CASES = [
    {},
    {"layers": 3, "bidirectional": True, "return_state": True},
    {"bias": False},
    {"batch_first": False, "bidirectional": True, "return_state": True},
]


def _states(op, ctx, batch: int, seed: int) -> list[torch.Tensor]:
    return [randn(*s.concrete_shape(), seed=seed + i) for i, s in enumerate(op.state_types(ctx, batch))]


@pytest.mark.parametrize("name,attrs", [("lstm", a) for a in LSTM_CASES] + [("gru", a) for a in GRU_CASES])
@pytest.mark.parametrize("with_state", [False, True])
def test_fused_and_unrolled_agree(name, attrs, with_state):
    seq = (3, 6, 5) if attrs.get("batch_first", True) else (6, 3, 5)
    op, ctx = context(name, {"hidden": 6, **attrs}, t(*seq))
    fused = op.lower(ctx).eval()
    op, uctx = context(name, {"hidden": 6, **attrs, "impl": "unrolled"}, t(*seq))
    unrolled = op.lower(uctx).eval()
    unrolled.load_state_dict(fused.state_dict())                 # same names, shapes and meaning
    inputs = [randn(*seq)] + (_states(op, ctx, 3, seed=1) if with_state else [])
    with torch.no_grad():
        got, want = as_tuple(unrolled(*inputs)), as_tuple(fused(*inputs))
    assert len(got) == len(want) == len(ctx.outputs)
    for g, w, o in zip(got, want, ctx.outputs):
        assert tuple(g.shape) == o.concrete_shape()
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,attrs", [("lstm", {"layers": 2, "bidirectional": True, "proj_size": 4}),
                                        ("gru", {"layers": 2, "bidirectional": True})])
def test_fused_is_torchs_module_with_batch_first_states(name, attrs):
    op, ctx = context(name, {"hidden": 6, "return_state": True, **attrs}, t(3, 5, 4))
    ours = op.lower(ctx).eval()
    kwargs = {"proj_size": attrs["proj_size"]} if "proj_size" in attrs else {}
    ref = getattr(torch.nn, name.upper())(4, 6, num_layers=2, bidirectional=True, batch_first=True, **kwargs)
    ref.load_state_dict(ours.state_dict())
    x = randn(3, 5, 4)
    states = _states(op, ctx, 3, seed=2)                          # [B, L*D, H]: torch wants [L*D, B, H]
    torch_states = [s.transpose(0, 1).contiguous() for s in states]
    with torch.no_grad():
        got = ours(x, *states)
        y, final = ref(x, tuple(torch_states) if name == "lstm" else torch_states[0])
    finals = final if name == "lstm" else (final,)
    torch.testing.assert_close(got[0], y)
    for g, f in zip(got[1:], finals):
        torch.testing.assert_close(g, f.transpose(0, 1))


def _caffe_lstm(x, w_xc, b_c, w_hc):
    """Caffe's LSTM layer (one bias, on the input transform) over [B, T, C], gates in torch's i, f, g, o
    row order (Caffe orders them i, f, o, g: a permutation of the rows)."""
    h = x.new_zeros(x.shape[0], w_hc.shape[1])
    c = torch.zeros_like(h)
    outs = []
    for step in range(x.shape[1]):
        i, f, g, o = (x[:, step] @ w_xc.T + b_c + h @ w_hc.T).chunk(4, -1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * c.tanh()
        outs.append(h)
    return torch.stack(outs, 1)


@pytest.mark.parametrize("impl", ["fused", "unrolled"])
def test_input_bias_only_is_caffes_lstm(impl):
    module = build("lstm", {"hidden": 5, "bias": "input", "impl": impl}, t(2, 4, 3))
    names = [n for n, _ in module.named_parameters()]
    assert names == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0"]
    assert list(module.state_dict()) == names                     # the zero recurrent bias is not saved
    with torch.no_grad():
        module.bias_ih_l0.normal_()
    x = randn(2, 4, 3)
    with torch.no_grad():
        torch.testing.assert_close(module(x), _caffe_lstm(x, module.weight_ih_l0, module.bias_ih_l0,
                                                          module.weight_hh_l0))
    # survives copying and dtype changes (the fused kernel's flat weights are rebuilt)
    twin = copy.deepcopy(module).double()
    with torch.no_grad():
        torch.testing.assert_close(twin(x.double()).float(), module(x), rtol=1e-5, atol=1e-6)


def test_dropout_between_layers_in_training_only():
    for impl in ("fused", "unrolled"):
        module = build("gru", {"hidden": 6, "layers": 2, "dropout": 0.9, "impl": impl}, t(2, 5, 4))
        x = randn(2, 5, 4)
        with torch.no_grad():
            evaluated = module(x)
            torch.testing.assert_close(module(x), evaluated)
            module.train()
            torch.manual_seed(0)
            assert not torch.allclose(module(x), evaluated)


# -- export ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("impl", ["fused", "unrolled"])
def test_exports_with_a_dynamic_batch(name, impl):
    attrs = {"hidden": 6, "layers": 2, "return_state": True, "impl": impl}
    op, ctx = context(name, attrs, t(2, 5, 4))
    module = op.lower(ctx).eval()
    inputs = (randn(2, 5, 4), *_states(op, ctx, 2, seed=3))
    batch = Dim("batch", min=1, max=64)
    program = torch.export.export(module, inputs, dynamic_shapes=tuple({0: batch} for _ in inputs))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    fused_op = f"aten.{name}.input"
    assert (fused_op in targets) == (impl == "fused")
    other = (randn(3, 5, 4, seed=4), *_states(op, ctx, 3, seed=5))
    with torch.no_grad():
        for got, want in zip(program.module()(*other), module(*other)):
            torch.testing.assert_close(got, want)
    decomposed = {str(n.target) for n in program.run_decompositions().graph.nodes if n.op == "call_function"}
    assert fused_op not in decomposed


def test_backend_limits_are_declared():
    for name in ("lstm", "gru"):
        note = get_op(name).backend_limits["tvm"]
        assert f"aten.{name}.input" in note and "unrolled" in note
