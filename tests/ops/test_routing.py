"""The routing ops beyond the generic harness: topk and scatter against torch, expert_linear against a loop
of per-expert linear layers, and moe against a token-by-token sparse reference (Mixtral's top-2 SwiGLU
routing and Switch Transformer's top-1 ReLU routing), its dense masking, its two cost conventions, shape
errors, torch.export, and the moe_ffn block of specs/blocks/moe.yaml computing what the op computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.export import Dim
from torch.utils.flop_counter import FlopCounterMode

import nasforge
from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.registry import OpContext
from nasforge.types import Sym, TensorType

B = Sym.of("B")
BLOCKS = Path(__file__).resolve().parents[2] / "specs" / "blocks" / "moe.yaml"


def context(name: str, attrs: dict, *types: TensorType) -> OpContext:
    op = get_op(name)
    ctx = OpContext(op.validate_attrs(attrs), list(types))
    op.check_arity(len(types))
    ctx.outputs = op.infer(ctx)
    return ctx


def lowered(name: str, attrs: dict, *shapes: tuple[int, ...]):
    ctx = context(name, attrs, *(TensorType(s) for s in shapes))
    return get_op(name).lower(ctx), ctx


# -- topk and scatter --------------------------------------------------------------------------------

def test_topk_values_and_indices():
    x = torch.randn(2, 5, 8)
    call, ctx = lowered("topk", {"k": 3}, (2, 5, 8))
    values, indices = call.fn(x, *call.args, **call.kwargs)
    ref = torch.topk(x, 3, dim=-1)
    assert torch.equal(values, ref.values) and torch.equal(indices, ref.indices)
    assert [str(t) for t in ctx.outputs] == ["[2, 5, 3]", "[2, 5, 3] int64"]
    call, _ = lowered("topk", {"k": 1, "axis": 1, "largest": False}, (2, 5, 8))
    values, indices = call.fn(x, *call.args, **call.kwargs)
    assert torch.equal(values, x.min(dim=1, keepdim=True).values)
    assert torch.equal(indices, x.argmin(dim=1, keepdim=True))


@pytest.mark.parametrize("attrs, t, message", [
    ({"k": 9}, TensorType((2, 5, 8)), "topk asks for more entries than the axis has"),
    ({"k": 2, "axis": 0}, TensorType((B, 5)), "topk needs a static size on axis 0"),
    ({"k": 2, "axis": 3}, TensorType((2, 5, 8)), "axis 3 is out of range"),
    ({"k": 1}, TensorType((2, 3), "bool"), "topk needs a numeric tensor"),
])
def test_topk_errors(attrs, t, message):
    with pytest.raises(ShapeError) as info:
        context("topk", attrs, t)
    assert message in info.value.message


def test_topk_symbolic_batch():
    ctx = context("topk", {"k": 2}, TensorType((B, 7, 8)))
    assert [str(t) for t in ctx.outputs] == ["[B, 7, 2]", "[B, 7, 2] int64"]


def test_scatter_builds_dense_routing_weights():
    values = torch.tensor([[0.7, 0.3], [0.6, 0.4]])
    index = torch.tensor([[2, 0], [1, 3]])
    ctx = context("scatter", {"size": 4}, TensorType((2, 2)), TensorType((2, 2), "int64"))
    call = get_op("scatter").lower(ctx)
    out = call.fn(values, index, *call.args, **call.kwargs)
    assert torch.equal(out, torch.tensor([[0.3, 0.0, 0.7, 0.0], [0.0, 0.6, 0.0, 0.4]]))
    assert str(ctx.outputs[0]) == "[2, 4]"


@pytest.mark.parametrize("types, message", [
    ((TensorType((2, 3)), TensorType((2, 3), "int32")), "scatter needs an int64 index"),
    ((TensorType((2, 3)), TensorType((2, 2), "int64")), "scatter needs an index of the values' shape"),
    ((TensorType((2, 9)), TensorType((2, 9), "int64")), "scatter writes more values than the output axis holds"),
])
def test_scatter_errors(types, message):
    with pytest.raises(ShapeError) as info:
        context("scatter", {"size": 8}, *types)
    assert message in info.value.message


# -- expert_linear -----------------------------------------------------------------------------------

def test_expert_linear_is_a_stack_of_linear_layers():
    torch.manual_seed(0)
    shared, _ = lowered("expert_linear", {"experts": 3, "out": 5}, (2, 4, 6))
    x = torch.randn(2, 4, 6)
    want = torch.stack([F.linear(x, shared.weight[e]) for e in range(3)], dim=-2)
    torch.testing.assert_close(shared(x), want)
    per, ctx = lowered("expert_linear", {"experts": 3, "out": 2, "per_expert": True}, (2, 4, 3, 6))
    y = torch.randn(2, 4, 3, 6)
    want = torch.stack([F.linear(y[..., e, :], per.weight[e]) for e in range(3)], dim=-2)
    torch.testing.assert_close(per(y), want)
    assert get_op("expert_linear").params(ctx) == {"weight": (3, 2, 6)}


def test_expert_linear_errors():
    with pytest.raises(ShapeError, match="per_expert input needs one row per expert"):
        context("expert_linear", {"experts": 3, "out": 2, "per_expert": True}, TensorType((2, 4, 5, 6)))
    with pytest.raises(ShapeError, match="needs a static size"):
        context("expert_linear", {"experts": 3, "out": 2}, TensorType((2, B)))


# -- moe -----------------------------------------------------------------------------------------------

def sparse_reference(moe, x: torch.Tensor, switch: bool = False) -> torch.Tensor:
    """Token by token: route to the top-k experts and add their weighted FFN outputs (only those run)."""
    gate_w, down = moe.gate.weight, moe.experts.down_proj
    hidden = down.shape[-1]
    tokens = x.reshape(-1, x.shape[-1])
    out = torch.zeros_like(tokens)
    for t, token in enumerate(tokens):
        probs = F.softmax(token @ gate_w.T, dim=-1)
        weights, chosen = probs.topk(moe.k)
        if not switch:
            weights = weights / weights.sum()
        for w, e in zip(weights, chosen.tolist()):
            if switch:
                h = F.relu(moe.experts.up_proj[e] @ token)
            else:
                gate_up = moe.experts.gate_up_proj[e]
                h = F.silu(gate_up[:hidden] @ token) * (gate_up[hidden:] @ token)
            out[t] += w * (down[e] @ h)
    return out.view(x.shape)


def randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module


def test_moe_equals_mixtral_style_sparse_routing():
    moe, ctx = lowered("moe", {"experts": 8, "hidden": 12, "k": 2}, (2, 6, 10))
    randomized(moe)
    x = torch.randn(2, 6, 10, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(moe(x), sparse_reference(moe, x), rtol=1e-5, atol=1e-5)
    assert get_op("moe").params(ctx) == {"gate.weight": (8, 10), "experts.gate_up_proj": (8, 24, 10),
                                         "experts.down_proj": (8, 10, 12)}


def test_moe_equals_switch_style_top1_routing():
    attrs = {"experts": 4, "hidden": 7, "k": 1, "gated": False, "act": "relu", "normalize": False}
    moe, ctx = lowered("moe", attrs, (3, 5))
    randomized(moe, seed=2)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(moe(x), sparse_reference(moe, x, switch=True), rtol=1e-5, atol=1e-5)
    assert set(get_op("moe").params(ctx)) == {"gate.weight", "experts.up_proj", "experts.down_proj"}


def test_experts_not_chosen_do_not_matter():
    """The dense lowering masks unchosen experts exactly: changing one that no token picks changes nothing."""
    moe, _ = lowered("moe", {"experts": 6, "hidden": 5, "k": 2}, (1, 4, 8))
    randomized(moe, seed=4)
    x = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        chosen = F.softmax(x.reshape(-1, 8) @ moe.gate.weight.T, -1).topk(2).indices.unique().tolist()
        unused = [e for e in range(6) if e not in chosen]
        assert unused, "pick a seed that leaves an expert unused"
        before = moe(x)
        moe.experts.gate_up_proj[unused[0]].mul_(100.0)
        moe.experts.down_proj[unused[0]].add_(1.0)
        torch.testing.assert_close(moe(x), before)


def test_moe_routing_weights_are_renormalized_top_k():
    moe, _ = lowered("moe", {"experts": 5, "hidden": 3, "k": 3}, (4, 6))
    randomized(moe, seed=6)
    weights = moe.routing_weights(torch.randn(4, 6))
    assert ((weights > 0).sum(-1) == 3).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(4))


def test_moe_costs_dense_and_active():
    op = get_op("moe")
    ctx = context("moe", {"experts": 8, "hidden": 14336, "k": 2}, TensorType((1, 1, 4096)))
    # Mixtral 8x7B, one token: router 8 x 4096, experts 3 matrices of 4096 x 14336 each
    assert op.macs(ctx) == 8 * 4096 + 8 * 3 * 4096 * 14336
    assert op.active_macs(ctx) == 8 * 4096 + 2 * 3 * 4096 * 14336
    small, ctx = lowered("moe", {"experts": 4, "hidden": 6, "k": 1, "gated": False}, (2, 3, 5))
    assert op.macs(ctx) == 6 * (5 * 4 + 4 * 6 * 5 * 2)
    assert op.active_macs(ctx) == 6 * (5 * 4 + 1 * 6 * 5 * 2)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        small(torch.randn(2, 3, 5))
    assert counter.get_total_flops() == 2 * op.macs(ctx)


def test_moe_errors():
    op = get_op("moe")
    with pytest.raises(SpecError, match="routes each token to more experts than there are"):
        op.validate_attrs({"experts": 2, "hidden": 4, "k": 3})
    with pytest.raises(SpecError, match="unsupported value"):
        op.validate_attrs({"experts": 2, "hidden": 4, "act": "tanh"})
    with pytest.raises(ShapeError, match="needs a static size"):
        context("moe", {"experts": 2, "hidden": 4}, TensorType((3, B)))
    with pytest.raises(ShapeError, match="floating-point"):
        context("moe", {"experts": 2, "hidden": 4}, TensorType((3, 4), "int64"))


SPEC = """
inputs: {x: [B, 6, 16]}
imports: [{blocks}]
graph:
  - {id: op_form, op: moe, in: x, experts: 4, hidden: 8, k: 2}
  - {id: block_form, block: moe_ffn, in: x, dim: 16, experts: 4, hidden: 8, k: 2}
