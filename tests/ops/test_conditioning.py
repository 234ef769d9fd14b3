"""``timestep_embedding`` beyond the generic harness: DDPM's ``get_timestep_embedding`` and the improved-DDPM
/ ADM form written out here, shapes and dtypes, attribute and shape errors, torch.export."""

from __future__ import annotations

import math

import pytest
import torch
from torch.export import Dim

from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.conditioning import TimestepEmbedding
from nasforge.ops.registry import OpContext
from nasforge.types import Sym, TensorType

B = Sym.of("B")


def context(attrs: dict, x: TensorType) -> tuple:
    op = get_op("timestep_embedding")
    ctx = OpContext(op.validate_attrs(attrs), [x])
    ctx.outputs = op.infer(ctx)
    return op, ctx


def ddpm_embedding(timesteps: torch.Tensor, embedding_dim: int) -> torch.Tensor:
    """DDPM's get_timestep_embedding (hojonathanho/diffusion, diffusion_tf/nn.py), in torch."""
    half_dim = embedding_dim // 2
    emb = math.log(10000) / (half_dim - 1)
    emb = torch.exp(torch.arange(half_dim, dtype=torch.float32) * -emb)
    emb = timesteps.float()[:, None] * emb[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1, 0, 0))
    return emb


def adm_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
    """improved-diffusion / guided-diffusion timestep_embedding: cos first, frequencies over half."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


@pytest.mark.parametrize("dim", [128, 33, 4])
def test_equals_ddpm_get_timestep_embedding(dim):
    t = torch.tensor([0, 1, 17, 500, 999])
    torch.testing.assert_close(TimestepEmbedding(dim)(t), ddpm_embedding(t, dim), rtol=0, atol=0)
    emb = TimestepEmbedding(dim)(t)
    half = dim // 2
    # t = 0: every sine 0, every cosine 1; the last frequency is exactly 1 / max_period
    torch.testing.assert_close(emb[0, :2 * half], torch.cat([torch.zeros(half), torch.ones(half)]))
    torch.testing.assert_close(emb[3, half - 1], torch.tensor(math.sin(500 / 10000)))


@pytest.mark.parametrize("dim", [256, 7])
def test_adm_form(dim):
    t = torch.tensor([3.0, 250.5, 999.0])
    torch.testing.assert_close(TimestepEmbedding(dim, freq_shift=0.0, cos_first=True)(t), adm_embedding(t, dim))


def test_rule_shapes_and_dtypes():
    _, ctx = context({"dim": 128}, TensorType((B,), "int64"))
    assert (ctx.outputs[0].shape, ctx.outputs[0].dtype) == ((B, 128), "float32")
    _, ctx = context({"dim": 9}, TensorType((B, 3), "float16"))
    assert (ctx.outputs[0].shape, ctx.outputs[0].dtype) == ((B, 3, 9), "float32")
    assert TimestepEmbedding(9)(torch.ones(2, 3, dtype=torch.float16)).dtype == torch.float32


@pytest.mark.parametrize("attrs, message", [
    ({"dim": 1}, "at least one sine and one cosine"),
    ({"dim": 2}, "divide by dim // 2 - freq_shift"),          # DDPM's form needs dim >= 4
    ({"dim": 8, "freq_shift": 4.0}, "freq_shift < 4"),
    ({"dim": 8, "max_period": 0.0}, "must be positive"),
])
def test_attribute_errors(attrs, message):
    with pytest.raises(SpecError, match=message):
        get_op("timestep_embedding").validate_attrs(attrs)


def test_bool_timesteps_are_refused():
    with pytest.raises(ShapeError, match="numeric timesteps"):
        context({"dim": 8}, TensorType((B,), "bool"))


def test_exports_with_a_dynamic_batch():
    module = TimestepEmbedding(128)
    t = torch.tensor([1, 2])
    program = torch.export.export(module, (t,), dynamic_shapes=({0: Dim("batch", min=1, max=64)},))
    other = torch.tensor([5, 999, 0, 42])
    torch.testing.assert_close(program.module()(other), ddpm_embedding(other, 128))
    assert "freqs" not in module.state_dict()   # a fixed table: a non-persistent buffer
