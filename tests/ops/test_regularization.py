"""``dropout`` and ``drop_path`` beyond the generic harness: probability checks, per-sample semantics of
stochastic depth, eval-mode identity and export."""

from __future__ import annotations

import pytest
import torch

from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.regularization import DropPath
from nasforge.ops.registry import OpContext
from nasforge.types import Sym, TensorType


@pytest.mark.parametrize("name", ["dropout", "drop_path"])
@pytest.mark.parametrize("p", [1.0, -0.1, 1.5])
def test_probability_must_be_in_unit_interval(name, p):
    with pytest.raises(SpecError, match="probability out of range") as err:
        get_op(name).validate_attrs({"p": p})
    assert err.value.key == "p"


@pytest.mark.parametrize("name", ["dropout", "drop_path"])
def test_integer_inputs_are_rejected(name):
    op = get_op(name)
    ctx = OpContext(op.validate_attrs({"p": 0.1}), [TensorType((2, 3), "int64")])
    with pytest.raises(ShapeError, match="floating-point"):
        op.infer(ctx)


@pytest.mark.parametrize("name", ["dropout", "drop_path"])
def test_train_only_and_free_at_inference(name):
    op = get_op(name)
    ctx = OpContext(op.validate_attrs({"p": 0.3}), [TensorType((Sym.of("B"), 4))])
    ctx.outputs = op.infer(ctx)
    assert op.train_only and ctx.outputs == ctx.inputs and op.flops(ctx) == 0


def test_drop_path_drops_whole_samples_and_rescales():
    torch.manual_seed(0)
    module = DropPath(0.25).train()
    x = torch.randn(4000, 3, 2).abs() + 0.1
    y = module(x)
    ratio = (y / x).flatten(1)
    kept = ratio[:, 0] != 0
    assert torch.allclose(ratio[kept], torch.full_like(ratio[kept], 1 / 0.75))
    assert not ratio[~kept].any()
    assert abs(kept.float().mean().item() - 0.75) < 0.03


def test_drop_path_is_the_identity_in_eval_and_at_p_zero():
    x = torch.randn(3, 4)
    assert DropPath(0.5).eval()(x) is x
    assert DropPath(0.0).train()(x) is x


def test_drop_path_exports_with_dynamic_batch():
    program = torch.export.export(DropPath(0.2).eval(), (torch.randn(2, 8),),
                                  dynamic_shapes=[{0: torch.export.Dim("batch")}])
    x = torch.randn(5, 8)
    assert torch.equal(program.module()(x), x)
