"""The classic text transformers: the Transformer (fairseq layout), BERT (HF BertModel) and GPT-2 (HF
GPT2LMHeadModel).

The generic harness (test_model_specs.py) holds every member to its paper numbers; here the counts are
rebuilt by hand layer by layer, the masks are checked for what they promise (causal: a later token never
changes an earlier output; padding: padded keys change nothing), tied weights are shown to be one tensor,
and tiny variants are compared with small independent PyTorch implementations of the reference layouts,
written below with explicit softmax attention, given the same weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.export import Dim

import nasforge

ROOT = Path(__file__).resolve().parents[2]
GPT2 = ROOT / "specs" / "models" / "gpt2.yaml"
BERT = ROOT / "specs" / "models" / "bert.yaml"
TRANSFORMER = ROOT / "specs" / "models" / "transformer_base.yaml"

GPT2_TINY = {"vocab": 97, "context": 24, "seq_len": 16, "dim": 32, "depth": 2, "heads": 4}
BERT_TINY = {"vocab": 97, "positions": 24, "seq_len": 12, "dim": 32, "depth": 2, "heads": 4, "ffn": 64}
TRANSFORMER_TINY = {"vocab": 97, "d_model": 32, "ffn": 64, "heads": 4, "layers": 2, "src_len": 9, "tgt_len": 7}


def layer_params(spec, prefix: str) -> int:
    """Parameters of the nodes under ``prefix`` (a layer), from the spec's per-node analysis."""
    return sum(r.params for r in spec.summary().rows if r.path.startswith(prefix + "."))


def randomized(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Move every float tensor of the module off its initial value (LayerNorms included); return the
    state_dict it then has (a shared module's keys all read the one tensor)."""
    gen = torch.Generator().manual_seed(seed)
    module.load_state_dict({k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                            for k, v in module.state_dict().items()})
    return {k: v.clone() for k, v in module.state_dict().items()}


def ids(shape: tuple[int, ...], high: int, seed: int, low: int = 0) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed))


# -- independent reference implementations --------------------------------------------------------------

