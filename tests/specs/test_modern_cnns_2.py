"""Modern CNNs II: HorNet (specs/models/hornet.yaml), EdgeNeXt (edgenext.yaml) and VoVNet-39 (vovnet39.yaml).

Each family is held to its official implementation three ways: the family variants' parameter counts
(exact, as counted by running the official code) and MACs; hand counts of the characteristic blocks
(gnConv, SDTA with cross-covariance attention, One-Shot Aggregation); and small independent PyTorch
re-implementations written here from the papers' descriptions, with the official module names, that load
the built network's weights and must produce the same outputs. The published FLOP figures, counted with
fvcore, are reconciled with nasforge's MACs exactly (fvcore adds 5 operations per LayerNorm element).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import nasforge
from nasforge.cli import main as cli_main
from tests.specs.weights import params_of, rows_of, shape_of

ROOT = Path(__file__).resolve().parents[2]
HORNET = ROOT / "specs" / "models" / "hornet.yaml"
EDGENEXT = ROOT / "specs" / "models" / "edgenext.yaml"
VOVNET = ROOT / "specs" / "models" / "vovnet39.yaml"

EDGENEXT_S = {"depths": [3, 3, 9, 3], "dims": [48, 96, 160, 304], "heads": [8, 8, 8, 8]}

# (spec, variant, overrides, exact params of the official code, recorded MACs: the published figure, except
# for EdgeNeXt-XXS, whose published 260.58M is fvcore's count, 1.03% above these MACs; see the reconciliation)
VARIANTS = [
    (HORNET, "hornet_tiny_7x7", {}, 22_409_512, 4.0e9),
    (HORNET, "hornet_small_7x7", {"base_dim": 96}, 49_528_264, 8.8e9),
    (HORNET, "hornet_base_7x7", {"base_dim": 128}, 87_256_680, 15.6e9),
    (EDGENEXT, "edgenext_xx_small", {}, 1_327_216, 257_905_088),
    (EDGENEXT, "edgenext_x_small", {"depths": [3, 3, 9, 3], "dims": [32, 64, 100, 192]}, 2_336_804, 538.0e6),
    (EDGENEXT, "edgenext_small", EDGENEXT_S, 5_586_832, 1260.59e6),
    (EDGENEXT, "edgenext_base", {"depths": [3, 3, 9, 3], "dims": [80, 160, 288, 584], "heads": [8, 8, 8, 8]},
     18_511_292, 3840.93e6),
    (VOVNET, "vovnet39", {}, 22_600_296, 7.09e9),
    (VOVNET, "vovnet57", {"block_per_stage": [1, 1, 4, 3]}, 36_640_296, 8.95e9),
]


def channels_last_layer_norm_elements(spec) -> int:
    """Elements normalised by channels-last LayerNorms: fvcore counts 5 operations for each (F.layer_norm);
    the official channels-first LayerNorms are written element-wise and fvcore counts nothing for them."""
    graph = spec.graph
    return sum(graph.type_of(n.inputs[0]).numel() for n in graph
               if n.op == "layer_norm" and not n.attrs["channels_first"])


def randomize(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state_dict of random weights, LayerScales and BN statistics, so that no branch is negligible."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if not value.is_floating_point():
            state[key] = value
        elif "running_var" in key:
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif key.endswith("temperature"):
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif "gamma" in key or (key.endswith("weight") and value.dim() == 1):
            state[key] = 0.5 + 0.5 * torch.rand(value.shape, generator=gen)     # norms and LayerScales
        else:
            state[key] = 0.1 * torch.randn(value.shape, generator=gen) / math.sqrt(max(value[0].numel(), 1))
    return state


def compare_with_reference(gm: nn.Module, ref: nn.Module, to_spec, size: int, rtol: float = 1e-4,
                           atol: float = 1e-5) -> None:
    """Same parameter names (through ``to_spec``) and shapes; same outputs with the same random weights."""
    ref.eval()
    gm.eval()
    state = randomize(ref)
    assert {to_spec(k): v.shape for k, v in state.items()} == {k: v.shape for k, v in gm.state_dict().items()}
    ref.load_state_dict(state)
    gm.load_state_dict({to_spec(k): v for k, v in state.items()})
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(gm(x), ref(x), rtol=rtol, atol=atol)


# -- all three families ----------------------------------------------------------------------------

@pytest.mark.parametrize("path, variant, overrides, params, macs",
                         [pytest.param(*v, id=v[1]) for v in VARIANTS])
def test_variant_counts(path, variant, overrides, params, macs):
    """Each named variant is the listed parameter setting and holds the official code's exact count."""
    spec = nasforge.load(path, variant=variant)
    totals = spec.check().totals
    assert totals.params == params == spec.paper["params"]
    assert spec.paper["macs"] == macs
    assert abs(totals.macs - macs) <= 0.01 * macs
    assert nasforge.load(path, **overrides).check().totals == totals


