"""LLaMA-architecture decoders: TinyLlama-1.1B (``llama.yaml``) and LlamaGen's class-conditional image-token
generator (``llamagen_b.yaml``).

The generic harness (``test_model_specs.py``) holds every member to its ``paper:`` numbers. Here: the exact
counts by hand from the reference definitions (HF ``LlamaForCausalLM`` with TinyLlama's config; LlamaGen's
``gpt.py``) without building the 1.1B model; the small members built, counted by torch's FlopCounterMode
and exported with a dynamic batch; and numerical comparisons with independent small PyTorch models written
here from the papers and the reference code's layout (HF's module names; LlamaGen's fused ``wqkv``, 2-D
interleaved rotary table with zero rows for the class token), loading the same random state_dict. Building
and running TinyLlama-1.1B itself (4.4 GB of float32 weights) is in the slow set.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim
from torch.utils.flop_counter import FlopCounterMode

import nasforge
from nasforge.compiler.fx_builder import example_inputs

MODELS = Path(__file__).resolve().parents[2] / "specs" / "models"
LLAMA = MODELS / "llama.yaml"
LLAMAGEN = MODELS / "llamagen_b.yaml"


def params_of(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomize(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights scaled by fan-in (norm weights around 1) so deep stacks keep their scale."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if value.dim() == 1:
            state[key] = 1.0 + 0.1 * torch.randn(value.shape, generator=gen)
        else:
            state[key] = torch.randn(value.shape, generator=gen) / math.sqrt(value.shape[-1])
    return state


# -- an independent LLaMA (HF LlamaForCausalLM's layout) ------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_pairs(a: torch.Tensor, b: torch.Tensor, angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a + ib) e^(i angles)`` via complex numbers, float64."""
    z = torch.complex(a.double(), b.double()) * torch.polar(torch.ones_like(angles), angles)
    return z.real, z.imag


def rope_half(x: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE on [B, H, T, D] pairing feature k with k + D/2, angle p * theta^(-2k/D)."""
    d, n = x.shape[-1], x.shape[-2]
    angles = torch.arange(n, dtype=torch.float64)[:, None] * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    re, im = rotate_pairs(x[..., : d // 2], x[..., d // 2:], angles)
    return torch.cat([re, im], dim=-1).to(x.dtype)


def causal_attention(q, k, v):
    n = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return scores.softmax(-1) @ v


class LlamaAttention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, theta: float) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.theta = heads, kv_heads, dim // heads, theta
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        b, n, c = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rope_half(q, self.theta), rope_half(k, self.theta)
        groups = self.heads // self.kv_heads
        out = causal_attention(q, k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1))
        return self.o_proj(out.transpose(1, 2).reshape(b, n, c))


class LlamaMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, dim, heads, kv_heads, hidden, theta, eps) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(dim, heads, kv_heads, theta)
        self.mlp = LlamaMLP(dim, hidden)
        self.input_layernorm = RMSNorm(dim, eps)
        self.post_attention_layernorm = RMSNorm(dim, eps)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(nn.Module):
    """HF's LlamaForCausalLM, written from its description: model.{embed_tokens, layers, norm} and lm_head."""

    def __init__(self, vocab, dim, layers, heads, kv_heads, hidden, theta=10000.0, eps=1e-5) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(vocab, dim)
        self.model.layers = nn.ModuleList(LlamaDecoderLayer(dim, heads, kv_heads, hidden, theta, eps)
                                          for _ in range(layers))
        self.model.norm = RMSNorm(dim, eps)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, ids):
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x)
        return self.lm_head(self.model.norm(x))


TINY = {"vocab": 512, "dim": 64, "layers": 2, "heads": 4, "kv_heads": 2, "hidden": 176}
TINYLLAMA = {"vocab": 32000, "dim": 2048, "layers": 22, "heads": 32, "kv_heads": 4, "hidden": 5632}