def heads_attention(q, k, v, heads: int, bias=None):
    """softmax(q k^T / sqrt(d) + bias) v per head, on [B, N, C] projections; bias broadcasts to [B, h, N, M]."""
    b, n, c = q.shape
    split = lambda t: t.reshape(b, t.shape[1], heads, c // heads).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(c // heads)
    if bias is not None:
        scores = scores + bias
    return (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, n, c)


def causal_bias(n: int) -> torch.Tensor:
    return torch.full((n, n), torch.finfo(torch.float32).min).triu(1)


class SeparateProjections(nn.Module):
    """Multi-head attention with separate q/k/v/out projections (fairseq's names)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x, memory, bias=None):
        return self.out_proj(heads_attention(self.q_proj(x), self.k_proj(memory), self.v_proj(memory), self.heads,
                                             bias))


def paper_positions(n: int, d: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...), Section 3.5 of the paper."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    angle = pos / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    table = torch.zeros(n, d, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = angle.sin(), angle.cos()
    return table.float()


class RefEncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.self_attn = SeparateProjections(d, heads)
        self.self_attn_layer_norm, self.final_layer_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x, key_bias):
        x = self.self_attn_layer_norm(x + self.self_attn(x, x, key_bias))
        return self.final_layer_norm(x + self.fc2(torch.relu(self.fc1(x))))


class RefDecoderLayer(RefEncoderLayer):
    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__(d, heads, ffn)
        self.encoder_attn = SeparateProjections(d, heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(d)

    def forward(self, x, memory, key_bias):
        x = self.self_attn_layer_norm(x + self.self_attn(x, x, causal_bias(x.shape[1])))
        x = self.encoder_attn_layer_norm(x + self.encoder_attn(x, memory, key_bias))
        return self.final_layer_norm(x + self.fc2(torch.relu(self.fc1(x))))


class RefTransformer(nn.Module):
    """fairseq's TransformerModel (post-norm, transformer_wmt_en_de layout) with the paper's positions."""

    def __init__(self, vocab: int, d: int, heads: int, ffn: int, layers: int, pad: int = 1,
                 src_vocab: int | None = None) -> None:
        super().__init__()
        self.pad, self.d = pad, d
        self.encoder, self.decoder = nn.Module(), nn.Module()
        self.decoder.embed_tokens = nn.Embedding(vocab, d, padding_idx=pad)
        self.encoder.embed_tokens = (self.decoder.embed_tokens if src_vocab is None
                                     else nn.Embedding(src_vocab, d, padding_idx=pad))
        self.encoder.layers = nn.ModuleList(RefEncoderLayer(d, heads, ffn) for _ in range(layers))
        self.decoder.layers = nn.ModuleList(RefDecoderLayer(d, heads, ffn) for _ in range(layers))

    def embed(self, table: nn.Embedding, tokens):
        return table(tokens) * math.sqrt(self.d) + paper_positions(tokens.shape[1], self.d)

    def forward(self, src, tgt):
        key_bias = torch.zeros(src.shape).masked_fill(src == self.pad, float("-inf"))[:, None, None, :]
        x = self.embed(self.encoder.embed_tokens, src)
        for layer in self.encoder.layers:
            x = layer(x, key_bias)
        y = self.embed(self.decoder.embed_tokens, tgt)
        for layer in self.decoder.layers:
            y = layer(y, x, key_bias)
        return y @ self.decoder.embed_tokens.weight.T


class RefBertLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        for name in ("query", "key", "value"):
            setattr(self.attention.self, name, nn.Linear(d, d))
        self.attention.output = nn.Module()
        self.attention.output.dense, self.attention.output.LayerNorm = nn.Linear(d, d), nn.LayerNorm(d, eps=1e-12)
        self.intermediate, self.output = nn.Module(), nn.Module()
        self.intermediate.dense = nn.Linear(d, ffn)
        self.output.dense, self.output.LayerNorm = nn.Linear(ffn, d), nn.LayerNorm(d, eps=1e-12)

    def forward(self, x, bias):
        s = self.attention.self
        a = self.attention.output.dense(heads_attention(s.query(x), s.key(x), s.value(x), self.heads, bias))
        x = self.attention.output.LayerNorm(a + x)
        return self.output.LayerNorm(self.output.dense(nn.functional.gelu(self.intermediate.dense(x))) + x)


class RefBert(nn.Module):
    """HF's BertModel / BertForMaskedLM layout; the padding mask as HF's additive extended mask."""

    def __init__(self, vocab: int, positions: int, d: int, heads: int, ffn: int, layers: int, head: str) -> None:
        super().__init__()
        self.head = head
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(vocab, d, padding_idx=0)
        self.embeddings.position_embeddings = nn.Embedding(positions, d)
        self.embeddings.token_type_embeddings = nn.Embedding(2, d)
        self.embeddings.LayerNorm = nn.LayerNorm(d, eps=1e-12)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(RefBertLayer(d, heads, ffn) for _ in range(layers))
        if head == "pooler":
            self.pooler = nn.Module()
            self.pooler.dense = nn.Linear(d, d)
        if head == "mlm":
            self.transform = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d, eps=1e-12))
            self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, input_ids, attention_mask, token_type_ids):
        e = self.embeddings
        x = e.word_embeddings(input_ids) + e.token_type_embeddings(token_type_ids)
        x = e.LayerNorm(x + e.position_embeddings.weight[: input_ids.shape[1]])
        bias = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in self.encoder.layer:
            x = layer(x, bias)
        if self.head == "pooler":
            return torch.tanh(self.pooler.dense(x[:, 0]))
        if self.head == "mlm":
            return self.transform(x) @ e.word_embeddings.weight.T + self.bias
        return x


class RefGPT2Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn, self.mlp = nn.Module(), nn.Module()
        self.attn.c_attn, self.attn.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        q, k, v = self.attn.c_attn(self.ln_1(x)).chunk(3, dim=-1)
        x = x + self.attn.c_proj(heads_attention(q, k, v, self.heads, causal_bias(x.shape[1])))
        return x + self.mlp.c_proj(nn.functional.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))


class RefGPT2(nn.Module):
    """HF's GPT2LMHeadModel layout (nn.Linear where HF has Conv1D), the LM head being wte."""

    def __init__(self, vocab: int, context: int, d: int, heads: int, layers: int) -> None:
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.wte, self.transformer.wpe = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.transformer.h = nn.ModuleList(RefGPT2Block(d, heads) for _ in range(layers))
        self.transformer.ln_f = nn.LayerNorm(d)

    def forward(self, input_ids):
        t = self.transformer
        x = t.wte(input_ids) + t.wpe.weight[: input_ids.shape[1]]
        for block in t.h:
            x = block(x)
        return t.ln_f(x) @ t.wte.weight.T


# -- weight maps: reference state_dict -> spec state_dict ---------------------------------------------------

def fused(ref: dict, spec_keys, pieces: dict[str, tuple[str, ...]], renames: dict[str, str]) -> dict:
    """Each spec key from the reference state: a fused projection (qkv, kv, ...) concatenates its pieces,
    other keys are the reference's after ``renames`` (substring replacements, in order)."""
    out = {}
    for key in spec_keys:
        base, name, kind = key.rsplit(".", 2) if key.count(".") >= 2 else ("", *key.rsplit(".", 1))
        if name in pieces:
            out[key] = torch.cat([ref[f"{base}.{p}.{kind}"] for p in pieces[name]])
            continue
        src = key
        for old, new in renames.items():
            src = src.replace(old, new)
        out[key] = ref[src]
    return out


def load_transformer(gm, ref: RefTransformer) -> None:
    state = randomized(ref)
    pieces = {"qkv": ("q_proj", "k_proj", "v_proj"), "kv": ("k_proj", "v_proj"), "q": ("q_proj",)}
    renames = {".proj.": ".out_proj.", "src_embed_tokens": "embed_tokens", "output_projection": "embed_tokens"}
    gm.load_state_dict(fused(state, gm.state_dict(), pieces, renames))


def load_bert(gm, ref: RefBert) -> None:
    state = randomized(ref)
    state["embeddings.position_embeddings.pos"] = state["embeddings.position_embeddings.weight"][None]
    mlm = {"cls.predictions.transform.dense": "transform.0", "cls.predictions.transform.LayerNorm": "transform.2",
           "cls.predictions.decoder.weight": "embeddings.word_embeddings.weight",
           "cls.predictions.decoder.bias": "bias",
           "attention.self.proj": "attention.output.dense"}
    gm.load_state_dict(fused(state, gm.state_dict(), {"qkv": ("query", "key", "value")}, mlm))


def load_gpt2(gm, ref: RefGPT2) -> None:
    state = randomized(ref)
    state["transformer.wpe.pos"] = state["transformer.wpe.weight"][None]
    gm.load_state_dict(fused(state, gm.state_dict(), {}, {"attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
                                                          "lm_head.weight": "transformer.wte.weight"}))


# -- counts ---------------------------------------------------------------------------------------------------

def test_gpt2_counts_by_hand():
    spec = nasforge.load(GPT2)
    d, v, n = 768, 50257, 1024
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    assert block == layer_params(spec, "transformer.h.0") == layer_params(spec, "transformer.h.11") == 7_087_872
    rows = {r.path: r.params for r in spec.summary().rows}
    assert rows["transformer.wte"] == v * d and rows["transformer.wpe"] == 1024 * d
    assert rows["lm_head"] == 0                                 # its weight is wte's, counted there
    totals = spec.check().totals
    assert totals.params == v * d + 1024 * d + 12 * block + 2 * d == 124_439_808
    linear = n * (3 * d * d + d * d + 2 * 4 * d * d)            # qkv, proj, c_fc, c_proj
    attention = 2 * n * n * d                                   # Q K^T and A V, in full under the causal mask
    assert totals.macs == 12 * (linear + attention) + n * d * v == 145_824_153_600


def test_bert_counts_by_hand():
    spec = nasforge.load(BERT)
    d, f, v, n = 768, 3072, 30522, 512
    layer = (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * f + f) + (f * d + d) + 2 * d
    assert layer == layer_params(spec, "encoder.layer.0") == layer_params(spec, "encoder.layer.11") == 7_087_872
    embeddings = v * d + 512 * d + 2 * d + 2 * d
    assert layer_params(spec, "embeddings") == embeddings == 23_837_184
    assert layer_params(spec, "pooler") == d * d + d == 590_592
    totals = spec.check().totals
    assert totals.params == embeddings + 12 * layer + d * d + d == 109_482_240
    assert totals.macs == 12 * (n * (4 * d * d + 2 * d * f) + 2 * n * n * d) + d * d == 48_318_971_904

    mlm = nasforge.load(BERT, head="mlm")
    head = (d * d + d) + 2 * d + v                              # transform.dense, LayerNorm, decoder bias
    assert layer_params(mlm, "cls.predictions") == head
    assert mlm.check().totals.params == embeddings + 12 * layer + head == 109_514_298
    assert mlm.check().totals.macs - totals.macs == n * d * d + n * d * v - d * d
    bare = nasforge.load(BERT, head="none")
    assert bare.check().totals.params == embeddings + 12 * layer == 108_891_648
    assert {r.path.split(".")[0] for r in bare.summary().rows} == {"extended_attention_mask", "embeddings", "encoder"}


def test_transformer_counts_by_hand():
    spec = nasforge.load(TRANSFORMER)
    d, f, v, s, t = 512, 2048, 32768, 128, 128
    attention = 4 * (d * d + d)
    ffn = d * f + f + f * d + d
    encoder_layer, decoder_layer = attention + ffn + 2 * 2 * d, 2 * attention + ffn + 3 * 2 * d
    assert encoder_layer == layer_params(spec, "encoder.layers.0") == 3_152_384
    assert decoder_layer == layer_params(spec, "decoder.layers.5") == 4_204_032
    rows = {r.path: r.params for r in spec.summary().rows}
    assert rows["decoder.embed_tokens"] == v * d and rows["encoder.embed_tokens"] == 0
    assert rows["decoder.output_projection"] == 0
    totals = spec.check().totals
    assert totals.params == 6 * (encoder_layer + decoder_layer) + v * d == 60_915_712
    encoder_macs = s * 4 * d * d + 2 * s * s * d + s * 2 * d * f
    decoder_macs = (t * 4 * d * d + 2 * t * t * d) + (2 * t * d * d + 2 * s * d * d + 2 * t * s * d) + t * 2 * d * f
    assert totals.macs == 6 * (encoder_macs + decoder_macs) + t * d * v == 8_086_618_112
    # the paper's 37,000-token vocabulary would give 63.1M, not its 65M
    assert 6 * (encoder_layer + decoder_layer) + 37_000 * d == 63_082_496
    big = nasforge.load(TRANSFORMER, variant="transformer_big").check().totals
    d, f = 1024, 4096
    attention, ffn = 4 * (d * d + d), d * f + f + f * d + d
    assert big.params == 6 * (attention + ffn + 4 * d) + 6 * (2 * attention + ffn + 6 * d) + v * d == 209_911_808


def test_unshared_embeddings_give_the_source_its_own_table():
    shared = nasforge.load(TRANSFORMER).check().totals.params
    spec = nasforge.load(TRANSFORMER, shared_embeddings=False, src_vocab=1000)
    assert spec.check().totals.params == shared + 1000 * 512
    assert {"encoder.src_embed_tokens"} <= set(spec.graph.nodes) and "encoder.embed_tokens" not in spec.graph.nodes
    with pytest.raises(nasforge.SpecError) as info:      # one shared table needs one vocabulary
        nasforge.load(TRANSFORMER, src_vocab=1000).check()
    assert "tied parameters have different shapes" in info.value.message


# -- the same network as an independent implementation -------------------------------------------------------

@pytest.mark.parametrize("shared", [True, False], ids=["shared", "unshared"])
def test_transformer_equals_an_independent_fairseq_layout(shared: bool):
    over = {} if shared else {"shared_embeddings": False, "src_vocab": 50}
    gm = nasforge.load(TRANSFORMER, **TRANSFORMER_TINY, **over).build()
    ref = RefTransformer(97, 32, 4, 64, 2, src_vocab=None if shared else 50).eval()
    load_transformer(gm, ref)
    src, tgt = ids((3, 9), 50, 1), ids((3, 7), 97, 2)
    src[0, 6:] = 1                                           # right-padded sources (pad = 1)
    src[2, 2:] = 1
    with torch.no_grad():
        torch.testing.assert_close(gm(src, tgt), ref(src, tgt), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("head", ["pooler", "mlm", "none"])
def test_bert_equals_an_independent_hf_layout(head: str):
    gm = nasforge.load(BERT, **BERT_TINY, head=head).build()
    ref = RefBert(97, 24, 32, 4, 64, 2, head).eval()
    load_bert(gm, ref)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, 8:] = 0
    mask[2, 3:] = 0
    args = (ids((3, 12), 97, 1), mask, ids((3, 12), 2, 2))
    with torch.no_grad():
        torch.testing.assert_close(gm(*args), ref(*args), rtol=1e-4, atol=1e-4)


def test_gpt2_equals_an_independent_hf_layout():
    gm = nasforge.load(GPT2, **GPT2_TINY).build()
    ref = RefGPT2(97, 24, 32, 4, 2).eval()
    load_gpt2(gm, ref)
    x = ids((2, 16), 97, 1)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), ref(x), rtol=1e-4, atol=1e-4)


