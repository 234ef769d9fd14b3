"""Conditioning inputs of generative networks: ``timestep_embedding``.

A diffusion model's denoiser takes the noise level as a second input, an integer timestep per sample
(DDPM: Ho, Jain, Abbeel, NeurIPS 2020, ``diffusion_tf/nn.py`` ``get_timestep_embedding``), and embeds it
with the sinusoids of the Transformer before an MLP. Class conditioning needs no op of its own: a class id
is an ``embedding`` (a learned table) whose output is added to the timestep embedding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nasforge.errors import SpecError
from nasforge.ops.registry import Attr, Example, OpContext, OpDef, nn, register
from nasforge.types import FLOAT_DTYPES, TensorType


def timestep_frequencies(half: int, max_period: float, freq_shift: float) -> torch.Tensor:
    """``exp(-i * ln(max_period) / (half - freq_shift))`` for ``i < half`` in float32, computed as DDPM's
    reference does (a Python-float step times a float32 range)."""
    step = math.log(max_period) / (half - freq_shift)
    return torch.exp(torch.arange(half, dtype=torch.float32) * -step)


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of a timestep tensor ``[...] -> [..., dim]`` (float32): ``sin`` then ``cos`` of
    ``t * freqs`` (``cos_first`` swaps the halves), a zero column appended when ``dim`` is odd. The
    frequency table is a non-persistent buffer ``freqs``."""

    def __init__(self, dim: int, max_period: float = 10000.0, freq_shift: float = 1.0,
                 cos_first: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.cos_first = cos_first
        self.register_buffer("freqs", timestep_frequencies(dim // 2, max_period, freq_shift), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float().unsqueeze(-1) * self.freqs
        parts = (args.cos(), args.sin()) if self.cos_first else (args.sin(), args.cos())
        emb = torch.cat(parts, dim=-1)
        return F.pad(emb, (0, 1)) if self.dim % 2 else emb

    def extra_repr(self) -> str:
        return f"dim={self.dim}, cos_first={self.cos_first}"


@register
class TimestepEmbeddingOp(OpDef):
    """Sinusoidal timestep embedding of diffusion models: ``t [...] -> [..., dim]`` float32, for integer or
    float timesteps (DDPM: ``t [B]`` int64, ``dim`` = the base width, 128 on CIFAR-10).

    With ``half = dim // 2`` and ``f_i = exp(-i * ln(max_period) / (half - freq_shift))``, ``i < half``, the
    features are ``[sin(t f_0), ..., sin(t f_{half-1}), cos(t f_0), ..., cos(t f_{half-1})]``, plus a zero
    column when ``dim`` is odd. ``freq_shift: 1`` (the default) is DDPM's ``get_timestep_embedding`` (from
    fairseq / tensor2tensor: the last frequency is exactly ``1/max_period``); ``freq_shift: 0`` with
    ``cos_first: true`` is the improved-DDPM / ADM ``timestep_embedding`` (diffusers spells these
    ``downscale_freq_shift`` and ``flip_sin_to_cos``). No parameters or MACs; FLOPs count one
    transcendental per output element and one multiply per feature argument.
    """

    name = "timestep_embedding"
    category = "conditioning"
    attrs = (
        Attr("dim", "int", doc="embedding width (>= 2 with freq_shift < dim // 2)"),
        Attr("max_period", "float", 10000.0, "the longest period, ln(max_period) spans the frequencies"),
        Attr("freq_shift", "float", 1.0, "frequency denominator is half - freq_shift (DDPM 1, ADM 0)"),
        Attr("cos_first", "bool", False, "cosines before sines (ADM) instead of sines first (DDPM)"),
    )
    examples = (
        Example({"dim": 8}, [((3,), "int64")], int_high=1000),
        Example({"dim": 7, "freq_shift": 0.0, "cos_first": True}, [((2,), "float32")]),
        Example({"dim": 6, "max_period": 100.0}, [((2, 5), "int32")], int_high=50),
    )

    def check_attrs(self, attrs: dict) -> None:
        if attrs["dim"] < 2:
            raise SpecError("timestep_embedding needs at least one sine and one cosine", expected="dim >= 2",
                            found=f"dim={attrs['dim']}", key="dim")
        if attrs["dim"] // 2 - attrs["freq_shift"] <= 0:
            raise SpecError("timestep_embedding frequencies divide by dim // 2 - freq_shift",
                            expected=f"freq_shift < {attrs['dim'] // 2} (dim // 2)",
                            found=f"freq_shift={attrs['freq_shift']} with dim={attrs['dim']}", key="freq_shift")
        if attrs["max_period"] <= 0:
            raise SpecError("timestep_embedding max_period must be positive", expected="a number > 0",
                            found=repr(attrs["max_period"]), key="max_period")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        t = ctx.x
        if t.dtype not in ("int64", "int32") + FLOAT_DTYPES:
            raise ctx.fail("timestep_embedding takes numeric timesteps", expected="an integer or float tensor",
                           found=f"{t} ({t.dtype})")
        return [TensorType(t.shape + (ctx["dim"],), "float32")]

    def flops(self, ctx: OpContext) -> int:
        return ctx.outputs[0].numel() + ctx.x.numel() * (ctx["dim"] // 2)

    def lower(self, ctx: OpContext) -> nn.Module:
        return TimestepEmbedding(ctx["dim"], ctx["max_period"], ctx["freq_shift"], ctx["cos_first"])
