"""State-space and long-convolution model specs: S4D (state-spaces/s4 example.py), Mamba (state-spaces/mamba
MambaLMHeadModel) and Hyena (HazyResearch/safari ConvLMHeadModel with HyenaOperator).

Each built network is compared numerically with an independent functional forward pass written here from
the reference implementations' definitions (reading the built module's weights), the equivalent forms
(S4D convolution vs recurrence, selective scan parallel vs sequential) are held to agree within 1e-5, the
small variants export with a dynamic batch, and the family's parameter and MAC counts are re-derived from
the reference configurations by formula. The generic harness (test_model_specs.py) builds, runs and
exports the default members.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.export import Dim

import nasforge
from nasforge.compiler.fx_builder import example_inputs

ROOT = Path(__file__).resolve().parents[2]
S4D_SPEC = ROOT / "specs" / "models" / "s4d.yaml"
MAMBA = ROOT / "specs" / "models" / "mamba.yaml"
HYENA = ROOT / "specs" / "models" / "hyena.yaml"


def randomized(gm: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> dict[str, torch.Tensor]:
    """Random weights for every parameter (so biases, norms and skip terms matter), loaded into ``gm``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in gm.named_parameters():
            if name.endswith(("log_dt", "log_A_real", "A_imag", "A_log", "pos_emb.z", ".freq")):
                continue                                   # keep the structured initializations
            p.copy_(scale * torch.randn(p.shape, generator=gen) + (1.0 if name.endswith("norm.weight") else 0.0))
    return dict(gm.state_dict())


def causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Direct causal convolution over the last axis: y[..., c, t] = sum_s k[c, s] u[..., c, t - s]."""
    length = u.shape[-1]
    return F.conv1d(F.pad(u, (length - 1, 0)), k.flip(-1).unsqueeze(1), groups=k.shape[0])


def export_check(spec) -> None:
    gm = spec.build()
    inputs = example_inputs(spec.graph, batch=2)
    program = torch.export.export(gm, inputs, dynamic_shapes=tuple({0: Dim("batch", min=1, max=16)} for _ in inputs))
    other = example_inputs(spec.graph, batch=3, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*other), gm(*other))


# -- S4D -------------------------------------------------------------------------------------------------

def s4d_kernel(w: dict, prefix: str, length: int) -> torch.Tensor:
    """K[h, l] = 2 Re(sum_n C_n (exp(dt A_n) - 1) / A_n exp(dt A_n l)) in complex128."""
    dt = w[prefix + "kernel.log_dt"].double().exp()[:, None]
    a = torch.complex(-w[prefix + "kernel.log_A_real"].double().exp(), w[prefix + "kernel.A_imag"].double())
    c = torch.view_as_complex(w[prefix + "kernel.C"].double().contiguous())
    vandermonde = torch.exp((dt * a)[..., None] * torch.arange(length, dtype=torch.float64))
    return 2 * torch.einsum("hn,hnl->hl", c * (torch.exp(dt * a) - 1) / a, vandermonde).real


def s4d_model_reference(w: dict, x: torch.Tensor, n_layers: int) -> torch.Tensor:
    """example.py's S4Model (post-norm, GELU, Conv1d(H, 2H, 1) + GLU, mean over time) in float64."""
    w = {k: v.double() for k, v in w.items()}
    h = F.linear(x.double(), w["encoder.weight"], w["encoder.bias"]).transpose(1, 2)
    for i in range(n_layers):
        p = f"layers.{i}."
        y = causal_conv(h, s4d_kernel(w, p + "ssm.", h.shape[-1])) + h * w[p + "ssm.D"][:, None]
        y = F.glu(F.conv1d(F.gelu(y), w[p + "output_linear.0.weight"], w[p + "output_linear.0.bias"]), dim=1)
        h = F.layer_norm((h + y).transpose(1, 2), (h.shape[1],), w[p + "norm.weight"], w[p + "norm.bias"]).transpose(1, 2)
    return F.linear(h.mean(-1), w["decoder.weight"], w["decoder.bias"])