# -- masks ----------------------------------------------------------------------------------------------------

def test_gpt2_is_causal():
    gm = nasforge.load(GPT2, **GPT2_TINY).build()
    x = ids((2, 16), 97, 3)
    y = x.clone()
    y[:, 10] = (x[:, 10] + 1) % 97
    with torch.no_grad():
        a, b = gm(x), gm(y)
    torch.testing.assert_close(a[:, :10], b[:, :10])          # positions before the change see none of it
    assert (a[:, 10:] - b[:, 10:]).abs().amax(-1).min() > 1e-4   # every later position does


def test_transformer_decoder_is_causal_and_reads_the_whole_source():
    gm = nasforge.load(TRANSFORMER, **TRANSFORMER_TINY).build()
    src, tgt = ids((2, 9), 97, 4, low=2), ids((2, 7), 97, 5, low=2)
    later = tgt.clone()
    later[:, 4] = (tgt[:, 4] + 1) % 95 + 2
    source = src.clone()
    source[:, -1] = (src[:, -1] + 1) % 95 + 2
    with torch.no_grad():
        base, changed_tgt, changed_src = gm(src, tgt), gm(src, later), gm(source, tgt)
    torch.testing.assert_close(base[:, :4], changed_tgt[:, :4])
    assert (base[:, 4:] - changed_tgt[:, 4:]).abs().amax(-1).min() > 1e-4
    assert (base - changed_src).abs().amax(-1).min() > 1e-4  # cross-attention sees the last source token