def llama_counts(vocab, dim, layers, heads, kv_heads, hidden, seq) -> tuple[int, int]:
    """(params, MACs per sequence) of LlamaForCausalLM, by hand."""
    kv = kv_heads * dim // heads
    linear = dim * (dim + 2 * kv + dim) + 3 * dim * hidden
    params = vocab * dim + layers * (linear + 2 * dim) + dim + dim * vocab
    macs = seq * (layers * linear + dim * vocab) + layers * 2 * seq * seq * dim
    return params, macs


def test_tinyllama_counts_by_analysis():
    spec = nasforge.load(LLAMA)
    totals = spec.check().totals
    params, macs = llama_counts(**TINYLLAMA, seq=2048)
    assert totals.params == params == 1_100_048_384
    assert totals.macs == macs == 2_496_449_740_800
    rows = {r.path: (r.params, r.macs) for r in spec.summary(depth=0).rows}
    assert rows["model.embed_tokens"] == (65_536_000, 0)
    assert rows["model.layers.0.self_attn"] == (2 * 2048 * 2048 + 2 * 256 * 2048,
                                                2048 * 2048 * (2 * 2048 + 2 * 256) + 2 * 2048 * 2048 * 2048)
    assert rows["model.layers.0.mlp.gate_proj"] == (2048 * 5632, 2048 * 2048 * 5632)
    assert rows["lm_head"] == (65_536_000, 2048 * 65_536_000)
    out = spec.graph.nodes["lm_head"].outputs[0]
    assert out.concrete_shape({"B": 1}) == (1, 2048, 32000)


def test_tiny_llama_counts_and_flop_counter():
    spec = nasforge.load(LLAMA, variant="tiny")
    totals = spec.check().totals
    assert (totals.params, totals.macs) == llama_counts(**TINY, seq=16) == (158_016, 2_064_384)
    gm = spec.build()
    assert params_of(gm) == totals.params
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        gm(*example_inputs(spec.graph, batch=1))
    assert counter.get_total_flops() == 2 * totals.macs


def test_tiny_llama_equals_an_independent_llama():
    spec = nasforge.load(LLAMA, variant="tiny")
    gm = spec.build()
    ref = LlamaForCausalLM(**TINY).eval()
    state = randomize(ref)
    assert {k: v.shape for k, v in gm.state_dict().items()} == {k: v.shape for k, v in state.items()}
    gm.load_state_dict(state)
    ref.load_state_dict(state)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(gm(ids), ref(ids), atol=1e-4, rtol=1e-4)


def test_llama_multi_head_and_other_lengths():
    """kv_heads = heads is plain multi-head attention (Llama 1/2-7B layout); seq_len is a parameter."""
    config = dict(TINY, kv_heads=4)
    spec = nasforge.load(LLAMA, variant="tiny", kv_heads=4, seq_len=9)
    gm = spec.build()
    ref = LlamaForCausalLM(**config).eval()
    state = randomize(ref, seed=2)
    gm.load_state_dict(state)
    ref.load_state_dict(state)
    ids = torch.randint(0, 512, (3, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(gm(ids), ref(ids), atol=1e-4, rtol=1e-4)
    assert spec.check().totals.params == llama_counts(**config, seq=9)[0]


def test_tiny_llama_exports_with_dynamic_batch():
    spec = nasforge.load(LLAMA, variant="tiny")
    gm = spec.build()
    inputs = example_inputs(spec.graph, batch=2)
    program = torch.export.export(gm, inputs, dynamic_shapes=({0: Dim("batch", min=1, max=64)},))
    other = (torch.randint(0, 512, (3, 16), generator=torch.Generator().manual_seed(4)),)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*other), gm(*other))


@pytest.mark.slow
def test_tinyllama_1_1b_builds_with_hf_names_and_runs():
    """The full model (one 1.1B build at a time), run on a short sequence to keep it to seconds."""
    spec = nasforge.load(LLAMA, seq_len=32)
    gm = spec.build()
    assert params_of(gm) == 1_100_048_384
    shapes = {k: tuple(v.shape) for k, v in gm.state_dict().items()}
    assert len(shapes) == 2 + 22 * 9 + 1
    assert shapes["model.embed_tokens.weight"] == shapes["lm_head.weight"] == (32000, 2048)
    assert shapes["model.layers.21.self_attn.k_proj.weight"] == (256, 2048)
    assert shapes["model.layers.21.mlp.down_proj.weight"] == (2048, 5632)
    assert shapes["model.layers.0.post_attention_layernorm.weight"] == shapes["model.norm.weight"] == (2048,)
    with torch.no_grad():
        logits = gm(torch.randint(0, 32000, (1, 32), generator=torch.Generator().manual_seed(0)))
    assert logits.shape == (1, 32, 32000) and torch.isfinite(logits).all()
    del gm