@pytest.mark.parametrize("mode", ["conv", "recurrent"])
def test_s4d_equals_the_example_model(mode):
    spec = nasforge.load(S4D_SPEC, seq_len=64, mode=mode)
    gm = spec.build()
    state = randomized(gm)
    x = torch.randn(2, 64, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(gm(x).double(), s4d_model_reference(state, x, 4), rtol=1e-4, atol=1e-5)


def test_s4d_convolution_and_recurrence_agree():
    conv = nasforge.load(S4D_SPEC, seq_len=256).build()
    recurrent = nasforge.load(S4D_SPEC, seq_len=256, mode="recurrent").build()
    recurrent.load_state_dict(conv.state_dict())
    x = torch.randn(2, 256, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(conv(x), recurrent(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(conv.double()(x.double()), recurrent.double()(x.double()), rtol=0, atol=1e-10)


def test_s4d_counts():
    spec = nasforge.load(S4D_SPEC)
    h, n, length = 128, 64, 1024
    layer = (h + h * n + 2 * h * (n // 2)) + h + (h * 2 * h + 2 * h) + 2 * h     # kernel, D, output conv, norm
    assert layer == 49_920
    totals = spec.check().totals
    assert totals.params == (3 * h + h) + 4 * layer + (h * 10 + 10) == 201_482
    assert totals.macs == length * 3 * h + 4 * (h * n * length + length * h * 2 * h) + h * 10 == 168_166_656
    assert [k for k in spec.build().state_dict()][2:7] == [
        "layers.0.ssm.D", "layers.0.ssm.kernel.log_dt", "layers.0.ssm.kernel.C", "layers.0.ssm.kernel.log_A_real",
        "layers.0.ssm.kernel.A_imag"]


# -- Mamba -----------------------------------------------------------------------------------------------

def mamba_mixer_reference(w: dict, p: str, x: torch.Tensor, d_state: int, dt_rank: int) -> torch.Tensor:
    """mamba_simple.Mamba's reference path on [B, L, D] in float64: in_proj, x/z halves in [B, D, L], causal
    depthwise conv + SiLU, x_proj -> (dt, B, C), dt_proj, softplus, the scan step by step, D skip, SiLU(z) gate,
    out_proj."""
    length = x.shape[1]
    xz = F.linear(x, w[p + "in_proj.weight"]).transpose(1, 2)
    xs, z = xz.chunk(2, dim=1)
    kernel = w[p + "conv1d.weight"]
    xs = F.silu(F.conv1d(xs, kernel, w[p + "conv1d.bias"], padding=kernel.shape[-1] - 1, groups=xs.shape[1])[..., :length])
    dbc = F.linear(xs.transpose(1, 2), w[p + "x_proj.weight"])
    dt, bm, cm = dbc.split([dt_rank, d_state, d_state], dim=-1)
    delta = F.softplus(F.linear(dt, w[p + "dt_proj.weight"], w[p + "dt_proj.bias"])).transpose(1, 2)   # [B, D, L]
    a = -w[p + "ssm.A_log"].exp()
    h = torch.zeros(x.shape[0], a.shape[0], d_state, dtype=x.dtype)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * a) * h + (delta[:, :, t] * xs[:, :, t])[..., None] * bm[:, t, None, :]
        ys.append((h * cm[:, t, None, :]).sum(-1))
    y = (torch.stack(ys, dim=-1) + xs * w[p + "ssm.D"][:, None]) * F.silu(z)
    return F.linear(y.transpose(1, 2), w[p + "out_proj.weight"])


def mamba_reference(w: dict, ids: torch.Tensor, n_layer: int, d_state: int, dt_rank: int) -> torch.Tensor:
    w = {k: v.double() for k, v in w.items()}

    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * weight

    x = w["backbone.embedding.weight"][ids]
    for i in range(n_layer):
        p = f"backbone.layers.{i}."
        x = x + mamba_mixer_reference(w, p + "mixer.", rms(x, w[p + "norm.weight"]), d_state, dt_rank)
    return rms(x, w["backbone.norm_f.weight"]) @ w["backbone.embedding.weight"].t()


@pytest.mark.parametrize("impl", ["parallel", "sequential"])
def test_mamba_tiny_equals_the_reference_mixer_stack(impl):
    spec = nasforge.load(MAMBA, variant="tiny", impl=impl)
    gm = spec.build()
    state = randomized(gm)
    ids = torch.randint(0, 1000, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(gm(ids).double(), mamba_reference(state, ids, 2, 16, 4), rtol=1e-4, atol=1e-4)


def test_mamba_scan_forms_agree_end_to_end():
    parallel = nasforge.load(MAMBA, variant="tiny", seq_len=256).build()
    sequential = nasforge.load(MAMBA, variant="tiny", seq_len=256, impl="sequential").build()
    randomized(parallel)
    sequential.load_state_dict(parallel.state_dict())
    ids = torch.randint(0, 1000, (2, 256), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(parallel(ids), sequential(ids), rtol=0, atol=1e-5)


def test_mamba_layout_and_tied_head():
    gm = nasforge.load(MAMBA, variant="tiny").build()
    assert gm.lm_head.weight is gm.backbone.embedding.weight
    names = [n for n, _ in gm.named_parameters()]
    assert "lm_head.weight" not in names          # one tensor, counted once
    assert names[:11] == [
        "backbone.embedding.weight", "backbone.layers.0.norm.weight", "backbone.layers.0.mixer.in_proj.weight",
        "backbone.layers.0.mixer.conv1d.weight", "backbone.layers.0.mixer.conv1d.bias",
        "backbone.layers.0.mixer.x_proj.weight", "backbone.layers.0.mixer.dt_proj.weight",
        "backbone.layers.0.mixer.dt_proj.bias", "backbone.layers.0.mixer.ssm.A_log", "backbone.layers.0.mixer.ssm.D",
        "backbone.layers.0.mixer.out_proj.weight"]


def test_mamba_tiny_exports_with_a_dynamic_batch():
    export_check(nasforge.load(MAMBA, variant="tiny"))


def mamba_counts(d_model: int, n_layer: int, vocab: int = 50280, length: int = 1024) -> tuple[int, int]:
    """Parameters and MACs of MambaLMHeadModel from its definition (d_state 16, d_conv 4, expand 2, tied head)."""
    inner, rank, state = 2 * d_model, math.ceil(d_model / 16), 16
    layer = (d_model * 2 * inner + inner * 4 + inner + inner * (rank + 2 * state) + rank * inner + inner
             + inner * state + inner + inner * d_model + d_model)
    per_token = (d_model * 2 * inner + inner * (rank + 2 * state) + rank * inner + inner * d_model
                 + inner * state)                                   # projections and the scan's C contraction
    conv = inner * 4 * (length + 3)                                 # the padded conv computes L + 3 outputs
    return n_layer * layer + vocab * d_model + d_model, n_layer * (length * per_token + conv) + length * d_model * vocab


@pytest.mark.parametrize("variant, d_model, n_layer", [
    ("mamba_130m", 768, 24), ("mamba_370m", 1024, 48), ("mamba_790m", 1536, 48), ("mamba_1_4b", 2048, 48),
    ("mamba_2_8b", 2560, 64),
])
def test_mamba_family_counts(variant, d_model, n_layer):
    totals = nasforge.load(MAMBA, variant=variant).check().totals
    assert (totals.params, totals.macs) == mamba_counts(d_model, n_layer)


def test_mamba_130m_is_129m():
    assert mamba_counts(768, 24)[0] == 129_135_360
    assert mamba_counts(64, 2, vocab=1000, length=64) == (129_472, 8_227_840)


# -- Hyena -----------------------------------------------------------------------------------------------

def hyena_operator_reference(w: dict, p: str, x: torch.Tensor, l_max: int, emb_dim: int) -> torch.Tensor:
    """safari's order-2 HyenaOperator on [B, L, D] in float64: in_proj, short causal depthwise conv, split into
    x0, x1, v; the implicit filter (positional features -> Linear/sin FFN -> exponential decay window);
    v = causal_conv(v * x1, k) + (v * x1) * bias; y = out_proj(v * x0)."""
    length, d = x.shape[1], x.shape[2]
    u = F.linear(x, w[p + "in_proj.weight"], w[p + "in_proj.bias"]).transpose(1, 2)
    kernel = w[p + "short_filter.weight"]
    u = F.conv1d(u, kernel, w[p + "short_filter.bias"], padding=kernel.shape[-1] - 1, groups=u.shape[1])[..., :length]
    x0, x1, v = u.split(d, dim=1)
    f = p + "filter_fn."
    h = w[f + "pos_emb.z"][0, :length]
    linears = sorted({k[len(f + "implicit_filter."):].split(".")[0] for k in w if k.startswith(f + "implicit_filter.")
                      and k.endswith("weight")}, key=int)
    for index in linears[:-1]:
        h = torch.sin(w[f + "implicit_filter.1.freq"] * F.linear(h, w[f + f"implicit_filter.{index}.weight"],
                                                                  w[f + f"implicit_filter.{index}.bias"]))
    h = F.linear(h, w[f + f"implicit_filter.{linears[-1]}.weight"])
    time = torch.linspace(0, 1, l_max, dtype=torch.float64)[:length, None]
    rates = torch.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, d, dtype=torch.float64).abs()
    k = (h * torch.exp(-time * rates)).t()
    v = v * x1
    v = causal_conv(v, k) + v * w[p + "long_conv.D"][:, None]
    return F.linear((v * x0).transpose(1, 2), w[p + "out_proj.weight"], w[p + "out_proj.bias"])


def hyena_reference(w: dict, ids: torch.Tensor, n_layer: int, l_max: int, emb_dim: int) -> torch.Tensor:
    w = {k: v.double() for k, v in w.items()}
    emb = w["backbone.embeddings.word_embeddings.weight"]
    x = emb[ids]
    d = x.shape[-1]
    for i in range(n_layer):
        p = f"backbone.layers.{i}."
        x = x + hyena_operator_reference(w, p + "mixer.", F.layer_norm(x, (d,), w[p + "norm1.weight"], w[p + "norm1.bias"]),
                                         l_max, emb_dim)
        hidden = F.layer_norm(x, (d,), w[p + "norm2.weight"], w[p + "norm2.bias"])
        hidden = F.gelu(F.linear(hidden, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"]), approximate="tanh")
        x = x + F.linear(hidden, w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
    return F.layer_norm(x, (d,), w["backbone.ln_f.weight"], w["backbone.ln_f.bias"]) @ emb.t()


@pytest.mark.parametrize("seq_len", [48, 64])
def test_hyena_tiny_equals_the_reference_operator_stack(seq_len):
    spec = nasforge.load(HYENA, variant="tiny", seq_len=seq_len)
    gm = spec.build()
    state = randomized(gm)
    ids = torch.randint(0, 1000, (2, seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(gm(ids).double(), hyena_reference(state, ids, 2, 64, 5), rtol=1e-4, atol=1e-4)


def test_hyena_tiny_exports_with_a_dynamic_batch():
    export_check(nasforge.load(HYENA, variant="tiny"))


def test_hyena_layout_and_tied_head():
    gm = nasforge.load(HYENA, variant="tiny").build()
    assert gm.lm_head.weight is gm.backbone.embeddings.word_embeddings.weight
    mixer = {n for n, _ in gm.named_parameters() if n.startswith("backbone.layers.0.mixer.")}
    assert {n[len("backbone.layers.0.mixer."):] for n in mixer} == {
        "in_proj.weight", "in_proj.bias", "short_filter.weight", "short_filter.bias", "filter_fn.pos_emb.z",
        "filter_fn.implicit_filter.0.weight", "filter_fn.implicit_filter.0.bias", "filter_fn.implicit_filter.1.freq",
        "filter_fn.implicit_filter.2.weight", "filter_fn.implicit_filter.2.bias", "filter_fn.implicit_filter.4.weight",
        "filter_fn.implicit_filter.4.bias", "filter_fn.implicit_filter.6.weight", "long_conv.D", "out_proj.weight",
        "out_proj.bias"}


def test_hyena_small_counts():
    totals = nasforge.load(HYENA).check().totals
    d, inner, length, l_max, emb, order, vocab = 864, 1728, 1024, 2048, 33, 64, 50264
    filter_params = d + l_max * emb + (emb * order + order) + order + 2 * (order * order + order) + order * d
    mixer = (d * 3 * d + 3 * d) + (d * d + d) + (3 * d * 3 + 3 * d) + filter_params
    assert (filter_params, mixer) == (134_304, 3_134_112)
    layer = mixer + (d * inner + inner) + (inner * d + d) + 4 * d
    assert totals.params == 18 * layer + vocab * d + 2 * d == 153_700_416
    layer_macs = (length * d * 3 * d + 3 * d * 3 * (length + 2) + length * (emb * order + 2 * order * order + order * d)
                  + length * d * d + 2 * length * d * inner)
    assert totals.macs == 18 * layer_macs + length * d * vocab == 155_898_430_848