def test_bert_padding_mask_hides_the_padding():
    short = nasforge.load(BERT, **{**BERT_TINY, "seq_len": 8}, head="none").build()
    long = nasforge.load(BERT, **BERT_TINY, head="none").build()
    long.load_state_dict(short.state_dict())
    x, types = ids((2, 12), 97, 6), ids((2, 12), 2, 7)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[:, 8:] = 0
    other = x.clone()
    other[:, 8:] = (x[:, 8:] + 1) % 97
    with torch.no_grad():
        padded = long(x, mask, types)
        torch.testing.assert_close(padded[:, :8], short(x[:, :8], mask[:, :8], types[:, :8]))
        torch.testing.assert_close(long(other, mask, types)[:, :8], padded[:, :8])
        unmasked = long(other, torch.ones_like(mask), types)
    assert (unmasked[:, :8] - padded[:, :8]).abs().max() > 1e-3  # without the mask the padding is read


def test_transformer_source_padding_changes_nothing():
    over = {k: v for k, v in TRANSFORMER_TINY.items() if k != "src_len"}
    short = nasforge.load(TRANSFORMER, **over, src_len=6).build()
    long = nasforge.load(TRANSFORMER, **over, src_len=9).build()
    long.load_state_dict(short.state_dict())
    src, tgt = ids((2, 6), 97, 8, low=2), ids((2, 7), 97, 9, low=2)
    padded = torch.cat([src, torch.ones(2, 3, dtype=torch.long)], dim=1)   # three pad (id 1) tokens
    with torch.no_grad():
        torch.testing.assert_close(long(padded, tgt), short(src, tgt), rtol=1e-5, atol=1e-5)


