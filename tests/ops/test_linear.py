"""``matmul`` and ``einsum`` beyond the generic harness: torch.matmul's 1-D rules, einsum's parser and
shape rule on many equations, and their MAC counts against torch's FlopCounterMode (including where torch
does not count)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.registry import OpContext
from nasforge.types import Sym, TensorType

B = Sym.of("B")


def t(*shape, dtype: str = "float32") -> TensorType:
    return TensorType(tuple(shape), dtype)


def infer(name: str, attrs: dict, *inputs: TensorType) -> tuple:
    op = get_op(name)
    op.check_arity(len(inputs))
    ctx = OpContext(op.validate_attrs(attrs), list(inputs))
    ctx.outputs = op.infer(ctx)
    return op, ctx


def torch_count(fn, *args) -> tuple[int, tuple[int, ...]]:
    """FlopCounterMode's total and the output shape of ``fn(*args)``."""
    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return counter.get_total_flops(), tuple(out.shape)


# -- matmul ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("a,b,counted", [
    ((3, 4), (4, 5), True),
    ((4,), (4, 5), True),
    ((4,), (2, 4, 5), True),
    ((2, 1, 3, 4), (5, 4, 6), True),
    ((3, 4), (4,), False),
    ((2, 3, 4), (4,), False),
    ((4,), (4,), False),
])
def test_matmul_matches_torch_matmul(a, b, counted):
    op, ctx = infer("matmul", {}, t(*a), t(*b))
    flops, shape = torch_count(torch.matmul, torch.randn(a), torch.randn(b))
    assert ctx.outputs[0].concrete_shape() == shape
    natural = ctx.outputs[0].numel() * a[-1]
    assert op.macs(ctx) == natural
    # torch's FlopCounterMode has no formula for aten.mv / aten.dot: a 1-D right operand counts 0
    assert flops == (2 * natural if counted else 0)


@pytest.mark.parametrize("a,b,message", [
    (t(2, 3), t(4, 5), "inner dimensions differ"),
    (t(3), t(2, 5), "inner dimensions differ"),
    (t(2, 3, 4), t(5, 4), "inner dimensions differ"),
    (t(), t(3), "rank >= 1"),
    (t(2, 3, 4), t(3, 4, 5), "do not broadcast"),
    (t(3, 4), t(4, 5, dtype="float64"), "share a dtype"),
])
def test_matmul_rejects_bad_operands(a, b, message):
    with pytest.raises(ShapeError, match=message):
        infer("matmul", {}, a, b)


def test_matmul_is_symbolic_in_batch():
    assert infer("matmul", {}, t(B, 3, 4), t(4, 5))[1].outputs[0].shape == (B, 3, 5)
    assert infer("matmul", {}, t(B, 1, 3, 4), t(2, 4, 5))[1].outputs[0].shape == (B, 2, 3, 5)


# -- einsum ---------------------------------------------------------------------------------------------

EQUATIONS = [
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 5, 4), (2, 3, 6, 4)]),
    ("ij,jk", [(3, 4), (4, 5)]),
    ("ij,ij->", [(3, 4), (3, 4)]),
    ("ij,ij->ij", [(3, 4), (3, 4)]),
    ("i,j->ij", [(3,), (4,)]),
    ("ij,kl->", [(2, 3), (4, 5)]),
    ("bij,bjk->bi", [(2, 3, 4), (2, 4, 5)]),
    ("bij,bjk->ik", [(2, 3, 4), (2, 4, 5)]),
    ("ij,jk->ik", [(3, 1), (4, 5)]),
    ("bij,bjk->bik", [(1, 3, 4), (2, 4, 5)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 6)]),
    ("...ij,...jk->ik", [(2, 3, 4), (2, 4, 5)]),
    ("b...,b...->b", [(2, 3, 4), (2, 3, 4)]),
    ("Ab,ab", [(2, 3), (2, 3)]),
    ("bii->bi", [(2, 3, 3)]),
    ("ii->", [(3, 3)]),
    ("bij->bji", [(2, 3, 4)]),
    ("...->", [(2, 3)]),
    ("bi,ij,jk->bk", [(2, 3), (3, 4), (4, 5)]),
    ("ij,jk,kl->il", [(3, 4), (4, 5), (5, 6)]),
    ("a,ab,bc,c->", [(2,), (2, 3), (3, 4), (4,)]),
    ("bci,bcj->bcij", [(2, 3, 4), (2, 3, 5)]),
    ("bni,bnj,bn->bij", [(2, 3, 4), (2, 3, 5), (2, 3)]),
]