@pytest.mark.parametrize("path", [HORNET, EDGENEXT, VOVNET], ids=lambda p: p.stem)
def test_every_variant_is_pinned_here(path):
    assert nasforge.load(path).variants == [v[1] for v in VARIANTS if v[0] == path]
    raw = yaml.safe_load(path.read_text())
    assert all(raw["variants"][v[1]]["set"] == v[2] for v in VARIANTS if v[0] == path)


# -- HorNet ----------------------------------------------------------------------------------------

def test_hornet_gnconv_hand_count():
    spec = nasforge.load(HORNET)
    rows = rows_of(spec)
    # stage 1 of HorNet-T: C = 64, order 2, gate widths [32, 64] (sum 96), 56x56
    hw = 56 * 56
    assert rows["stages.0.0.gnconv.proj_in"] == (64 * 128 + 128, hw * 64 * 128)
    assert rows["stages.0.0.gnconv.dwconv"] == (96 * 49 + 96, hw * 96 * 49)
    assert rows["stages.0.0.gnconv.pws.0"] == (32 * 64 + 64, hw * 32 * 64)
    assert rows["stages.0.0.gnconv.proj_out"] == (64 * 64 + 64, hw * 64 * 64)
    assert "stages.0.0.gnconv.pws.1" not in rows
    # stage 4: C = 512, order 5, gate widths [32, 64, 128, 256, 512] (sum 992), 7x7
    widths = [32, 64, 128, 256, 512]
    assert [shape_of(spec, f"stages.3.0.gnconv.pws.{k}")[1] for k in range(4)] == widths[1:]
    assert rows["stages.3.0.gnconv.dwconv"][0] == 992 * 49 + 992
    assert rows["stages.3.0.gnconv.split"] == (0, 0) and shape_of(spec, "stages.3.0.gnconv.scale")[1] == 992
    pws = sum(a * b + b for a, b in zip(widths, widths[1:]))
    gnconv = (512 * 1024 + 1024) + (992 * 49 + 992) + pws + (512 * 512 + 512)
    block = 2 * 512 + gnconv + 512 + 2 * 512 + (512 * 2048 + 2048) + (2048 * 512 + 512) + 512
    folded = rows_of(spec, depth=2)
    assert folded["stages.3"][0] == 2 * block == 6_230_784
    # per-stage MACs: HW (2C^2 + 49 sum C_k + sum C_k C_k+1 + C^2) + 8 HW C^2 per block
    for s, (c, side, depth) in enumerate([(64, 56, 2), (128, 28, 3), (256, 14, 18), (512, 7, 2)]):
        gates = [c // 2 ** (s + 1 - k) for k in range(s + 2)]
        per_block = side * side * (2 * c * c + 49 * sum(gates) + sum(a * b for a, b in zip(gates, gates[1:]))
                                   + c * c + 8 * c * c)
        assert folded[f"stages.{s}"][1] == depth * per_block
    assert spec.check().totals.macs == 3_968_389_312


def test_hornet_orders_and_scale_per_stage():
    spec = nasforge.load(HORNET)
    nodes = spec.graph.nodes
    for s, order in enumerate([2, 3, 4, 5]):
        present = [k for k in range(4) if f"stages.{s}.0.gnconv.pws.{k}" in nodes]
        assert present == list(range(order - 1))
        assert nodes[f"stages.{s}.0.gnconv.scale"].attrs["scalar"] == pytest.approx(1 / 3)
    # orders are a parameter: order 1 in every stage leaves only proj_in, dwconv, one gate and proj_out
    flat = nasforge.load(HORNET, orders=[1, 1, 1, 1], depths=[1, 1, 1, 1])
    assert not any(".pws." in n.path for n in flat.graph)


def test_hornet_published_flops_reconcile():
    """HorNet's 4.0G / 8.8G / 15.6G are fvcore counts: these MACs plus 5 per channels-last LayerNorm element."""
    for overrides, published in (({}, 4.0), ({"base_dim": 96}, 8.8), ({"base_dim": 128}, 15.6)):
        spec = nasforge.load(HORNET, **overrides)
        fvcore = spec.check().totals.macs + 5 * channels_last_layer_norm_elements(spec)
        assert round(fvcore / 1e9, 1) == published
    tiny = nasforge.load(HORNET)
    assert channels_last_layer_norm_elements(tiny) == 1_656_320
    assert tiny.check().totals.macs + 5 * 1_656_320 == 3_976_670_912


def test_hornet_stochastic_depth_schedule():
    nodes = nasforge.load(HORNET, drop_path_rate=0.2).graph.nodes
    assert "stages.0.0.drop_path1" not in nodes
    assert nodes["stages.1.0.drop_path1"].attrs["p"] == pytest.approx(0.2 * 2 / 24)
    assert nodes["stages.3.1.drop_path2"].attrs["p"] == pytest.approx(0.2)


class _LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a [B, C, H, W] map (the official channels_first LayerNorm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        mean = x.mean(1, keepdim=True)
        var = (x - mean).square().mean(1, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-6) * self.weight[:, None, None] + self.bias[:, None, None]


class _GnConv(nn.Module):
    """g^n Conv from the paper's Eq. 3-4 with the released code's single depthwise conv and scale 1/3."""

    def __init__(self, dim: int, order: int) -> None:
        super().__init__()
        self.widths = [dim // 2 ** (order - 1 - k) for k in range(order)]
        total = sum(self.widths)
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        self.dwconv = nn.Conv2d(total, total, 7, padding=3, groups=total)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.pws = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in zip(self.widths, self.widths[1:]))

    def forward(self, x):
        p, rest = torch.split(self.proj_in(x), [self.widths[0], sum(self.widths)], dim=1)
        q = torch.split(self.dwconv(rest) / 3, self.widths, dim=1)
        p = p * q[0]
        for k, pw in enumerate(self.pws):
            p = pw(p) * q[k + 1]
        return self.proj_out(p)


class _HorBlock(nn.Module):
    def __init__(self, dim: int, order: int) -> None:
        super().__init__()
        self.norm1 = _LayerNorm2d(dim)
        self.gnconv = _GnConv(dim, order)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma1 = nn.Parameter(torch.full((dim,), 1e-6))
        self.gamma2 = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x):
        x = x + self.gamma1[:, None, None] * self.gnconv(self.norm1(x))
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm2(x.permute(0, 2, 3, 1)))))
        return x + (self.gamma2 * y).permute(0, 3, 1, 2)


