"""The transformer and MLP-mixing family: ViT, DeiT (with the distillation token), Swin-T, MLP-Mixer-B/16
and PiT-S.

The generic harness (``test_model_specs.py``) loads, checks, builds, runs and exports every spec and holds
it to its ``paper:`` numbers (MACs within 1%). Here: the exact counts of every variant (so a change to an
op that moves a count by one MAC fails), hand counts of the blocks and stages, forward passes at a smaller
resolution, stochastic-depth rates, ``nasforge show``, and numerical comparisons of each network with an
independent PyTorch implementation written here from the papers' descriptions (details the papers leave
open from the authors' code: module names, bias terms, the order of Swin's patch-merging concat), loading
the same random state_dict. The references run small configurations of the same specs to stay fast.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

import nasforge
from nasforge.cli import main as cli_main
from nasforge.compiler.fx_builder import example_inputs

MODELS = Path(__file__).resolve().parents[2] / "specs" / "models"
VIT = MODELS / "vit.yaml"
DEIT = MODELS / "deit.yaml"
SWIN = MODELS / "swin_tiny.yaml"
MIXER = MODELS / "mixer_b16.yaml"
PIT = MODELS / "pit_s.yaml"

# The spec's class/distillation tokens and position tables live in op modules: cls_token.token etc.
TOKEN_NAMES = {"cls_token": "cls_token.token", "dist_token": "dist_token.token", "pos_embed": "pos_embed.pos"}


def params_of(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def load(path: Path, variant: str | None = None, **overrides):
    return nasforge.load(path, variant=variant, **overrides) if variant else nasforge.load(path, **overrides)


# -- exact counts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path, variant, params, macs", [
    pytest.param(VIT, "vit_tiny", 5_717_416, 1_253_683_200, id="vit_tiny"),
    pytest.param(VIT, "vit_small", 22_050_664, 4_598_882_304, id="vit_small"),
    pytest.param(VIT, "vit_base", 86_567_656, 17_563_828_224, id="vit_base"),
    pytest.param(DEIT, "deit_tiny", 5_717_416, 1_253_683_200, id="deit_tiny"),
    pytest.param(DEIT, "deit_small", 22_050_664, 4_598_882_304, id="deit_small"),
    pytest.param(DEIT, "deit_base", 86_567_656, 17_563_828_224, id="deit_base"),
    pytest.param(DEIT, "deit_tiny_distilled", 5_910_800, 1_261_003_776, id="deit_tiny_distilled"),
    pytest.param(DEIT, "deit_small_distilled", 22_436_432, 4_624_140_288, id="deit_small_distilled"),
    pytest.param(DEIT, "deit_base_distilled", 87_338_192, 17_656_811_520, id="deit_base_distilled"),
    pytest.param(SWIN, None, 28_288_354, 4_490_566_656, id="swin_tiny"),
    pytest.param(MIXER, None, 59_880_472, 12_601_767_936, id="mixer_b16"),
    pytest.param(PIT, "pit_s", 23_461_912, 2_870_796_096, id="pit_s"),
    pytest.param(PIT, "pit_s_distilled", 24_039_056, 2_896_646_400, id="pit_s_distilled"),
])
def test_exact_counts(path, variant, params, macs):
    """Parameters: the reference implementations' (timm, facebookresearch/deit, microsoft/Swin-Transformer,
    naver-ai/pit), exactly. MACs: convolutions, linear layers and attention products of one 224x224 sample,
    as torch's FlopCounterMode counts the reference models; the published figures are in the notes."""
    totals = load(path, variant).check().totals
    assert (totals.params, totals.macs) == (params, macs)


def test_every_variant_is_listed_and_meets_its_paper():
    for path in (VIT, DEIT, PIT):
        for name in nasforge.load(path).variants:
            spec = nasforge.load(path, variant=name)
            totals = spec.check().totals
            assert totals.params == spec.paper["params"], name
            assert abs(totals.macs - spec.paper["macs"]) <= 0.01 * spec.paper["macs"], name


