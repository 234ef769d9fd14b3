"""Text models' padding: ``padding_mask`` turns a batch's padding into the key mask that ``attention`` takes.

Sequence models batch sentences of different lengths by padding them to one length, and attention must not
attend to the padding. Both reference conventions are covered: HF transformers' encoders take an
``attention_mask`` input (``[B, S]``, 1 for a token, 0 for padding; BERT), fairseq derives the mask from the
token ids themselves (``src_tokens.eq(padding_idx)``; the Transformer). Either way the result is a bool
``[B, 1, 1, S]`` (True = attend): one row of keys per sequence, broadcast over heads and over the queries,
so the same mask serves self-attention over the sequence and cross-attention onto it from a sequence of
another length (a decoder's). Patterns over query and key positions (causal, sliding window, block-causal)
are ``attention_mask``'s (rope.py).
"""

from __future__ import annotations

import torch

from nasforge.ops.registry import Attr, Call, Example, OpContext, OpDef, register
from nasforge.types import TensorType

_ID_DTYPES = ("int64", "int32")


def key_padding_mask(x: torch.Tensor, pad_id: int | None = None) -> torch.Tensor:
    """``[B, S]`` token ids (``pad_id`` given) or a 0/1 mask -> bool ``[B, 1, 1, S]``, True where attended."""
    return x.ne(0 if pad_id is None else pad_id)[:, None, None, :]


@register
class PaddingMask(OpDef):
    """Key padding mask: ``[B, S] -> [B, 1, 1, S]`` bool (True = attend), the mask input of ``attention``
    (``masked: true``) and ``sdpa`` for self-attention over the sequence or cross-attention onto it.

    Without ``pad_id`` the input is a padding mask as HF transformers take it (``attention_mask``: nonzero
    for a token, 0 for padding; int, bool or float). With ``pad_id`` the input is the token ids and each id
    equal to ``pad_id`` is padding (fairseq's ``tokens.eq(padding_idx)``). A sequence that is all padding
    leaves its queries no key to attend to: their outputs mean nothing. No parameters or MACs.
    """

    name = "padding_mask"
    category = "attention"
    attrs = (Attr("pad_id", "int|none", None, "the input is token ids and this id is padding; None: a 0/1 mask"),)
    examples = (
        Example({}, [((2, 5), "int64")], int_high=2),
        Example({"pad_id": 1}, [((2, 7), "int64")], int_high=4),
        Example({}, [((2, 5), "bool")]),
        Example({"pad_id": 0}, [((3, 4), "int32")], int_high=3),
        Example({}, [((2, 6), "float32")]),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        if x.rank != 2:
            raise ctx.fail("padding_mask takes one [B, S] row per sequence", expected="rank 2 ([B, S])",
                           found=str(x))
        if ctx["pad_id"] is not None and x.dtype not in _ID_DTYPES:
            raise ctx.fail("with pad_id the input must be token ids", expected="int64 or int32",
                           found=f"{x} ({x.dtype})", hint="drop pad_id to read the input as a 0/1 padding mask")
        b, s = x.shape
        return [TensorType((b, 1, 1, s), "bool")]

    def lower(self, ctx: OpContext) -> Call:
        return Call(key_padding_mask, kwargs={"pad_id": ctx["pad_id"]})