outputs: {op: op_form, block: block_form}
"""


def test_moe_ffn_block_computes_the_moe_op():
    spec = nasforge.loads(SPEC.replace("{blocks}", str(BLOCKS)), "moe.yaml")
    report = spec.check()
    rows = {r.path: r for r in spec.summary().rows}
    assert rows["op_form"].params == 4 * 16 + 4 * 16 * 16 + 4 * 16 * 8
    assert sum(r.params for p, r in rows.items() if p.startswith("block_form.")) == rows["op_form"].params
    # the block also counts the routing-weighted sum over experts (an einsum), T x E x C
    block_macs = sum(r.macs for p, r in rows.items() if p.startswith("block_form."))
    assert block_macs == rows["op_form"].macs + 6 * 4 * 16
    assert report.totals.params == 2 * rows["op_form"].params
    gm = spec.build().eval()
    state = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(i)) * 0.3
             for i, (k, v) in enumerate(gm.state_dict().items())}
    state["block_form.gate.weight"] = state["op_form.gate.weight"]
    state["block_form.gate_up.weight"] = state["op_form.experts.gate_up_proj"]
    state["block_form.down.weight"] = state["op_form.experts.down_proj"]
    gm.load_state_dict(state)
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        a, b = gm(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_moe_exports_with_a_dynamic_batch():
    spec = nasforge.loads("""
inputs: {x: [B, 5, 12]}
graph:
  - {id: norm, op: rms_norm}
  - {id: mlp, op: moe, experts: 4, hidden: 16, k: 2}
""", "moe_export.yaml")
    gm = spec.build().eval()
    program = torch.export.export(gm, (torch.randn(2, 5, 12),), dynamic_shapes=({0: Dim("batch", min=1, max=64)},))
    other = torch.randn(3, 5, 12)
    torch.testing.assert_close(program.module()(other), gm(other))