def test_defaults_are_the_first_variant():
    """Loading a family spec without a variant gives its first (smallest) member."""
    for path, first in ((VIT, "vit_tiny"), (DEIT, "deit_tiny"), (PIT, "pit_s")):
        spec = nasforge.load(path)
        assert spec.variants[0] == first
        assert spec.check().totals == nasforge.load(path, variant=first).check().totals


@pytest.mark.parametrize("overrides, params, macs", [
    pytest.param({"depths": [2, 2, 18, 2]}, 49_606_258, 8_740_875_264, id="swin_small"),
    pytest.param({"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32]}, 87_768_224,
                 15_430_946_816, id="swin_base"),
])
def test_swin_family(overrides, params, macs):
    """The reference's Swin-S / Swin-B counts; MACs equal its flops() less one op per LayerNorm element."""
    totals = nasforge.load(SWIN, **overrides).check().totals
    assert (totals.params, totals.macs) == (params, macs)


# -- hand counts -----------------------------------------------------------------------------------

def vit_block_params(c: int) -> int:
    """Two LayerNorms, qkv and proj with biases, MLP c -> 4c -> c: 12c^2 + 13c."""
    return 4 * c + (3 * c * c + 3 * c) + (c * c + c) + (4 * c * c + 4 * c) + (4 * c * c + c)


def test_swin_hand_count_per_stage():
    spec = nasforge.load(SWIN)
    rows = {r.path: (r.params, r.macs) for r in spec.summary(depth=2).rows}
    widths, depths, heads, sides = (96, 192, 384, 768), (2, 2, 6, 2), (3, 6, 12, 24), (56, 28, 14, 7)
    total_params = (3 * 16 * 96 + 96) + 2 * 96 + 2 * 768 + (768 * 1000 + 1000)
    total_macs = 56 * 56 * 96 * 48 + 768 * 1000
    for s, (c, d, h, side) in enumerate(zip(widths, depths, heads, sides)):
        block = vit_block_params(c) + 169 * h            # a ViT block plus the 13x13 relative bias table
        merging = (8 * c + 8 * c * c) if s < 3 else 0     # LayerNorm(4c) and Linear(4c, 2c) without bias
        tokens = side * side
        # per block: qkv, proj and the MLP (12 c^2 per token) and the window products (2 x 49 per token)
        block_macs = tokens * 12 * c * c + 2 * tokens * 49 * c
        merging_macs = (tokens // 4) * 4 * c * 2 * c if s < 3 else 0
        assert rows[f"layers.{s}"] == (d * block + merging, d * block_macs + merging_macs), s
        total_params += d * block + merging
        total_macs += d * block_macs + merging_macs
    assert rows["layers.0"] == (299_190, 810_442_752)
    assert (total_params, total_macs) == (28_288_354, 4_490_566_656)


def test_swin_shifts_every_other_block_but_not_the_single_window_stage():
    nodes = nasforge.load(SWIN).graph.nodes
    for s, depth in enumerate((2, 2, 6, 2)):
        for i in range(depth):
            attn = nodes[f"layers.{s}.blocks.{i}.attn"]
            shifted = i % 2 == 1 and s < 3                # stage 4's 7x7 map is one window: no shift
            assert attn.attrs["shift"] == (3 if shifted else 0)
            assert (f"layers.{s}.blocks.{i}.shift_roll" in nodes) == shifted
            assert (f"layers.{s}.blocks.{i}.unshift_roll" in nodes) == shifted
    spec = nasforge.load(SWIN)
    shape = lambda path: tuple(spec.graph.nodes[path].outputs[0].concrete_shape({"B": 1}))  # noqa: E731
    assert shape("layers.0.blocks.1.partition") == (1, 8, 8, 7, 7, 96)
    assert shape("layers.3.blocks.0.partition") == (1, 1, 1, 7, 7, 768)
    assert shape("layers.0.downsample.concat") == (1, 28, 28, 384)


def test_mixer_hand_count():
    c, n, ds, dc = 768, 196, 384, 3072
    block = 2 * c + (n * ds + ds) + (ds * n + n) + 2 * c + (c * dc + dc) + (dc * c + c)
    assert block == 4_876_612
    rows = {r.path: (r.params, r.macs) for r in nasforge.load(MIXER).summary(depth=2).rows}
    assert rows["blocks.0"] == (block, c * 2 * n * ds + n * 2 * c * dc)
    assert rows["stem.proj"] == (3 * 256 * c + c, n * c * 3 * 256)
    totals = nasforge.load(MIXER).check().totals
    assert totals.params == 12 * block + (3 * 256 * c + c) + 2 * c + (c * 1000 + 1000) == 59_880_472


def test_pit_hand_count():
    rows = {r.path: (r.params, r.macs) for r in nasforge.load(PIT).summary(depth=2).rows}
    # stages 144, 288, 576 wide; pooling: a 3x3 conv with one input channel per output (groups = c_in)
    # and bias, and a Linear for the class token
    assert rows["transformers.0"][0] == 2 * vit_block_params(144)
    assert rows["transformers.1"][0] == 6 * vit_block_params(288)
    assert rows["transformers.2"][0] == 4 * vit_block_params(576)
    assert rows["pools.0"][0] == (288 * 9 + 288) + (144 * 288 + 288)
    assert rows["pools.1"][0] == (576 * 9 + 576) + (288 * 576 + 576)
    # 27x27 grid + class token, then 14x14 and 7x7
    assert rows["transformers.0"][1] == 2 * (730 * 12 * 144 * 144 + 2 * 730 * 730 * 144)
    assert rows["patch_embed.conv"] == (3 * 256 * 144 + 144, 27 * 27 * 144 * 3 * 256)
    embed = (3 * 256 * 144 + 144) + 144 * 27 * 27 + 144
    blocks = 2 * vit_block_params(144) + 6 * vit_block_params(288) + 4 * vit_block_params(576)
    pools = rows["pools.0"][0] + rows["pools.1"][0]
    assert embed + blocks + pools + 2 * 576 + 576 * 1000 + 1000 == 23_461_912


# -- smaller resolutions ---------------------------------------------------------------------------

@pytest.mark.parametrize("path, variant, overrides, tokens_node, tokens_shape", [
    pytest.param(VIT, "vit_tiny", {"image_size": 112}, "pos_embed", (2, 50, 192), id="vit_tiny-112"),
    pytest.param(DEIT, "deit_tiny_distilled", {"image_size": 112}, "pos_embed", (2, 51, 192),
                 id="deit_tiny_distilled-112"),
    pytest.param(SWIN, None, {"image_size": 128, "window_size": 4}, "layers.3.blocks.1.attn",
                 (2, 1, 1, 4, 4, 768), id="swin_tiny-128-window4"),
    pytest.param(PIT, "pit_s_distilled", {"image_size": 112}, "pools.1.join", (2, 18, 576), id="pit_s_distilled-112"),
    pytest.param(MIXER, None, {"image_size": 112}, "stem.tokens", (2, 49, 768), id="mixer_b16-112"),
])
def test_forward_at_a_smaller_resolution(path, variant, overrides, tokens_node, tokens_shape):
    spec = load(path, variant, **overrides)
    assert tuple(spec.graph.nodes[tokens_node].outputs[0].concrete_shape({"B": 2})) == tokens_shape
    gm = spec.build().eval()
    with torch.no_grad():
        out = gm(*example_inputs(spec.graph, batch=2))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()


def test_swin_sizes_that_do_not_fit_the_windows_are_named():
    with pytest.raises(nasforge.SpecError, match="not a multiple of the window") as err:
        nasforge.load(SWIN, image_size=112).check()
    assert "layers.2.downsample.gather" in str(err.value)


# -- stochastic depth ------------------------------------------------------------------------------

def test_drop_path_rates():
    swin = nasforge.load(SWIN, drop_path_rate=0.2).graph.nodes
    assert "layers.0.blocks.0.drop_path1" not in swin
    assert swin["layers.1.blocks.1.drop_path1"].attrs["p"] == pytest.approx(0.2 * 3 / 11)
    assert swin["layers.3.blocks.1.drop_path2"].attrs["p"] == pytest.approx(0.2)
    # PiT divides by the block count, not by (count - 1): its last block drops with 11/12 of the rate
    pit = nasforge.load(PIT, drop_path_rate=0.1).graph.nodes
    assert pit["transformers.1.blocks.0.drop_path1"].attrs["p"] == pytest.approx(0.1 * 2 / 12)
    assert pit["transformers.2.blocks.3.drop_path1"].attrs["p"] == pytest.approx(0.1 * 11 / 12)
    mixer = nasforge.load(MIXER, drop_path_rate=0.1).graph.nodes
    assert mixer["blocks.11.drop_path2"].attrs["p"] == pytest.approx(0.1)


def test_show_folds_swin_into_its_stages(capsys):
    assert cli_main(["show", str(SWIN), "--depth", "2"]) == 0
    out = capsys.readouterr().out
    for text in ("swin_tiny", "patch_embed.proj", "layers.0", "layers.3", "head", "[B, 56, 56, 96]",
                 "[B, 7, 7, 768]", "28,288,354", "299,190", "4.49G"):
        assert text in out, text
    assert "layers.0.blocks.0.attn" not in out
    assert cli_main(["show", str(SWIN), "--depth", "4"]) == 0
    deeper = capsys.readouterr().out
    assert "layers.0.downsample.gather" in deeper and "window_partition" in deeper


# -- independent references ------------------------------------------------------------------------

def _randomize(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * 0.2 if v.is_floating_point() else v
            for k, v in module.state_dict().items()}


class _Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int, out: int | None = None, approximate: str = "none") -> None:
        super().__init__()
        self.add_module("fc1", nn.Linear(dim, hidden))
        self.add_module("act", nn.GELU(approximate=approximate))
        self.add_module("fc2", nn.Linear(hidden, out or dim))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, c))


