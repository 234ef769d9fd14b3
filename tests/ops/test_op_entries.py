"""Every registry entry, held to torch: shape rule, parameters and MACs against the real lowering.

The examples live on the entries themselves, so a new op is tested the moment it is registered.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nasforge.ops import all_ops
from nasforge.ops.registry import Call, OpContext
from nasforge.types import Sym, TensorType

OPS = all_ops()
CASES = [(name, i) for name, op in OPS.items() for i in range(len(op.examples))]
TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
                "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}


def make_input(t: TensorType, int_high: int, gen: torch.Generator) -> torch.Tensor:
    shape = t.concrete_shape()
    if t.dtype == "bool":
        return torch.rand(shape, generator=gen) > 0.5
    if t.dtype in ("int64", "int32"):
        return torch.randint(0, int_high, shape, generator=gen, dtype=TORCH_DTYPES[t.dtype])
    return torch.randn(shape, generator=gen, dtype=TORCH_DTYPES[t.dtype])


def run_lowering(op, ctx: OpContext, inputs: list[torch.Tensor], train: bool):
    lowered = op.lower(ctx)
    if isinstance(lowered, Call):
        args = ([inputs] if lowered.pack_inputs else list(inputs)) + list(lowered.args)
        return None, lowered.fn(*args, **dict(lowered.kwargs))
    lowered.train(train)
    return lowered, lowered(*inputs)


def prepare(name: str, index: int):
    op = OPS[name]
    ex = op.examples[index]
    attrs = op.validate_attrs(ex.attrs)
    types = ex.input_types()
    op.check_arity(len(types))
    ctx = OpContext(attrs, types)
    ctx.outputs = op.infer(ctx)
    return op, ex, ctx


def test_every_op_is_documented_and_exercised():
    for name, op in OPS.items():
        assert op.__doc__ and op.__doc__.strip(), f"{name} has no docstring"
        assert op.examples, f"{name} has no examples for the generic tests"
        assert op.category != "misc" or name in ("identity", "zero"), f"{name} has no category"


@pytest.mark.parametrize("name,index", CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_op_matches_torch(name: str, index: int):
    op, ex, ctx = prepare(name, index)
    gen = torch.Generator().manual_seed(index)
    inputs = [make_input(t, ex.int_high, gen) for t in ctx.inputs]
    with FlopCounterMode(display=False) as counter:
        module, result = run_lowering(op, ctx, inputs, ex.train)
    results = list(result) if isinstance(result, (tuple, list)) else [result]

    # shape and dtype rule vs the real output
    assert len(results) == len(ctx.outputs), f"{name}: {len(results)} outputs, rule says {len(ctx.outputs)}"
    for got, want in zip(results, ctx.outputs):
        assert tuple(got.shape) == want.concrete_shape(), f"{name}: torch {tuple(got.shape)} vs rule {want}"
        assert got.dtype == TORCH_DTYPES[want.dtype], f"{name}: torch {got.dtype} vs rule {want.dtype}"

    # parameters vs the lowered module
    declared = {k: tuple(v) for k, v in op.params(ctx).items()}
    actual = {k: tuple(p.shape) for k, p in module.named_parameters()} if module is not None else {}
    assert declared == actual, f"{name}: declared params {declared} vs module {actual}"

    # MACs vs torch's own counter where it counts this op; otherwise torch must see none
    counted = counter.get_total_flops()
    if op.flop_counted:
        assert counted == 2 * op.macs(ctx), f"{name}: torch counts {counted} FLOPs, we say 2x{op.macs(ctx)}"
    else:
        assert counted == 0, f"{name}: torch counts {counted} FLOPs; mark flop_counted and match it"
    assert op.flops(ctx) >= 2 * op.macs(ctx)


@pytest.mark.parametrize("name,index", CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_shape_rule_is_symbolic_in_batch(name: str, index: int):
    op, ex, ctx = prepare(name, index)
    if not ex.symbolic_batch or not ctx.inputs or ctx.inputs[0].rank == 0:
        pytest.skip("example does not take a symbolic batch")
    batch = ctx.inputs[0].shape[0]
    sym = [t.with_shape((Sym.of("B"),) + t.shape[1:]) if t.rank and t.shape[0] == batch else t
           for t in ctx.inputs]
    sctx = OpContext(ctx.attrs, sym)
    outs = op.infer(sctx)
    bound = [o.concrete_shape({"B": batch}) for o in outs]
    assert bound == [o.concrete_shape() for o in ctx.outputs]