class _HorNet(nn.Module):
    def __init__(self, base: int, depths: list[int], orders: list[int]) -> None:
        super().__init__()
        dims = [base, 2 * base, 4 * base, 8 * base]
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), _LayerNorm2d(dims[0]))]
            + [nn.Sequential(_LayerNorm2d(dims[s]), nn.Conv2d(dims[s], dims[s + 1], 2, 2)) for s in range(3)])
        self.stages = nn.ModuleList(nn.Sequential(*[_HorBlock(dims[s], orders[s]) for _ in range(depths[s])])
                                    for s in range(4))
        self.norm = nn.LayerNorm(dims[3], eps=1e-6)
        self.head = nn.Linear(dims[3], 1000)

    def forward(self, x):
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.head(self.norm(x.mean((2, 3))))


def _hornet_key(key: str) -> str:
    """The official bare LayerScale parameters gamma1 / gamma2 are gamma1.gamma / gamma2.gamma here."""
    return key + ".gamma" if key.rsplit(".", 1)[-1] in ("gamma1", "gamma2") else key


@pytest.mark.parametrize("overrides, size", [
    pytest.param({"depths": [1, 2, 2, 1], "image_size": 64}, 64, id="small-64px"),
    pytest.param({"base_dim": 32, "depths": [1, 1, 1, 1], "orders": [5, 4, 3, 2], "image_size": 96}, 96,
                 id="orders-reversed-96px"),
    pytest.param({}, 224, id="hornet-t-224px", marks=pytest.mark.slow),
])
def test_hornet_equals_an_independent_implementation(overrides, size):
    spec = nasforge.load(HORNET, **overrides)
    p = spec.graph.meta["params"]
    compare_with_reference(spec.build(), _HorNet(p["base_dim"], p["depths"], p["orders"]), _hornet_key, size)