@pytest.mark.parametrize("equation,shapes", EQUATIONS, ids=[e for e, _ in EQUATIONS])
def test_einsum_matches_torch_shape_and_flop_count(equation, shapes):
    op, ctx = infer("einsum", {"equation": equation}, *(t(*s) for s in shapes))
    flops, shape = torch_count(torch.einsum, equation, *(torch.randn(s) for s in shapes))
    assert ctx.outputs[0].concrete_shape() == shape
    assert 2 * op.macs(ctx) == flops
    assert op.flops(ctx) >= 2 * op.macs(ctx)


def test_einsum_macs_are_the_natural_product_for_plain_contractions():
    op, ctx = infer("einsum", {"equation": "bhqd,bhkd->bhqk"}, t(2, 3, 5, 4), t(2, 3, 6, 4))
    assert op.macs(ctx) == 2 * 3 * 5 * 6 * 4
    # an index summed in only one operand is summed out first, as torch does: b*i*j, not b*i*j*k
    op, ctx = infer("einsum", {"equation": "bij,bjk->bi"}, t(2, 3, 4), t(2, 4, 5))
    assert op.macs(ctx) == 2 * 3 * 4
    assert op.flops(ctx) == 2 * 2 * 3 * 4 + 2 * 4 * 5


def test_einsum_counts_elementwise_products_as_flops():
    op, ctx = infer("einsum", {"equation": "i,j->ij"}, t(3), t(4))
    assert (op.macs(ctx), op.flops(ctx)) == (0, 12)


def test_einsum_is_symbolic_in_batch():
    _, ctx = infer("einsum", {"equation": "bhqd,bhkd->bhqk"}, t(B, 3, 5, 4), t(B, 3, 6, 4))
    assert ctx.outputs[0].shape == (B, 3, 5, 6)
    _, ctx = infer("einsum", {"equation": "...d,de"}, t(B, 7, 4), t(4, 5))
    assert ctx.outputs[0].shape == (B, 7, 5)


@pytest.mark.parametrize("equation,message", [
    ("ij,jk->ik->i", "more than one '->'"),
    ("i.j", "invalid character '.'"),
    ("ij1", "invalid character '1'"),
    ("......", "more than one '...'"),
    ("ij->ii", "appears twice"),
    ("ij->k", "appears in no operand"),
])
def test_einsum_rejects_malformed_equations(equation, message):
    with pytest.raises(SpecError, match=message) as err:
        get_op("einsum").validate_attrs({"equation": equation})
    assert err.value.key == "equation"


@pytest.mark.parametrize("equation,inputs,message", [
    ("ij,jk->ik", [t(3, 4)], "number of operands"),
    ("ij->i", [t(3, 4), t(4)], "number of operands"),
    ("ij,jk->ik", [t(3, 4, 1), t(4, 5)], "operand 0 has the wrong rank"),
    ("...ij->i", [t(3)], "operand 0 has the wrong rank"),
    ("ij,jk->ik", [t(3, 4), t(5, 6)], "index 'j' has inconsistent sizes"),
    ("...i,...i->...", [t(2, 3), t(4, 3)], "'...' dimension 0 has inconsistent sizes"),
    ("ii->i", [t(3, 4)], "repeated in operand 0"),
    ("ij,jk->ik", [t(3, 4), t(4, 5, dtype="float64")], "share a dtype"),
])
def test_einsum_rejects_bad_inputs(equation, inputs, message):
    with pytest.raises(ShapeError, match=message):
        infer("einsum", {"equation": equation}, *inputs)


class EinsumModule(torch.nn.Module):
    def __init__(self, call) -> None:
        super().__init__()
        self.call = call

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.call.fn(a, b, *self.call.args, **dict(self.call.kwargs))


def test_einsum_exports_with_dynamic_batch():
    op, ctx = infer("einsum", {"equation": "bqd,bkd->bqk"}, t(B, 5, 4), t(B, 6, 4))
    batch = torch.export.Dim("batch")
    a, b = torch.randn(2, 5, 4), torch.randn(2, 6, 4)
    program = torch.export.export(EinsumModule(op.lower(ctx)), (a, b), dynamic_shapes=[{0: batch}, {0: batch}])
    a, b = torch.randn(3, 5, 4), torch.randn(3, 6, 4)
    assert torch.allclose(program.module()(a, b), a @ b.transpose(1, 2), atol=1e-6)