# -- weight tying -----------------------------------------------------------------------------------------------

def test_tied_weights_are_one_tensor():
    gpt2 = nasforge.load(GPT2, **GPT2_TINY).build()
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight
    bert = nasforge.load(BERT, **BERT_TINY, head="mlm").build()
    assert bert.cls.predictions.decoder.weight is bert.embeddings.word_embeddings.weight
    assert bert.cls.predictions.decoder.bias is not None
    model = nasforge.load(TRANSFORMER, **TRANSFORMER_TINY).build()
    table = model.decoder.embed_tokens.weight
    assert model.encoder.embed_tokens.weight is table and model.decoder.output_projection.weight is table
    unshared = nasforge.load(TRANSFORMER, **TRANSFORMER_TINY, shared_embeddings=False).build()
    assert unshared.encoder.src_embed_tokens.weight is not unshared.decoder.embed_tokens.weight
    assert unshared.decoder.output_projection.weight is unshared.decoder.embed_tokens.weight
    for gm, spec in ((gpt2, GPT2), (model, TRANSFORMER)):
        assert sum(p.numel() for p in gm.parameters()) == nasforge.load(
            spec, **(GPT2_TINY if spec == GPT2 else TRANSFORMER_TINY)).check().totals.params
    # one tensor, so both uses' gradients land in it
    x = ids((2, 16), 97, 10)
    gpt2.train()
    gpt2(x).sum().backward()
    grad = gpt2.transformer.wte.weight.grad
    assert grad is not None and grad[x.unique()].abs().sum() > 0
    assert grad.abs().sum(-1).count_nonzero() == 97       # the head reaches every row, the lookup only some


# -- export -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, over, inputs", [
    (GPT2, GPT2_TINY, lambda b, s: (ids((b, 16), 97, s),)),
    (BERT, BERT_TINY, lambda b, s: (ids((b, 12), 97, s), torch.ones(b, 12, dtype=torch.long), ids((b, 12), 2, s))),
    (TRANSFORMER, TRANSFORMER_TINY, lambda b, s: (ids((b, 9), 97, s), ids((b, 7), 97, s + 1))),
], ids=["gpt2", "bert", "transformer"])
def test_tiny_variants_export_with_a_dynamic_batch(path, over, inputs):
    gm = nasforge.load(path, **over).build()
    example = inputs(2, 0)
    batch = Dim("batch", min=1, max=64)
    program = torch.export.export(gm, example, dynamic_shapes=tuple({0: batch} for _ in example))
    other = inputs(3, 1)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*other), gm(*other))
