"""The tensor-manipulation entries beyond the generic harness: symbolic reshapes, bad inputs with clear
messages, numerics of the less obvious lowerings, and export with a dynamic batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.registry import Call, OpContext
from nasforge.types import Sym, TensorType

B, N = Sym.of("B"), Sym.of("N")


def t(*shape, dtype: str = "float32") -> TensorType:
    return TensorType(tuple(shape), dtype)


def infer(name: str, attrs: dict, *inputs: TensorType) -> tuple:
    op = get_op(name)
    op.check_arity(len(inputs))
    ctx = OpContext(op.validate_attrs(attrs), list(inputs))
    ctx.outputs = op.infer(ctx)
    return op, ctx


def run(name: str, attrs: dict, *xs: torch.Tensor):
    """Infer on the concrete inputs, then run the lowering."""
    op, ctx = infer(name, attrs, *(t(*x.shape, dtype=str(x.dtype).removeprefix("torch.")) for x in xs))
    call = op.lower(ctx)
    assert isinstance(call, Call)
    args = ([list(xs)] if call.pack_inputs else list(xs)) + list(call.args)
    return ctx, call.fn(*args, **dict(call.kwargs))


class Lowered(torch.nn.Module):
    """A one-input Call lowering as a module, for torch.export."""

    def __init__(self, call: Call) -> None:
        super().__init__()
        self.call = call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.call.fn(x, *self.call.args, **dict(self.call.kwargs))


# -- reshape --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,x,want", [
    (["B", -1], t(B, 3, 4, 4), (B, 48)),
    ([-1, 8], t(B, N, 8), (B * N, 8)),
    ([-1, 4], t(B, 3, 4), (3 * B, 4)),
    (["B", 3, -1, 2], t(B, 4, 6), (B, 3, 4, 2)),
    ([-1], t(B, 3, 4), (12 * B,)),
    ([2, -1], t(3, 4), (2, 6)),
])
def test_reshape_solves_minus_one_symbolically(shape, x, want):
    assert infer("reshape", {"to": shape}, x)[1].outputs == [x.with_shape(want)]


@pytest.mark.parametrize("shape,x,message", [
    ([3, 5], t(2, 6), "changes the number of elements"),
    (["B", 5], t(B, 6), "changes the number of elements"),
    (["B", 4, -1], t(B, 6), "cannot solve -1"),
    ([2, -1], t(B, 3), "cannot solve -1"),
    (["T", -1], t(B, 6), "symbol 'T'"),
    (["B", "N", 2, -1], t(B, N, 8), "at most one symbolic"),
])
def test_reshape_rejects_bad_targets(shape, x, message):
    with pytest.raises(ShapeError, match=message):
        infer("reshape", {"to": shape}, x)


@pytest.mark.parametrize("shape", [[-1, -1], [0, 4], [2, -3]])
def test_reshape_rejects_bad_sizes(shape):
    with pytest.raises(SpecError, match="invalid sizes") as err:
        get_op("reshape").validate_attrs({"to": shape})
    assert err.value.key == "to"


def test_reshape_exports_with_dynamic_batch():
    op, ctx = infer("reshape", {"to": ["B", -1]}, t(B, 3, 4, 4))
    module = Lowered(op.lower(ctx))
    program = torch.export.export(module, (torch.randn(2, 3, 4, 4),),
                                  dynamic_shapes=[{0: torch.export.Dim("batch")}])
    assert program.module()(torch.randn(5, 3, 4, 4)).shape == (5, 48)


# -- axes -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,attrs,x,message", [
    ("flatten", {"start": 2, "end": 1}, t(2, 3, 4), "start axis comes after its end"),
    ("flatten", {"start": 3}, t(2, 3, 4), "axis 3 is out of range"),
    ("permute", {"dims": [0, 1, 1]}, t(2, 3, 4), "not a permutation"),
    ("permute", {"dims": [0, 1]}, t(2, 3, 4), "not a permutation"),
    ("transpose", {"dim0": 0, "dim1": 3}, t(2, 3, 4), "out of range"),
    ("unsqueeze", {"axis": 4}, t(2, 3, 4), "out of range"),
    ("squeeze", {"axis": 1}, t(2, 3, 4), "does not have size 1"),
    ("squeeze", {"axis": 0}, t(B, 3), "does not have size 1"),
    ("expand", {"to": [2, 3]}, t(2, 3, 4), "fewer axes"),
    ("expand", {"to": [-1, 2, 3]}, t(2, 3), "new leading axes"),
    ("expand", {"to": [4, 3]}, t(2, 3), "only grow size-1 axes"),
    ("expand", {"to": [4, 3]}, t(B, 3), "only grow size-1 axes"),
    ("roll", {"shifts": 1, "axes": 3}, t(2, 3), "out of range"),
])
def test_axis_ops_reject_bad_inputs(name, attrs, x, message):
    with pytest.raises(ShapeError, match=message):
        infer(name, attrs, x)


@pytest.mark.parametrize("name,attrs", [
    ("expand", {"to": [0, 3]}),
    ("roll", {"shifts": [1, 2], "axes": 1}),
    ("roll", {"shifts": [1, 2], "axes": [1]}),
    ("roll", {"shifts": 1, "axes": [1, 2]}),
])
def test_bad_attributes_are_spec_errors(name, attrs):
    with pytest.raises(SpecError) as err:
        get_op(name).validate_attrs(attrs)
    assert err.value.key in ("to", "shifts")


def test_symbolic_batch_passes_through_axis_ops():
    assert infer("flatten", {}, t(B, 3, 4))[1].outputs[0].shape == (B, 12)
    assert infer("flatten", {"start": 0, "end": 1}, t(B, 3, 4))[1].outputs[0].shape == (3 * B, 4)
    assert infer("permute", {"dims": [1, 0]}, t(B, 3))[1].outputs[0].shape == (3, B)
    assert infer("expand", {"to": [-1, 4, 3]}, t(B, 1, 3))[1].outputs[0].shape == (B, 4, 3)


# -- split / chunk / concat / stack ---------------------------------------------------------------------

def test_split_and_chunk_match_torch():
    x = torch.randn(2, 7, 3)
    _, pieces = run("split", {"sizes": 3}, x)
    assert [p.shape[1] for p in pieces] == [3, 3, 1]
    _, pieces = run("chunk", {"chunks": 3}, x)
    assert all(torch.equal(a, b) for a, b in zip(pieces, torch.chunk(x, 3, 1)))


@pytest.mark.parametrize("name,attrs,xs,message", [
    ("split", {"sizes": [2, 2]}, [t(2, 5)], "do not add up"),
    ("split", {"sizes": 1, "axis": 0}, [t(B, 5)], "static size on axis 0"),
    ("chunk", {"chunks": 4}, [t(2, 5)], "cannot cut axis 1 into 4 pieces"),
    ("chunk", {"chunks": 2, "axis": 2}, [t(2, 5)], "out of range"),
    ("concat", {}, [t(2, 3, 4), t(2, 3, 5)], "differ outside axis 1"),
    ("concat", {}, [t(2, 3), t(2, 3, 1)], "differ outside axis 1"),
    ("concat", {}, [t(2, 3), t(2, 3, dtype="float64")], "share a dtype"),
    ("concat", {"axis": 0}, [t(B, 3), t(2, 3)], "cannot add"),
    ("stack", {}, [t(2, 3), t(2, 4)], "equal shapes"),
    ("stack", {"axis": 3}, [t(2, 3), t(2, 3)], "out of range"),
])
def test_multi_tensor_ops_reject_bad_inputs(name, attrs, xs, message):
    with pytest.raises(ShapeError, match=message):
        infer(name, attrs, *xs)


def test_chunk_error_suggests_split():
    with pytest.raises(ShapeError) as err:
        infer("chunk", {"chunks": 4}, t(2, 5))
    assert "split" in err.value.hint


def test_concat_and_stack_are_symbolic():
    assert infer("concat", {"axis": 0}, t(B, 3), t(B, 3))[1].outputs[0].shape == (2 * B, 3)
    assert infer("concat", {}, t(B, 3), t(B, 5))[1].outputs[0].shape == (B, 8)
    assert infer("stack", {}, t(B, 3), t(B, 3), t(B, 3))[1].outputs[0].shape == (B, 3, 3)


# -- slice / pad / roll ---------------------------------------------------------------------------------

@pytest.mark.parametrize("attrs,index", [
    ({"axis": 1, "start": -3}, (slice(None), slice(-3, None))),
    ({"axis": -1, "start": 1, "end": -1, "step": 2}, (slice(None), slice(None), slice(1, -1, 2))),
    ({"axis": 2, "start": -100, "end": 100}, (slice(None), slice(None), slice(-100, 100))),
])
def test_slice_has_python_semantics(attrs, index):
    x = torch.randn(2, 5, 6)
    ctx, y = run("slice", attrs, x)
    assert torch.equal(y, x[index])
    assert ctx.outputs[0].concrete_shape() == tuple(y.shape)


@pytest.mark.parametrize("attrs,x,message", [
    ({"axis": 1, "start": 3, "end": 2}, t(2, 5), "slice is empty"),
    ({"axis": 1, "start": 5}, t(2, 5), "slice is empty"),
    ({"axis": 0, "start": 1}, t(B, 5), "static size on axis 0"),
    ({"axis": 2, "start": 0}, t(2, 5), "out of range"),
])
def test_slice_rejects_bad_inputs(attrs, x, message):
    with pytest.raises(ShapeError, match=message):
        infer("slice", attrs, x)


def test_slice_step_must_be_positive():
    with pytest.raises(SpecError, match="'step' must be positive"):
        get_op("slice").validate_attrs({"axis": 0, "start": 0, "step": 0})


def test_slice_exports_with_dynamic_batch():
    op, ctx = infer("slice", {"axis": -1, "start": 1, "step": 2}, t(B, 3, 6))
    program = torch.export.export(Lowered(op.lower(ctx)), (torch.randn(2, 3, 6),),
                                  dynamic_shapes=[{0: torch.export.Dim("batch")}])
    assert program.module()(torch.randn(4, 3, 6)).shape == (4, 3, 3)


@pytest.mark.parametrize("attrs", [
    {"pads": [1, 2, 0, 1], "value": -1.0},
    {"pads": [-1, -1, 1, 1]},
    {"pads": [2, 1, 1, 0], "mode": "reflect"},
    {"pads": [3, 3, 1, 1], "mode": "replicate"},
    {"pads": [4, 0, 0, 3], "mode": "circular"},
])
def test_pad_matches_functional_pad(attrs):
    x = torch.randn(2, 3, 3, 4)
    ctx, y = run("pad", attrs, x)
    mode = attrs.get("mode", "constant")
    extra = {"value": attrs.get("value", 0.0)} if mode == "constant" else {}
    assert torch.equal(y, F.pad(x, attrs["pads"], mode=mode, **extra))
    assert ctx.outputs[0].concrete_shape() == tuple(y.shape)


@pytest.mark.parametrize("attrs,x,message", [
    ({"pads": [1, 1] * 3}, t(3, 4), "more \\(before, after\\) pairs"),
    ({"pads": [4, 0], "mode": "reflect"}, t(2, 3, 4), "too large"),
    ({"pads": [5, 0], "mode": "circular"}, t(2, 3, 4), "too large"),
    ({"pads": [1, 1], "mode": "reflect"}, t(2, 3, 4, 5), "rank-2 or rank-3"),
    ({"pads": [-2, -2]}, t(2, 4), "leaves axis 1 empty"),
    ({"pads": [0, 0, 0, 0, 1, 0]}, t(B, 3, 4), "static size on axis 0"),
])
def test_pad_rejects_bad_inputs(attrs, x, message):
    with pytest.raises(ShapeError, match=message):
        infer("pad", attrs, x)


@pytest.mark.parametrize("attrs,message", [
    ({"pads": [1, 2, 3]}, "pairs"),
    ({"pads": []}, "pairs"),
    ({"pads": [-1, 1], "mode": "reflect"}, "non-negative"),
    ({"pads": [1] * 8, "mode": "replicate"}, "at most 3 axes"),
])
def test_pad_rejects_bad_attributes(attrs, message):
    with pytest.raises(SpecError, match=message) as err:
        get_op("pad").validate_attrs(attrs)
    assert err.value.key == "pads"


def test_pad_keeps_an_unpadded_symbolic_batch():
    out = infer("pad", {"pads": [1, 1, 2, 2], "mode": "reflect"}, t(B, 3, 4, 5))[1].outputs[0]
    assert out.shape == (B, 3, 8, 7)


def test_roll_matches_torch():
    x = torch.randn(2, 3, 4)
    assert torch.equal(run("roll", {"shifts": [1, -1], "axes": [1, -1]}, x)[1], torch.roll(x, (1, -1), (1, 2)))
    assert torch.equal(run("roll", {"shifts": 5}, x)[1], torch.roll(x, 5))


def test_select_drops_the_axis_and_checks_the_index():
    import nasforge

    spec = nasforge.loads("inputs: {x: [B, 197, 192]}\ngraph:\n  - {id: cls, op: select, axis: 1, index: 0}\n")
    assert str(spec.graph.nodes["cls"].outputs[0]) == "[B, 192]"
    with pytest.raises(nasforge.SpecError, match="index 197 is out of range for axis 1"):
        nasforge.loads("inputs: {x: [B, 197, 192]}\ngraph:\n  - {op: select, axis: 1, index: 197}\n").check()