def test_hornet_runs_at_a_smaller_resolution():
    spec = nasforge.load(HORNET, image_size=128)
    assert shape_of(spec, "stages.3.1.add2") == (1, 512, 4, 4)
    with torch.no_grad():
        out = spec.build()(torch.randn(2, 3, 128, 128))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    assert spec.check().totals.params == 22_409_512          # no parameter depends on the resolution


def test_show_folds_hornet_by_path(capsys):
    assert cli_main(["show", str(HORNET), "--depth", "1"]) == 0
    out = capsys.readouterr().out
    for text in ("downsample_layers", "stages", "head", "22,409,512", "3.97G"):
        assert text in out, text
    assert "gnconv" not in out
    assert cli_main(["show", str(HORNET), "--depth", "4"]) == 0
    out = capsys.readouterr().out
    assert "stages.2.17.gnconv " in out and "stages.2.17.pwconv1" in out and "gnconv.pws" not in out


# -- EdgeNeXt --------------------------------------------------------------------------------------

def test_edgenext_stage_layout():
    spec = nasforge.load(EDGENEXT)
    nodes = spec.graph.nodes
    # the last block of stages 2-4 is an SDTA encoder, the others conv encoders with kernels 3, 5, 7, 9
    for s, (depth, kernel) in enumerate([(2, 3), (2, 5), (6, 7), (2, 9)]):
        for m in range(depth):
            sdta = s > 0 and m == depth - 1
            assert (f"stages.{s}.{m}.xca" in nodes) == sdta
            if not sdta:
                assert nodes[f"stages.{s}.{m}.dwconv"].attrs["kernel"] == kernel
    # the Fourier position encoding only in stage 2's SDTA
    assert [n.path for n in spec.graph if n.op == "pos_embed_fourier"] == ["stages.1.1.pos_embd"]
    assert shape_of(spec, "stages.3.1.add") == (1, 168, 8, 8)


@pytest.mark.parametrize("overrides, path, widths", [
    pytest.param({}, "stages.1.1", [24], id="xxs-stage2"),                 # 48 channels, 2 groups
    pytest.param({}, "stages.2.5", [30, 30], id="xxs-stage3"),             # 88 = 30 + 30 + 28
    pytest.param({}, "stages.3.1", [42, 42, 42], id="xxs-stage4"),         # 168 = 4 x 42
    pytest.param(EDGENEXT_S, "stages.2.8", [54, 54], id="s-stage3"),       # 160 = 54 + 54 + 52
])
def test_edgenext_sdta_split_widths(overrides, path, widths):
    spec = nasforge.load(EDGENEXT, **overrides)
    nodes = spec.graph.nodes
    convs = [k for k in range(3) if f"{path}.convs.{k}" in nodes]
    assert [shape_of(spec, f"{path}.convs.{k}")[1] for k in convs] == widths
    dim = shape_of(spec, f"{path}.cat")[1]
    assert shape_of(spec, f"{path}.rest")[1] == dim - sum(widths)
    for k in convs:       # depthwise 3x3 with bias
        assert rows_of(spec)[f"{path}.convs.{k}"][0] == widths[k] * 9 + widths[k]


