"""``padding_mask``: the key padding mask of text models, from a 0/1 mask (HF) or from token ids (fairseq)."""

from __future__ import annotations

import pytest
import torch

import nasforge
from nasforge.errors import ShapeError
from nasforge.ops import get_op
from nasforge.ops.registry import OpContext
from nasforge.types import Sym, TensorType


def infer(attrs: dict, *inputs: TensorType) -> list[TensorType]:
    op = get_op("padding_mask")
    return op.infer(OpContext(op.validate_attrs(attrs), list(inputs)))


def test_shape_rule_is_one_row_of_keys_per_sequence():
    b = Sym.of("B")
    assert infer({}, TensorType((b, 7), "int64")) == [TensorType((b, 1, 1, 7), "bool")]
    assert infer({"pad_id": 1}, TensorType((3, 5), "int32")) == [TensorType((3, 1, 1, 5), "bool")]
    assert infer({}, TensorType((2, 4), "float32"))[0].shape == (2, 1, 1, 4)


@pytest.mark.parametrize("attrs, given, message, expected", [
    ({}, TensorType((2, 3, 4), "int64"), "padding_mask takes one [B, S] row per sequence", "rank 2 ([B, S])"),
    ({}, TensorType((5,), "bool"), "padding_mask takes one [B, S] row per sequence", "rank 2 ([B, S])"),
    ({"pad_id": 0}, TensorType((2, 4), "float32"), "with pad_id the input must be token ids", "int64 or int32"),
    ({"pad_id": 0}, TensorType((2, 4), "bool"), "with pad_id the input must be token ids", "int64 or int32"),
])
def test_errors_say_what_was_expected(attrs, given, message, expected):
    with pytest.raises(ShapeError) as info:
        infer(attrs, given)
    assert info.value.message == message and info.value.expected == expected
    assert str(given.shape[0]) in info.value.found or given.dtype in info.value.found


def test_pad_id_must_be_an_int():
    with pytest.raises(nasforge.SpecError, match="wrong type"):
        get_op("padding_mask").validate_attrs({"pad_id": 1.5})


def test_values_follow_both_conventions():
    lower = get_op("padding_mask").lower
    hf = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    fn = lower(OpContext({"pad_id": None}, [TensorType((2, 4), "int64")]))
    want = torch.tensor([[True, True, True, False], [True, False, False, False]])[:, None, None, :]
    assert torch.equal(fn.fn(hf, **fn.kwargs), want)
    assert torch.equal(fn.fn(hf.bool(), **fn.kwargs), want)
    assert torch.equal(fn.fn(hf.float(), **fn.kwargs), want)
    tokens = torch.tensor([[5, 9, 2, 1], [7, 1, 1, 1]])            # fairseq: pad = 1
    fn = lower(OpContext({"pad_id": 1}, [TensorType((2, 4), "int64")]))
    assert torch.equal(fn.fn(tokens, **fn.kwargs), want)


CROSS = """
inputs: {x: [B, 3, 8], memory: [B, 5, 8], tokens: {shape: [B, 5], dtype: int64}}
graph:
  - {id: mask, op: padding_mask, in: tokens, pad_id: 1}
  - {id: attn, op: attention, in: [x, memory, mask], heads: 2, masked: true}
"""


def test_one_mask_serves_cross_attention_from_another_length():
    """The [B, 1, 1, S] mask broadcasts over 3 queries onto 5 keys, and masked keys change nothing."""
    gm = nasforge.loads(CROSS, "cross.yaml").build()
    gen = torch.Generator().manual_seed(0)
    x, memory = torch.randn(3, 3, 8, generator=gen), torch.randn(3, 5, 8, generator=gen)
    tokens = torch.tensor([[4, 6, 8, 1, 1], [2, 3, 4, 5, 6], [1, 7, 1, 1, 9]])
    other = memory.clone()
    other[0, 3:] = torch.randn(2, 8, generator=gen)                # only sequence 0's padded keys change
    with torch.no_grad():
        out = gm(x, memory, tokens)
        torch.testing.assert_close(gm(x, other, tokens), out)
        attn = gm.attn
        q = attn.q(x[:1]).view(1, 3, 2, 4).transpose(1, 2)
        k, v = attn.kv(memory[:1, :3]).view(1, 3, 2, 2, 4).permute(2, 0, 3, 1, 4)
        ref = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v
        torch.testing.assert_close(out[:1], attn.proj(ref.transpose(1, 2).reshape(1, 3, 8)))
