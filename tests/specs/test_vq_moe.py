"""VQGAN's tokenizer (specs/models/vqgan.yaml) and the Mixtral-style MoE transformer
(specs/models/moe_transformer.yaml).

The generic harness (``test_model_specs.py``) loads, checks, builds, runs and exports both and holds every
variant to its ``paper:`` numbers. Here: the exact counts of every member (parameters equal to the
reference implementations, taming-transformers' VQModel and HF transformers' MixtralForCausalLM, which the
notes record), hand counts of the layers, the active-expert MACs next to the dense ones, and numerical
comparisons of small configurations of each spec with independent PyTorch implementations of the
reference layouts written here (same state_dict keys, loaded with the same random weights), including the
VQGAN code indices.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nasforge
from nasforge.compiler.analysis import concrete_context
from nasforge.ops import get_op

ROOT = Path(__file__).resolve().parents[2]
VQGAN = ROOT / "specs" / "models" / "vqgan.yaml"
MOE = ROOT / "specs" / "models" / "moe_transformer.yaml"


def active_macs(spec) -> int:
    """The spec's MACs with each moe node counted at its k active experts (the papers' convention)."""
    total = spec.check().totals.macs
    op = get_op("moe")
    for node in spec.graph:
        if node.op == "moe":
            ctx = concrete_context(spec.graph, node, {"B": 1})
            total += op.active_macs(ctx) - op.macs(ctx)
    return total


# -- exact counts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path, variant, params, macs", [
    pytest.param(VQGAN, "vqgan_imagenet_f16_1024", 72_141_699, 195_655_892_992, id="vqgan_f16_1024"),
    pytest.param(VQGAN, "vqgan_imagenet_f16_16384", 76_073_859, 196_662_525_952, id="vqgan_f16_16384"),
    pytest.param(VQGAN, "vqgan_openimages_f8_16384", 67_717_295, 349_322_641_408, id="vqgan_f8_16384"),
    pytest.param(MOE, "mixtral_tiny", 39_069_952, 8_038_383_616, id="mixtral_tiny"),
    pytest.param(MOE, "mixtral_8x7b", 46_702_792_704, 11_939_472_211_968, id="mixtral_8x7b"),
])
def test_exact_counts(path, variant, params, macs):
    totals = nasforge.load(path, variant=variant).check().totals
    assert (totals.params, totals.macs) == (params, macs)


def test_vqgan_parts_match_the_reference_modules():
    """numel per VQModel submodule, as instantiating taming-transformers' Encoder/Decoder gives."""
    rows = nasforge.load(VQGAN).summary().rows
    part = {name: sum(r.params for r in rows if r.path.split(".")[0] == name)
            for name in ("encoder", "quant_conv", "quantize", "post_quant_conv", "decoder")}
    assert part == {"encoder": 29_298_176, "quant_conv": 65_792, "quantize": 262_144,
                    "post_quant_conv": 65_792, "decoder": 42_449_795}
    # the quantizer's MACs are the distance matmul of the 16x16 latents against 1024 codes
    assert {r.path: r.macs for r in rows}["quantize"] == 256 * 1024 * 256
    # seven single-head attention blocks at 16x16 with 512 channels: 2 x 256^2 x 512 each
    attention = sum(r.macs for r in rows if r.path.endswith(".attend"))
    assert attention == 7 * 2 * 256 * 256 * 512


def test_vqgan_shapes():
    spec = nasforge.load(VQGAN)
    shape = {n.path: tuple(n.outputs[0].concrete_shape({"B": 1})) for n in spec.graph}
    assert shape["encoder.conv_out"] == (1, 256, 16, 16)
    assert shape["encoder.down.3.downsample.conv"] == (1, 256, 16, 16)
    assert tuple(spec.graph.nodes["quantize"].outputs[1].concrete_shape({"B": 1})) == (1, 16, 16)
    assert spec.graph.nodes["quantize"].outputs[1].dtype == "int64"
    assert shape["decoder.up.1.upsample.conv"] == (1, 128, 256, 256)
    assert shape["decoder.conv_out"] == (1, 3, 256, 256)
    attention_paths = sorted({p.rsplit(".", 1)[0] for p in shape if p.endswith(".attend")})
    assert attention_paths == ["decoder.mid.attn_1", "decoder.up.4.attn.0", "decoder.up.4.attn.1",
                               "decoder.up.4.attn.2", "encoder.down.4.attn.0", "encoder.down.4.attn.1",
                               "encoder.mid.attn_1"]