def test_edgenext_sdta_hand_count():
    spec = nasforge.load(EDGENEXT)
    rows = rows_of(spec)
    n, c, heads = 32 * 32, 48, 4
    d = c // heads
    # XCA: qkv and proj Linear layers, a temperature per head; q k^T and attn v are d x d per head
    assert rows["stages.1.1.xca"] == ((3 * c * c + 3 * c) + (c * c + c) + heads, n * (4 * c * c + 2 * c * d))
    # XCiT's Fourier position encoding: a 1x1 conv from 2 x 32 features to C channels
    assert rows["stages.1.1.pos_embd"] == (64 * c + c, n * 64 * c)
    assert rows_of(spec, depth=2)["stages.1"] == (51_796, 52_961_280)
    assert spec.check().totals.macs == 257_905_088


@pytest.mark.parametrize("overrides, published", [
    pytest.param({}, 260.58e6, id="xx_small"),
    pytest.param({"depths": [3, 3, 9, 3], "dims": [32, 64, 100, 192]}, 538.0e6, id="x_small"),
    pytest.param(EDGENEXT_S, 1260.59e6, id="small"),
    pytest.param({"depths": [3, 3, 9, 3], "dims": [80, 160, 288, 584], "heads": [8, 8, 8, 8]}, 3840.93e6,
                 id="base"),
])
def test_edgenext_published_madds_reconcile(overrides, published):
    """The official model.py figures (fvcore, to 0.01M) are these MACs plus 5 per channels-last LN element."""
    spec = nasforge.load(EDGENEXT, **overrides)
    fvcore = spec.check().totals.macs + 5 * channels_last_layer_norm_elements(spec)
    assert abs(fvcore - published) < 0.005e6
    if not overrides:
        assert channels_last_layer_norm_elements(spec) == 534_184
        assert fvcore == 260_576_008


def test_edgenext_stochastic_depth_schedule():
    nodes = nasforge.load(EDGENEXT, drop_path_rate=0.1).graph.nodes
    assert "stages.0.0.drop_path" not in nodes
    assert nodes["stages.1.1.drop_path_xca"].attrs["p"] == pytest.approx(0.1 * 3 / 11)
    assert nodes["stages.3.1.drop_path"].attrs["p"] == pytest.approx(0.1)


class _ConvEncoder(nn.Module):
    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x):
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(self.dwconv(x).permute(0, 2, 3, 1)))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class _FourierEncoding(nn.Module):
    """XCiT's position encoding: for each of the row / column coordinates t = 1..n scaled to 2 pi t / n,
    32 features sin(u / T^(2j/32)), cos(u / T^(2j/32)) for j = 0..15 (T = 10000), rows first."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token_projection = nn.Conv2d(64, dim, 1)

    def forward(self, h: int, w: int):
        def features(n: int) -> torch.Tensor:                  # [n, 32]
            u = torch.arange(1, n + 1, dtype=torch.float32) / (n + 1e-6) * 2 * math.pi
            wavelengths = 10000.0 ** (torch.arange(0, 32, 2, dtype=torch.float32) / 32)
            angles = u[:, None] / wavelengths[None, :]
            return torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(n, 32)
        rows = features(h)[:, None, :].expand(h, w, 32)
        cols = features(w)[None, :, :].expand(h, w, 32)
        grid = torch.cat([rows, cols], dim=-1).permute(2, 0, 1)[None]
        return self.token_projection(grid)


class _XCA(nn.Module):
    """Cross-covariance attention, written with einsum: channels attend to channels over all tokens."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):                                    # [B, N, C]
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).unbind(2)   # [B, N, h, d]
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        attn = (torch.einsum("bnhi,bnhj->bhij", q, k) * self.temperature).softmax(-1)
        return self.proj(torch.einsum("bhij,bnhj->bnhi", attn, v).reshape(b, n, c))


