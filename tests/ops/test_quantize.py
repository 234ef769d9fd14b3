"""vector_quantize beyond the generic harness: nearest codes against a brute-force search, the
straight-through gradient under autograd, both channel layouts, the cost model, shape errors, a symbolic
batch and torch.export of a spec that quantizes."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim
from torch.utils.flop_counter import FlopCounterMode

import nasforge
from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.registry import OpContext
from nasforge.types import Sym, TensorType

B = Sym.of("B")


def context(attrs: dict, *types: TensorType) -> OpContext:
    op = get_op("vector_quantize")
    ctx = OpContext(op.validate_attrs(attrs), list(types))
    ctx.outputs = op.infer(ctx)
    return ctx


def quantizer(attrs: dict, shape: tuple[int, ...]) -> tuple[torch.nn.Module, OpContext]:
    ctx = context(attrs, TensorType(shape))
    return get_op("vector_quantize").lower(ctx), ctx


def brute_force(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code of each row, by explicit differences in float64."""
    diff = vectors.double()[:, None, :] - codebook.double()[None, :, :]
    return diff.pow(2).sum(-1).argmin(1)


@pytest.mark.parametrize("channels_first", [True, False])
def test_nearest_code_matches_a_brute_force_search(channels_first):
    torch.manual_seed(0)
    shape = (3, 8, 5, 6) if channels_first else (3, 30, 8)
    vq, _ = quantizer({"codes": 40, "channels_first": channels_first}, shape)
    with torch.no_grad():
        vq.embedding.weight.normal_()
    x = torch.randn(shape)
    q, idx = vq(x)
    assert idx.dtype == torch.int64
    vectors = (x.movedim(1, -1) if channels_first else x).reshape(-1, 8)
    expected = brute_force(vectors, vq.embedding.weight)
    assert torch.equal(idx.reshape(-1), expected)
    # the quantized tensor holds the chosen codes, laid out like the input
    codes = vq.embedding.weight[expected]
    want = codes.view(3, 5, 6, 8).movedim(-1, 1) if channels_first else codes.view(3, 30, 8)
    torch.testing.assert_close(q, want)
    assert idx.shape == ((3, 5, 6) if channels_first else (3, 30))


def test_a_codebook_vector_maps_to_itself():
    vq, _ = quantizer({"codes": 6}, (1, 6, 4))
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.eye(6, 4) * 3 + torch.arange(6.0)[:, None])
    q, idx = vq(vq.embedding.weight.detach()[None])
    assert idx.tolist() == [list(range(6))]
    torch.testing.assert_close(q[0], vq.embedding.weight)


def test_straight_through_gradient():
    """d(loss)/dx is the gradient at the quantized output, unchanged (x + (q - x).detach()), and the
    codebook receives nothing through this path (its losses are computed outside the op)."""
    torch.manual_seed(1)
    vq, _ = quantizer({"codes": 16, "channels_first": True}, (2, 4, 3, 3))
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    q, idx = vq(x)
    upstream = torch.randn_like(q)
    (q * upstream).sum().backward()
    assert torch.equal(x.grad, upstream)
    assert vq.embedding.weight.grad is None
    # the forward value is the code, not the input
    assert not torch.allclose(q, x)
    assert not idx.requires_grad


def test_commitment_loss_trains_the_encoder_and_codebook_loss_the_codes():
    """How a training loop uses the two outputs: the losses reach x and the codebook separately."""
    torch.manual_seed(2)
    vq, _ = quantizer({"codes": 8}, (2, 5, 4))
    x = torch.randn(2, 5, 4, requires_grad=True)
    q, idx = vq(x)
    codes = vq.embedding(idx)
    codebook_loss = (x.detach() - codes).pow(2).mean()
    commitment = 0.25 * (x - codes.detach()).pow(2).mean()
    (codebook_loss + commitment).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    used = torch.zeros(8, dtype=torch.bool)
    used[idx.reshape(-1)] = True
    grad = vq.embedding.weight.grad
    assert (grad[used].abs().sum(1) > 0).all() and (grad[~used] == 0).all()


def test_parameter_name_macs_and_flops():
    vq, ctx = quantizer({"codes": 1024, "channels_first": True}, (1, 256, 16, 16))
    op = get_op("vector_quantize")
    assert op.params(ctx) == {"embedding.weight": (1024, 256)}
    assert [n for n, _ in vq.named_parameters()] == ["embedding.weight"]
    n = 16 * 16
    assert op.macs(ctx) == n * 1024 * 256 == 67_108_864
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        vq(torch.randn(1, 256, 16, 16))
    assert counter.get_total_flops() == 2 * op.macs(ctx)
    assert op.flops(ctx) == 2 * op.macs(ctx) + 2 * (n + 1024) * 256 + 2 * n * 1024 + 2 * n * 256


def test_shape_rule_and_symbolic_batch():
    ctx = context({"codes": 10, "channels_first": True}, TensorType((B, 8, 4, 4)))
    assert [str(t) for t in ctx.outputs] == ["[B, 8, 4, 4]", "[B, 4, 4] int64"]
    ctx = context({"codes": 10, "dim": 8}, TensorType((B, 7, 8)))
    assert [str(t) for t in ctx.outputs] == ["[B, 7, 8]", "[B, 7] int64"]


@pytest.mark.parametrize("attrs, t, message", [
    ({"codes": 4, "dim": 6}, TensorType((2, 8, 3, 3)), "the input's channels do not match the code width"),
    ({"codes": 4, "dim": 6, "channels_first": True}, TensorType((2, 8, 3, 3)),
     "the input's channels do not match the code width"),
    ({"codes": 4}, TensorType((2, 5), "int64"), "must be a floating-point tensor"),
    ({"codes": 4, "channels_first": True}, TensorType((5,)), "needs [B, C, ...] features"),
    ({"codes": 4}, TensorType((2, B)), "needs a static channel axis"),
])
def test_shape_errors(attrs, t, message):
    with pytest.raises(ShapeError) as info:
        context(attrs, t)
    assert message in info.value.message


def test_attribute_errors():
    op = get_op("vector_quantize")
    with pytest.raises(SpecError, match="must be positive"):
        op.validate_attrs({"codes": 0})
    with pytest.raises(SpecError, match="needs attribute 'codes'"):
        op.validate_attrs({})


SPEC = """
inputs: {x: [B, 8, 4, 4]}
graph:
  - {id: proj, op: conv2d, out: 6, kernel: 1}
  - {id: quantize, op: vector_quantize, codes: 12, channels_first: true}
  - {id: back, op: conv2d, in: "quantize:0", out: 8, kernel: 1}
outputs: {out: back, codes: "quantize:1"}
"""


def test_spec_builds_counts_and_exports_with_a_dynamic_batch():
    spec = nasforge.loads(SPEC, "vq.yaml")
    totals = spec.check().totals
    assert totals.params == (8 * 6 + 6) + 12 * 6 + (6 * 8 + 8)
    assert totals.macs == 16 * 8 * 6 + 16 * 12 * 6 + 16 * 6 * 8
    gm = spec.build().eval()
    assert "quantize.embedding.weight" in gm.state_dict()
    x = torch.randn(2, 8, 4, 4)
    program = torch.export.export(gm, (x,), dynamic_shapes=({0: Dim("batch", min=1, max=64)},))
    other = torch.randn(3, 8, 4, 4)
    out, codes = program.module()(other)
    ref_out, ref_codes = gm(other)
    torch.testing.assert_close(out, ref_out)
    assert torch.equal(codes, ref_codes) and codes.shape == (3, 4, 4)