def test_mixtral_counts_by_hand():
    d, h, e, kv, layers, vocab = 4096, 14336, 8, 1024, 32, 32000
    per_layer = (2 * d * d + 2 * d * kv) + e * d + e * 3 * d * h + 2 * d
    assert per_layer == 1_451_270_144
    assert 2 * vocab * d + layers * per_layer + d == 46_702_792_704
    # the paper's "13B active parameters": the router and 2 of 8 experts per layer
    active = 46_702_792_704 - layers * 6 * 3 * d * h
    assert active == 12_879_925_248
    big = nasforge.load(MOE, variant="mixtral_8x7b")
    assert active_macs(big) == 256 * (active - vocab * d - (2 * layers + 1) * d) + layers * 2 * 256 ** 2 * d
    assert active_macs(big) == 3_280_818_143_232
    tiny = nasforge.load(MOE)
    assert active_macs(tiny) == 3_810_525_184


def test_mixtral_parameter_names_are_hf():
    rows = {r.path: r.params for r in nasforge.load(MOE).summary().rows if r.params}
    names = set(nasforge.load(MOE, layers=1).build().state_dict())
    assert names == {
        "model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
        "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight",
        "model.layers.0.post_attention_layernorm.weight", "model.layers.0.mlp.gate.weight",
        "model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj",
        "model.norm.weight", "lm_head.weight"}
    assert rows["model.layers.3.mlp"] == 8 * 256 + 8 * 3 * 256 * 896


# -- VQGAN against an independent implementation of the reference layout -----------------------------

def group_norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6)


class RefResBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = group_norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(self.norm1(x) * torch.sigmoid(self.norm1(x)))
        h = self.conv2(self.norm2(h) * torch.sigmoid(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class RefAttn(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = group_norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, hh, ww = x.shape
        n = self.norm(x)
        q = self.q(n).reshape(b, c, -1).permute(0, 2, 1)
        k = self.k(n).reshape(b, c, -1)
        w = torch.softmax(torch.bmm(q, k) / math.sqrt(c), dim=2)
        h = torch.bmm(self.v(n).reshape(b, c, -1), w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(h)


class RefVQModel(nn.Module):
    """taming-transformers' VQModel layout (Encoder, quant_conv, quantize, post_quant_conv, Decoder)."""

    def __init__(self, ch, ch_mult, z, embed_dim, n_embed, resolution, attn_res) -> None:
        super().__init__()
        levels = len(ch_mult)
        self.encoder = enc = nn.Module()
        enc.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        enc.down = nn.ModuleList()
        cin, res = ch, resolution
        for lvl, m in enumerate(ch_mult):
            down = nn.Module()
            down.block = nn.ModuleList([RefResBlock(cin if j == 0 else ch * m, ch * m) for j in range(2)])
            down.attn = nn.ModuleList([RefAttn(ch * m) for _ in range(2)] if res == attn_res else [])
            if lvl != levels - 1:
                down.downsample = nn.Module()
                down.downsample.conv = nn.Conv2d(ch * m, ch * m, 3, stride=2)
                res //= 2
            enc.down.append(down)
            cin = ch * m
        enc.mid = self._mid(cin)
        enc.norm_out, enc.conv_out = group_norm(cin), nn.Conv2d(cin, z, 3, padding=1)
        self.quant_conv = nn.Conv2d(z, embed_dim, 1)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(n_embed, embed_dim)
        self.post_quant_conv = nn.Conv2d(embed_dim, z, 1)
        self.decoder = dec = nn.Module()
        dec.conv_in = nn.Conv2d(z, cin, 3, padding=1)
        dec.mid = self._mid(cin)
        ups = []
        for lvl in reversed(range(levels)):
            up = nn.Module()
            out = ch * ch_mult[lvl]
            up.block = nn.ModuleList([RefResBlock(cin if j == 0 else out, out) for j in range(3)])
            up.attn = nn.ModuleList([RefAttn(out) for _ in range(3)] if res == attn_res else [])
            if lvl != 0:
                up.upsample = nn.Module()
                up.upsample.conv = nn.Conv2d(out, out, 3, padding=1)
                res *= 2
            ups.insert(0, up)
            cin = out
        dec.up = nn.ModuleList(ups)
        dec.norm_out, dec.conv_out = group_norm(cin), nn.Conv2d(cin, 3, 3, padding=1)

    @staticmethod
    def _mid(c: int) -> nn.Module:
        mid = nn.Module()
        mid.block_1, mid.attn_1, mid.block_2 = RefResBlock(c, c), RefAttn(c), RefResBlock(c, c)
        return mid

    @staticmethod
    def _run_mid(mid, h):
        return mid.block_2(mid.attn_1(mid.block_1(h)))

    def forward(self, x):
        enc = self.encoder
        h = enc.conv_in(x)
        for down in enc.down:
            for j, block in enumerate(down.block):
                h = block(h)
                if len(down.attn):
                    h = down.attn[j](h)
            if hasattr(down, "downsample"):
                h = down.downsample.conv(F.pad(h, (0, 1, 0, 1)))
        h = self._run_mid(enc.mid, h)
        h = enc.conv_out(F.silu(enc.norm_out(h)))
        z = self.quant_conv(h).permute(0, 2, 3, 1)
        flat = z.reshape(-1, z.shape[-1])
        codes = torch.cdist(flat.double(), self.quantize.embedding.weight.double()).argmin(1)
        q = self.quantize.embedding(codes).view(z.shape).permute(0, 3, 1, 2)
        dec = self.decoder
        h = self._run_mid(dec.mid, dec.conv_in(self.post_quant_conv(q)))
        for up in reversed(dec.up):
            for j, block in enumerate(up.block):
                h = block(h)
                if len(up.attn):
                    h = up.attn[j](h)
            if hasattr(up, "upsample"):
                h = up.upsample.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return dec.conv_out(F.silu(dec.norm_out(h))), codes.view(z.shape[:-1])


SMALL_VQGAN = {"ch": 32, "ch_mult": [1, 2, 2], "z_channels": 32, "embed_dim": 8, "n_embed": 24,
               "resolution": 16, "attn_resolution": 4}


def randomize(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: (1.0 if "norm" in k and k.endswith("weight") else 0.0) + 0.1 * torch.randn(v.shape, generator=gen)
            for k, v in module.state_dict().items()}


def test_vqgan_equals_an_independent_taming_layout():
    text = VQGAN.read_text().replace("../blocks/vqgan.yaml", str(ROOT / "specs" / "blocks" / "vqgan.yaml"))
    text = text.replace("outputs: {reconstruction: decoder}", 'outputs: {reconstruction: decoder, codes: "quantize:1"}')
    spec = nasforge.loads(text, "vqgan_small.yaml", **SMALL_VQGAN)
    gm = spec.build().eval()
    ref = RefVQModel(32, [1, 2, 2], 32, 8, 24, 16, 4).eval()
    state = randomize(ref, seed=0)
    assert {k: v.shape for k, v in gm.state_dict().items()} == {k: v.shape for k, v in state.items()}
    gm.load_state_dict(state)
    ref.load_state_dict(state)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        image, codes = gm(x)
        ref_image, ref_codes = ref(x)
    assert codes.shape == (2, 4, 4) and codes.dtype == torch.int64
    assert torch.equal(codes, ref_codes)
    assert len(codes.unique()) > 1
    torch.testing.assert_close(image, ref_image, rtol=1e-4, atol=1e-5)


# -- the MoE transformer against an independent Mixtral implementation -------------------------------

def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class RefMixtral(nn.Module):
    """HF MixtralForCausalLM's layout and math: RMSNorm, rotary (rotate-half) GQA, top-k SwiGLU experts
    routed token by token (only chosen experts run), an untied LM head."""

    def __init__(self, vocab, d, hidden, layers, heads, kv, experts, k, theta=1e6, eps=1e-5) -> None:
        super().__init__()
        self.heads, self.kv, self.k, self.theta, self.eps = heads, kv, k, theta, eps
        self.hd = d // heads
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(vocab, d)
        self.model.layers = nn.ModuleList()
        for _ in range(layers):
            layer = nn.Module()
            layer.input_layernorm = nn.Module()
            layer.input_layernorm.weight = nn.Parameter(torch.ones(d))
            layer.self_attn = nn.Module()
            for name, out in (("q_proj", d), ("k_proj", kv * self.hd), ("v_proj", kv * self.hd)):
                setattr(layer.self_attn, name, nn.Linear(d, out, bias=False))
            layer.self_attn.o_proj = nn.Linear(d, d, bias=False)
            layer.post_attention_layernorm = nn.Module()
            layer.post_attention_layernorm.weight = nn.Parameter(torch.ones(d))
            layer.mlp = nn.Module()
            layer.mlp.gate = nn.Linear(d, experts, bias=False)
            layer.mlp.experts = nn.Module()
            layer.mlp.experts.gate_up_proj = nn.Parameter(torch.zeros(experts, 2 * hidden, d))
            layer.mlp.experts.down_proj = nn.Parameter(torch.zeros(experts, d, hidden))
            self.model.layers.append(layer)
        self.model.norm = nn.Module()
        self.model.norm.weight = nn.Parameter(torch.ones(d))
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def rms(self, norm, x):
        return norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def attention(self, attn, x):
        b, t, _ = x.shape
        q = attn.q_proj(x).view(b, t, self.heads, self.hd).transpose(1, 2)
        k = attn.k_proj(x).view(b, t, self.kv, self.hd).transpose(1, 2)
        v = attn.v_proj(x).view(b, t, self.kv, self.hd).transpose(1, 2)
        inv = 1.0 / self.theta ** (torch.arange(0, self.hd, 2).float() / self.hd)
        angles = torch.arange(t).float()[:, None] * inv[None]
        cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(self.heads // self.kv, dim=1)
        v = v.repeat_interleave(self.heads // self.kv, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.hd)
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        out = scores.softmax(-1) @ v
        return attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    def moe(self, mlp, x):
        tokens = x.reshape(-1, x.shape[-1])
        hidden = mlp.experts.down_proj.shape[-1]
        out = torch.zeros_like(tokens)
        weights, chosen = F.softmax(mlp.gate(tokens), dim=-1).topk(self.k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        for e in range(mlp.gate.out_features):
            rows, slot = torch.where(chosen == e)
            gate_up = tokens[rows] @ mlp.experts.gate_up_proj[e].T
            h = F.silu(gate_up[:, :hidden]) * gate_up[:, hidden:]
            out.index_add_(0, rows, (h @ mlp.experts.down_proj[e].T) * weights[rows, slot, None])
        return out.view(x.shape)

    def forward(self, ids):
        h = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            h = h + self.attention(layer.self_attn, self.rms(layer.input_layernorm, h))
            h = h + self.moe(layer.mlp, self.rms(layer.post_attention_layernorm, h))
        return self.lm_head(self.rms(self.model.norm, h))


SMALL_MOE = {"vocab_size": 50, "hidden_size": 32, "intermediate_size": 48, "layers": 2, "heads": 4,
             "kv_heads": 2, "seq_len": 10}


def test_moe_transformer_equals_an_independent_mixtral():
    spec = nasforge.load(MOE, **SMALL_MOE)
    gm = spec.build().eval()
    ref = RefMixtral(50, 32, 48, 2, 4, 2, 8, 2).eval()
    gen = torch.Generator().manual_seed(0)
    state = {k: (1.0 + 0.1 * torch.randn(v.shape, generator=gen)) if "norm" in k
             else 0.2 * torch.randn(v.shape, generator=gen) for k, v in ref.state_dict().items()}
    assert {k: v.shape for k, v in gm.state_dict().items()} == {k: v.shape for k, v in state.items()}
    gm.load_state_dict(state)
    ref.load_state_dict(state)
    ids = torch.randint(0, 50, (2, 10), generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(gm(ids), ref(ids), rtol=1e-4, atol=1e-5)
    totals = spec.check().totals
    assert totals.params == sum(p.numel() for p in ref.parameters())


def test_moe_transformer_is_causal():
    gm = nasforge.load(MOE, **SMALL_MOE).build().eval()
    ids = torch.randint(0, 50, (1, 10), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[0, 7:] = (ids[0, 7:] + 1) % 50
    with torch.no_grad():
        a, b = gm(ids), gm(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])