class _Block(nn.Module):
    """The pre-norm ViT block (DeiT, PiT): x + Attn(LN(x)), x + MLP(LN(x)), LayerNorm eps 1e-6."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _DeiT(nn.Module):
    """DeiT with the distillation token: tokens [cls, dist, patches]; eval output = mean of both heads."""

    def __init__(self, dim: int, depth: int, heads: int, image: int) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, 16, 16)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image // 16) ** 2 + 2, dim))
        self.blocks = nn.Sequential(*[_Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, 1000)
        self.head_dist = nn.Linear(dim, 1000)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        b = x.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), self.dist_token.expand(b, -1, -1), x], 1)
        x = self.norm(self.blocks(x + self.pos_embed))
        return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2


class _WindowAttention(nn.Module):
    """W-MSA with a relative position bias, window by window (Liu et al., Section 3.2)."""

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, shift: int):
        """x: the (already rolled) map [B, H, W, C]. With a shift, tokens of a window attend only to
        tokens that were on the same side of the wrap-around border on both axes."""
        b, h, w, c = x.shape
        m, d = self.window, c // self.heads
        cells = [(i, j) for i in range(m) for j in range(m)]
        table = self.relative_position_bias_table          # row of offset (dy, dx): (dy + m - 1)(2m - 1) + dx + m - 1
        bias = torch.stack([torch.stack([table[(pi - qi + m - 1) * (2 * m - 1) + pj - qj + m - 1] for qi, qj in cells])
                            for pi, pj in cells]).permute(2, 0, 1)
        out = torch.empty_like(x)
        for top, left in itertools.product(range(0, h, m), range(0, w, m)):
            tokens = x[:, top:top + m, left:left + m].reshape(b, m * m, c)
            q, k, v = self.qkv(tokens).reshape(b, m * m, 3, self.heads, d).permute(2, 0, 3, 1, 4)
            scores = q @ k.transpose(-2, -1) / d ** 0.5 + bias
            if shift:
                side = [((top + i) >= h - shift, (left + j) >= w - shift) for i, j in cells]
                scores = scores + torch.tensor([[0.0 if a == z else -100.0 for z in side] for a in side])
            y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, m, m, c)
            out[:, top:top + m, left:left + m] = self.proj(y)
        return out


class _SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int) -> None:
        super().__init__()
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, 4 * dim)

    def forward(self, x):
        s = self.shift
        y = torch.roll(self.norm1(x), (-s, -s), (1, 2))
        x = x + torch.roll(self.attn(y, s), (s, s), (1, 2))
        return x + self.mlp(self.norm2(x))


class _PatchMerging(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        # the reference's concat order: (even, even), (odd, even), (even, odd), (odd, odd) rows/columns
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class _Swin(nn.Module):
    def __init__(self, image: int, dim: int, depths, heads, window: int) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, 4, 4)
        self.patch_embed.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList()
        side = image // 4
        for s, (depth, h) in enumerate(zip(depths, heads)):
            width = dim * 2 ** s
            win = min(window, side)
            layer = nn.Module()
            layer.blocks = nn.Sequential(*[_SwinBlock(width, h, win, win // 2 if i % 2 and side > window else 0)
                                           for i in range(depth)])
            layer.downsample = _PatchMerging(width) if s < len(depths) - 1 else nn.Identity()
            self.layers.append(layer)
            side //= 2
        self.norm = nn.LayerNorm(dim * 2 ** (len(depths) - 1))
        self.head = nn.Linear(dim * 2 ** (len(depths) - 1), 1000)

    def forward(self, x):
        x = self.patch_embed.norm(self.patch_embed.proj(x).permute(0, 2, 3, 1))
        for layer in self.layers:
            x = layer.downsample(layer.blocks(x))
        return self.head(self.norm(x).mean((1, 2)))


class _MixerBlock(nn.Module):
    def __init__(self, dim: int, tokens: int, tokens_dim: int, channels_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_tokens = _Mlp(tokens, tokens_dim, approximate="tanh")
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_channels = _Mlp(dim, channels_dim, approximate="tanh")

    def forward(self, x):
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class _Mixer(nn.Module):
    def __init__(self, image: int, dim: int, depth: int, tokens_dim: int, channels_dim: int) -> None:
        super().__init__()
        self.stem = nn.Module()
        self.stem.proj = nn.Conv2d(3, dim, 16, 16)
        self.blocks = nn.Sequential(*[_MixerBlock(dim, (image // 16) ** 2, tokens_dim, channels_dim)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, 1000)

    def forward(self, x):
        x = self.blocks(self.stem.proj(x).flatten(2).transpose(1, 2))
        return self.head(self.norm(x).mean(1))


class _PiT(nn.Module):
    """PiT: overlapping patch embedding, position table on the map, ViT stages on [class token(s), patches],
    and between stages a depthwise-grouped 3x3/2 conv on the map and a Linear on the class tokens."""

    def __init__(self, image: int, base_dims, depth, heads, distilled: bool) -> None:
        super().__init__()
        widths = [b * h for b, h in zip(base_dims, heads)]
        self.side = (image - 16) // 8 + 1
        self.tokens = 2 if distilled else 1
        self.patch_embed = nn.Module()
        self.patch_embed.conv = nn.Conv2d(3, widths[0], 16, 8)
        self.pos_embed = nn.Parameter(torch.zeros(1, widths[0], self.side, self.side))
        self.cls_token = nn.Parameter(torch.zeros(1, self.tokens, widths[0]))
        self.transformers = nn.ModuleList()
        self.pools = nn.ModuleList()
        for s, (c, d, h) in enumerate(zip(widths, depth, heads)):
            stage = nn.Module()
            stage.blocks = nn.Sequential(*[_Block(c, h) for _ in range(d)])
            self.transformers.append(stage)
            if s < len(widths) - 1:
                pool = nn.Module()
                pool.conv = nn.Conv2d(c, widths[s + 1], 3, 2, 1, groups=c)
                pool.fc = nn.Linear(c, widths[s + 1])
                self.pools.append(pool)
        self.norm = nn.LayerNorm(widths[-1], eps=1e-6)
        self.head = nn.Linear(widths[-1], 1000)
        if distilled:
            self.head_dist = nn.Linear(widths[-1], 1000)

    def forward(self, x):
        x = self.patch_embed.conv(x) + self.pos_embed
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        for s, stage in enumerate(self.transformers):
            h, w = x.shape[2:]
            t = stage.blocks(torch.cat([cls, x.flatten(2).transpose(1, 2)], 1))
            cls, x = t[:, :self.tokens], t[:, self.tokens:].transpose(1, 2).reshape(x.shape[0], -1, h, w)
            if s < len(self.pools):
                x, cls = self.pools[s].conv(x), self.pools[s].fc(cls)
        cls = self.norm(cls)
        if self.tokens == 1:
            return self.head(cls[:, 0])
        return (self.head(cls[:, 0]) + self.head_dist(cls[:, 1])) / 2


def _compare(spec, ref: nn.Module, image: int, rename: dict[str, str] | None = None) -> None:
    """Same parameter names and shapes, and the same outputs with the same random weights."""
    rename = rename or {}
    gm = spec.build().eval()
    ref.eval()
    state = _randomize(ref)
    ours = {rename.get(k, k): v for k, v in state.items()}
    assert {k: tuple(v.shape) for k, v in gm.state_dict().items()} == {k: tuple(v.shape) for k, v in ours.items()}
    assert params_of(gm) == params_of(ref)
    gm.load_state_dict(ours)
    ref.load_state_dict(state)
    x = torch.randn(2, 3, image, image, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(gm(x), ref(x), rtol=1e-4, atol=1e-4)


def test_deit_distilled_equals_an_independent_implementation():
    spec = nasforge.load(DEIT, variant="deit_tiny_distilled", depth=2, image_size=64)
    _compare(spec, _DeiT(192, 2, 3, 64), 64, TOKEN_NAMES)


@pytest.mark.parametrize("overrides", [
    pytest.param({"image_size": 64, "window_size": 4, "embed_dim": 16, "depths": [2, 2, 2], "num_heads": [1, 2, 4]},
                 id="3-stages-window4"),
    pytest.param({"image_size": 112, "window_size": 7, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 2]},
                 id="2-stages-window7"),
])
def test_swin_equals_an_independent_implementation(overrides):
    """Shifted windows (with the wrap-around mask), the relative position bias, the single-window last stage
    (window clamped to the map, no shift) and patch merging, against a window-by-window reference."""
    spec = nasforge.load(SWIN, **overrides)
    ref = _Swin(overrides["image_size"], overrides["embed_dim"], overrides["depths"], overrides["num_heads"],
                overrides["window_size"])
    _compare(spec, ref, overrides["image_size"])


def test_mixer_equals_an_independent_implementation():
    spec = nasforge.load(MIXER, image_size=64, dim=32, depth=2, tokens_dim=8, channels_dim=64)
    _compare(spec, _Mixer(64, 32, 2, 8, 64), 64)


@pytest.mark.parametrize("variant", ["pit_s", "pit_s_distilled"])
def test_pit_equals_an_independent_implementation(variant):
    spec = nasforge.load(PIT, variant=variant, image_size=96, base_dims=[8, 8, 8], depth=[1, 2, 1])
    _compare(spec, _PiT(96, [8, 8, 8], [1, 2, 1], [3, 6, 12], variant.endswith("distilled")), 96, TOKEN_NAMES)