# -- an independent LlamaGen (gpt.py's layout) ----------------------------------------------------------------

def llamagen_rotary_table(grid: int, head_dim: int, prefix: int, base: float = 10000.0) -> torch.Tensor:
    """``[prefix + grid^2, head_dim/2]`` complex rotations: the first head_dim/4 pairs turn with the row, the
    rest with the column, frequencies base^(-2k/(head_dim/2)); zero rows for the condition tokens."""
    freqs = base ** (-torch.arange(0, head_dim // 2, 2, dtype=torch.float64) / (head_dim // 2))
    rows = torch.arange(grid, dtype=torch.float64).repeat_interleave(grid)
    cols = torch.arange(grid, dtype=torch.float64).repeat(grid)
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=-1)
    table = torch.polar(torch.ones_like(angles), angles)
    return torch.cat([torch.zeros(prefix, head_dim // 2, dtype=table.dtype), table])


def rope_interleaved(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """[B, T, H, D] with pairs (2k, 2k + 1) multiplied by ``table[:T]``."""
    z = torch.complex(x[..., 0::2].double(), x[..., 1::2].double()) * table[None, : x.shape[1], None, :]
    return torch.stack([z.real, z.imag], dim=-1).flatten(-2).to(x.dtype)


class GenAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.dim, self.heads = dim, heads
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x, table):
        b, n, _ = x.shape
        q, k, v = (part.view(b, n, self.heads, -1) for part in self.wqkv(x).split(self.dim, dim=-1))
        q, k = rope_interleaved(q, table), rope_interleaved(k, table)
        out = causal_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.wo(out.transpose(1, 2).reshape(b, n, self.dim))


class GenFeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class GenBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.attention = GenAttention(dim, heads)
        self.feed_forward = GenFeedForward(dim, hidden)
        self.attention_norm = RMSNorm(dim, 1e-5)
        self.ffn_norm = RMSNorm(dim, 1e-5)

    def forward(self, x, table):
        x = x + self.attention(self.attention_norm(x), table)
        return x + self.feed_forward(self.ffn_norm(x))


class LlamaGen(nn.Module):
    """LlamaGen's c2i Transformer (training forward, dropout off), written from its description."""

    def __init__(self, vocab, classes, dim, layers, heads, hidden, grid) -> None:
        super().__init__()
        self.cls_embedding = nn.Module()
        self.cls_embedding.embedding_table = nn.Embedding(classes + 1, dim)
        self.tok_embeddings = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(GenBlock(dim, heads, hidden) for _ in range(layers))
        self.norm = RMSNorm(dim, 1e-5)
        self.output = nn.Linear(dim, vocab, bias=False)
        self.table = llamagen_rotary_table(grid, dim // heads, 1)

    def forward(self, idx, cond_idx):
        x = torch.cat([self.cls_embedding.embedding_table(cond_idx)[:, None], self.tok_embeddings(idx)], dim=1)
        for layer in self.layers:
            x = layer(x, self.table)
        return self.output(self.norm(x))


SMALL_GEN = {"vocab": 64, "classes": 10, "dim": 64, "layers": 2, "heads": 4, "grid": 4}


def llamagen_counts(dim, layers, grid, vocab=16384, classes=1000, multiple_of=256) -> tuple[int, int, int]:
    """(SwiGLU width, params, MACs per sequence) of gpt.py's c2i Transformer, by hand."""
    hidden = math.ceil(int(2 * 4 * dim / 3) / multiple_of) * multiple_of
    linear = 4 * dim * dim + 3 * dim * hidden
    params = (classes + 1) * dim + vocab * dim + layers * (linear + 2 * dim) + dim + dim * vocab
    n = grid * grid
    return hidden, params, n * (layers * linear + dim * vocab) + layers * 2 * n * n * dim


@pytest.mark.parametrize("variant, config, params", [
    ("llamagen_b", (768, 12, 16), 110_888_448),
    ("llamagen_b_384", (768, 12, 24), 110_888_448),
    ("llamagen_l", (1024, 24, 16), 342_910_976),
    ("llamagen_xl", (1280, 36, 24), 774_699_520),
    ("llamagen_xxl", (1536, 48, 24), 1_410_972_672),
    ("llamagen_3b", (3200, 24, 24), 3_096_659_200),
])
def test_llamagen_family_counts(variant, config, params):
    totals = nasforge.load(LLAMAGEN, variant=variant).check().totals
    _, want_params, want_macs = llamagen_counts(*config)
    assert totals.params == want_params == params
    assert totals.macs == want_macs


def test_llamagen_b_layout():
    spec = nasforge.load(LLAMAGEN)
    assert llamagen_counts(768, 12, 16)[0] == 2048
    rows = {r.path: (r.params, r.macs) for r in spec.summary(depth=0).rows}
    assert rows["cls_embedding.embedding_table"] == (1001 * 768, 0)
    assert rows["layers.0.attention.wqkv"] == (768 * 2304, 256 * 768 * 2304)
    assert rows["layers.0.attention.sdpa"] == (0, 12 * 256 * 256 * 128)
    assert rows["layers.11.feed_forward.w2"] == (2048 * 768, 256 * 2048 * 768)
    assert spec.graph.nodes["output"].outputs[0].concrete_shape({"B": 1}) == (1, 256, 16384)
    assert spec.graph.nodes["layers.0.attention.rope_q"].attrs["grid"] == [16, 16]
    # dropout at the training script's 0.1, only in training
    assert {spec.graph.nodes[p].op for p in ("tok_dropout", "layers.3.attention.resid_dropout",
                                             "layers.3.feed_forward.ffn_dropout")} == {"dropout"}


def test_llamagen_equals_an_independent_llamagen():
    overrides = dict(SMALL_GEN, multiple_of=32)
    spec = nasforge.load(LLAMAGEN, **overrides)
    hidden = llamagen_counts(64, 2, 4, vocab=64, classes=10, multiple_of=32)[0]
    assert hidden == 192
    gm = spec.build()
    ref = LlamaGen(**SMALL_GEN, hidden=hidden).eval()
    state = randomize(ref)
    assert {k: v.shape for k, v in gm.state_dict().items()} == {k: v.shape for k, v in state.items()}
    assert params_of(gm) == params_of(ref) == spec.check().totals.params
    gm.load_state_dict(state)
    ref.load_state_dict(state)
    gen = torch.Generator().manual_seed(5)
    idx, cond = torch.randint(0, 64, (2, 15), generator=gen), torch.randint(0, 11, (2,), generator=gen)
    with torch.no_grad():
        out = gm(idx, cond)
        torch.testing.assert_close(out, ref(idx, cond), atol=1e-4, rtol=1e-4)
    assert out.shape == (2, 16, 64)
    # the condition reaches the image tokens (through the values: the class token's rotary rows are zero)
    with torch.no_grad():
        other = gm(idx, (cond + 1) % 11)
    assert not torch.allclose(other[:, 1:], out[:, 1:])


def test_small_llamagen_flop_counter_and_export():
    spec = nasforge.load(LLAMAGEN, **dict(SMALL_GEN, multiple_of=32))
    gm = spec.build()
    totals = spec.check().totals
    inputs = example_inputs(spec.graph, batch=2)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        gm(*example_inputs(spec.graph, batch=1))
    assert counter.get_total_flops() == 2 * totals.macs
    batch = Dim("batch", min=1, max=64)
    program = torch.export.export(gm, inputs, dynamic_shapes=({0: batch}, {0: batch}))
    other = example_inputs(spec.graph, batch=3, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*other), gm(*other))