class _SDTA(nn.Module):
    def __init__(self, dim: int, heads: int, scales: int, pos: bool) -> None:
        super().__init__()
        self.width = -(-dim // scales)
        self.convs = nn.ModuleList(nn.Conv2d(self.width, self.width, 3, padding=1, groups=self.width)
                                   for _ in range(max(scales - 1, 1)))
        self.pos_embd = _FourierEncoding(dim) if pos else None
        self.norm_xca = nn.LayerNorm(dim, eps=1e-6)
        self.gamma_xca = nn.Parameter(torch.full((dim,), 1e-6))
        self.xca = _XCA(dim, heads)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x):
        b, c, h, w = x.shape
        pieces = torch.split(x, self.width, dim=1)
        outs, y = [], None
        for k, conv in enumerate(self.convs):
            y = conv(pieces[k] if y is None else y + pieces[k])
            outs.append(y)
        t = torch.cat(outs + list(pieces[len(self.convs):]), dim=1)
        if self.pos_embd is not None:
            t = t + self.pos_embd(h, w)
        t = t.flatten(2).transpose(1, 2)                       # [B, HW, C]
        t = t + self.gamma_xca * self.xca(self.norm_xca(t))
        t = self.gamma * self.pwconv2(F.gelu(self.pwconv1(self.norm(t))))
        return x + t.transpose(1, 2).reshape(b, c, h, w)


class _EdgeNeXt(nn.Module):
    def __init__(self, depths, dims, heads, kernels=(3, 5, 7, 9), scales=(2, 2, 3, 4)) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), _LayerNorm2d(dims[0]))]
            + [nn.Sequential(_LayerNorm2d(dims[s]), nn.Conv2d(dims[s], dims[s + 1], 2, 2)) for s in range(3)])
        self.stages = nn.ModuleList(
            nn.Sequential(*[_SDTA(dims[s], heads[s], scales[s], s == 1) if s > 0 and m == depths[s] - 1
                            else _ConvEncoder(dims[s], kernels[s]) for m in range(depths[s])])
            for s in range(4))
        self.norm = nn.LayerNorm(dims[3], eps=1e-6)
        self.head = nn.Linear(dims[3], 1000)

    def forward(self, x):
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.head(self.norm(x.mean((2, 3))))


def _edgenext_key(key: str) -> str:
    return key + ".gamma" if key.rsplit(".", 1)[-1] in ("gamma", "gamma_xca") else key


@pytest.mark.parametrize("overrides, size", [
    pytest.param({"image_size": 128}, 128, id="xx_small-128px"),
    pytest.param({"image_size": 256}, 256, id="xx_small-256px"),
    pytest.param({**EDGENEXT_S, "depths": [1, 2, 2, 1], "image_size": 96}, 96, id="small-widths-96px"),
    pytest.param(EDGENEXT_S, 256, id="small-256px", marks=pytest.mark.slow),
])
def test_edgenext_equals_an_independent_implementation(overrides, size):
    spec = nasforge.load(EDGENEXT, **overrides)
    p = spec.graph.meta["params"]
    compare_with_reference(spec.build(), _EdgeNeXt(p["depths"], p["dims"], p["heads"]), _edgenext_key, size)


# -- VoVNet ----------------------------------------------------------------------------------------

def test_vovnet_osa_hand_count():
    spec = nasforge.load(VOVNET)
    stem, rows = rows_of(spec, depth=2), rows_of(spec, depth=3)
    # stem: 3x3 convs 3->64 /2, 64->64, 64->128 /2, each with BN
    assert stem["stem.0"] == (3 * 64 * 9 + 128, 112 * 112 * 64 * 27)
    assert stem["stem.1"] == (64 * 64 * 9 + 128, 112 * 112 * 64 * 576)
    assert stem["stem.2"] == (64 * 128 * 9 + 256, 56 * 56 * 128 * 576)

    def osa(cin: int, mid: int, out: int, side: int) -> tuple[int, int]:
        convs = cin * mid * 9 + 4 * mid * mid * 9
        concat = (cin + 5 * mid) * out
        return convs + concat + 5 * 2 * mid + 2 * out, side * side * (convs + concat)

    assert rows["stages.0.blocks"] == osa(128, 128, 256, 56)
    assert rows["stages.1.blocks"] == osa(256, 160, 512, 28)
    two = [osa(512, 192, 768, 14), osa(768, 192, 768, 14)]
    assert rows["stages.2.blocks"] == tuple(map(sum, zip(*two)))
    assert rows["head.fc"] == (1024 * 1000 + 1000, 1024 * 1000)
    # the aggregation concatenates the module input and the five layers' outputs, in order
    assert shape_of(spec, "stages.1.blocks.0.conv_mid.4.concat") == (1, 256 + 5 * 160, 28, 28)
    assert spec.check().totals.macs == 7_072_227_328


def test_vovnet_published_macs_reconcile():
    """timm's 7.09 / 8.95 GMACs (fvcore) are these MACs plus 2 per BatchNorm element and the global pool."""
    for overrides, published in (({}, 7.09), ({"block_per_stage": [1, 1, 4, 3]}, 8.95)):
        spec = nasforge.load(VOVNET, **overrides)
        graph = spec.graph
        bn = sum(graph.type_of(n.inputs[0]).numel() for n in graph if n.op == "batch_norm2d")
        fvcore = spec.check().totals.macs + 2 * bn + 1024 * 7 * 7
        assert round(fvcore / 1e9, 2) == published


def test_vovnet_shortcuts_and_ceil_mode_pooling():
    nodes = nasforge.load(VOVNET).graph.nodes
    # the authors' ImageNet code: an identity shortcut in every OSA module of a stage but the first
    assert [p for p in nodes if p.endswith(".add")] == ["stages.2.blocks.1.add", "stages.3.blocks.1.add"]
    plain = nasforge.load(VOVNET, residual=False)          # timm's vovnet39a
    assert not any(p.endswith(".add") for p in plain.graph.nodes)
    assert plain.check().totals.params == 22_600_296
    # 3x3/2 max pools with ceil_mode: at 100x100 the stages see 25, 12, 6, 3 (floor mode: 25, 12, 5, 2)
    small = nasforge.load(VOVNET, image_size=100)
    assert [shape_of(small, f"stages.{s}.blocks.0.conv_concat.act")[2] for s in range(4)] == [25, 12, 6, 3]


class _ConvNormAct(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class _OSA(nn.Module):
    def __init__(self, cin: int, mid: int, out: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.conv_mid = nn.ModuleList(_ConvNormAct(cin if k == 0 else mid, mid, 3) for k in range(5))
        self.conv_concat = _ConvNormAct(cin + 5 * mid, out, 1)

    def forward(self, x):
        features = [x]
        for layer in self.conv_mid:
            features.append(layer(features[-1]))
        y = self.conv_concat(torch.cat(features, dim=1))
        return y + x if self.residual else y


class _Stage(nn.Module):
    def __init__(self, cin: int, mid: int, out: int, blocks: int, pool: bool) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True) if pool else nn.Identity()
        self.blocks = nn.Sequential(*[_OSA(cin if m == 0 else out, mid, out, m > 0) for m in range(blocks)])

    def forward(self, x):
        return self.blocks(self.pool(x))


class _VoVNet(nn.Module):
    """The authors' VoVNet (stem, OSA stages with shortcuts after the first module), timm's module names."""

    def __init__(self, blocks: list[int]) -> None:
        super().__init__()
        self.stem = nn.Sequential(_ConvNormAct(3, 64, 3, 2), _ConvNormAct(64, 64, 3), _ConvNormAct(64, 128, 3, 2))
        ins, mids, outs = [128, 256, 512, 768], [128, 160, 192, 224], [256, 512, 768, 1024]
        self.stages = nn.Sequential(*[_Stage(ins[s], mids[s], outs[s], blocks[s], s > 0) for s in range(4)])
        self.head = nn.Module()
        self.head.fc = nn.Linear(1024, 1000)

    def forward(self, x):
        return self.head.fc(self.stages(self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize("overrides, size", [
    pytest.param({"image_size": 96}, 96, id="vovnet39-96px"),
    pytest.param({"image_size": 100}, 100, id="vovnet39-100px-ceil-pooling"),
    pytest.param({}, 224, id="vovnet39-224px", marks=pytest.mark.slow),
])
def test_vovnet_equals_an_independent_implementation(overrides, size):
    spec = nasforge.load(VOVNET, **overrides)
    compare_with_reference(spec.build(), _VoVNet(spec.graph.meta["params"]["block_per_stage"]), lambda k: k, size)
