"""Modern CNNs I: ConvNeXt (specs/models/convnext.yaml), ConvNeXt V2 (convnext_v2.yaml), InceptionNeXt
(inceptionnext_tiny.yaml) and PoolFormer (poolformer_s12.yaml).

Each family is held to its official implementation three ways: every variant's parameter count (exact,
as counted by running the official code: facebookresearch/ConvNeXt, facebookresearch/ConvNeXt-V2,
sail-sg/inceptionnext, sail-sg/poolformer) and exact MACs (what FlopCounterMode counts on the official
models), within 1% of the published figures; hand counts per stage; and small independent PyTorch
re-implementations written here from the papers' descriptions, with the official module names, that
load the built network's weights (through the documented key mapping) and must give the same outputs.
The published fvcore figures are reconciled with nasforge's MACs exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nasforge
from nasforge.cli import main as cli_main
from nasforge.compiler.fx_builder import example_inputs
from tests.specs.weights import params_of, rows_of, shape_of, small_random_state

ROOT = Path(__file__).resolve().parents[2]
CONVNEXT = ROOT / "specs" / "models" / "convnext.yaml"
CONVNEXT_V2 = ROOT / "specs" / "models" / "convnext_v2.yaml"
INCEPTIONNEXT = ROOT / "specs" / "models" / "inceptionnext_tiny.yaml"
POOLFORMER = ROOT / "specs" / "models" / "poolformer_s12.yaml"

T_DEPTHS, T_DIMS = [3, 3, 9, 3], [96, 192, 384, 768]

# (spec, variant, overrides the variant stands for, exact params of the official code,
#  exact MACs at 224 (FlopCounterMode on the official model), published MACs)
VARIANTS = [
    (CONVNEXT, "convnext_tiny", {}, 28_589_128, 4_455_531_264, 4.47e9),
    (CONVNEXT, "convnext_small", {"depths": [3, 3, 27, 3]}, 50_223_688, 8_683_712_256, 8.71e9),
    (CONVNEXT, "convnext_base", {"depths": [3, 3, 27, 3], "dims": [128, 256, 512, 1024]},
     88_591_464, 15_354_729_472, 15.38e9),
    (CONVNEXT_V2, "convnextv2_atto", {}, 3_708_400, 547_332_480, 0.55e9),
    (CONVNEXT_V2, "convnextv2_tiny", {"depths": T_DEPTHS, "dims": T_DIMS}, 28_635_496, 4_455_531_264, 4.47e9),
    (INCEPTIONNEXT, "inceptionnext_tiny", {}, 28_055_680, 4_188_634_272, 4.2e9),
    (INCEPTIONNEXT, "inceptionnext_small", {"depths": [3, 3, 27, 3]}, 49_374_016, 8_355_682_080, 8.4e9),
    (INCEPTIONNEXT, "inceptionnext_base", {"depths": [3, 3, 27, 3], "dims": [128, 256, 512, 1024]},
     86_672_136, 14_841_072_000, 14.9e9),
    (POOLFORMER, "poolformer_s12", {}, 11_915_176, 1_812_267_008, 1.8e9),
    (POOLFORMER, "poolformer_s24", {"depths": [4, 4, 12, 4]}, 21_388_968, 3_392_208_896, 3.4e9),
    (POOLFORMER, "poolformer_s36", {"depths": [6, 6, 18, 6], "ls_init": 1e-6}, 30_862_760, 4_972_150_784, 5.0e9),
    (POOLFORMER, "poolformer_m36", {"depths": [6, 6, 18, 6], "dims": [96, 192, 384, 768], "ls_init": 1e-6},
     56_172_520, 8_758_788_096, 8.8e9),
    (POOLFORMER, "poolformer_m48", {"depths": [8, 8, 24, 8], "dims": [96, 192, 384, 768], "ls_init": 1e-6},
     73_473_448, 11_533_320_192, 11.6e9),
]


def numel_of(spec, path: str) -> int:
    return int(torch.Size(shape_of(spec, path)).numel())


def assert_same_function(spec, reference: nn.Module, to_spec, size: int) -> None:
    """Same parameters (after the key mapping) and the same outputs with the same random weights."""
    gm = spec.build()
    reference.eval()
    state = small_random_state(reference, scale=0.1)
    reference.load_state_dict(state)
    ours = gm.state_dict()
    mapped = {to_spec(k): v for k, v in state.items()}
    assert sorted(mapped) == sorted(ours)
    gm.load_state_dict({k: v.reshape(ours[k].shape) for k, v in mapped.items()})
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(gm(x), reference(x), rtol=1e-4, atol=1e-4)


# -- every variant --------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, variant, overrides, params, macs, published",
                         [pytest.param(*v, id=v[1]) for v in VARIANTS])
def test_variants_match_the_official_code(path, variant, overrides, params, macs, published):
    spec = nasforge.load(path, variant=variant)
    totals = spec.check().totals
    assert (totals.params, totals.macs) == (params, macs)
    assert spec.paper["params"] == params
    assert abs(macs - spec.paper["macs"]) <= 0.01 * spec.paper["macs"]
    assert spec.paper["macs"] == published
    # the variant is exactly its parameter overrides
    assert nasforge.load(path, **overrides).check().totals == totals


@pytest.mark.parametrize("path, size, logits", [
    pytest.param(CONVNEXT, 96, "head.fc", id="convnext"),
    pytest.param(CONVNEXT_V2, 64, "head.fc", id="convnext_v2"),
    pytest.param(INCEPTIONNEXT, 128, "head.fc2", id="inceptionnext"),
    pytest.param(POOLFORMER, 100, "head", id="poolformer"),
])
def test_forward_at_a_smaller_resolution(path, size, logits):
    spec = nasforge.load(path, image_size=size)
    final = shape_of(spec, logits)
    assert final == (1, 1000)
    gm = spec.build()
    with torch.no_grad():
        out = gm(*example_inputs(spec.graph, batch=2))
    assert tuple(out.shape) == (2, 1000) and torch.isfinite(out).all()


# -- ConvNeXt and ConvNeXt V2 ---------------------------------------------------------------------------

def convnext_block_params(c: int, v2: bool = False) -> int:
    dw = 49 * c + c
    mlp = (c * 4 * c + 4 * c) + (4 * c * c + c)
    extra = 2 * 4 * c if v2 else c                  # GRN weight + bias on 4C channels, or LayerScale gamma
    return dw + 2 * c + mlp + extra


def test_convnext_tiny_hand_count_per_stage():
    spec = nasforge.load(CONVNEXT)
    rows = rows_of(spec, depth=2)
    assert rows["stem.0"] == (3 * 96 * 16 + 96, 56 * 56 * 96 * 48)
    assert rows["stem.1"] == (2 * 96, 0)
    total_macs = 56 * 56 * 96 * 48 + 768 * 1000
    for s, (n, c) in enumerate(zip(T_DEPTHS, T_DIMS)):
        hw = (56 >> s) ** 2
        blocks = n * convnext_block_params(c)
        block_macs = n * hw * (49 * c + 8 * c * c)
        down = 0 if s == 0 else 2 * T_DIMS[s - 1] + 4 * T_DIMS[s - 1] * c + c
        down_macs = 0 if s == 0 else hw * 4 * T_DIMS[s - 1] * c
        assert rows[f"stages.{s}"] == (down + blocks, down_macs + block_macs), s
        assert shape_of(spec, f"stages.{s}.blocks.{n - 1}.add") == (1, c, 56 >> s, 56 >> s)
        total_macs += block_macs + down_macs
    assert convnext_block_params(96) == 8 * 96 * 96 + 58 * 96 == 79_296
    assert rows["stages.1"][0] == 74_112 + 3 * 306_048 == 992_256
    totals = spec.check().totals
    assert totals.macs == total_macs == 4_455_531_264
    assert totals.params == 28_589_128


def test_convnext_fvcore_figure_is_macs_plus_layer_norm_and_pool():
    """timm's 4.47 GMACs (fvcore) = nasforge's MACs + 5 operations per LayerNorm element + the pool."""
    spec = nasforge.load(CONVNEXT)
    norms = [n.path for n in spec.graph if n.op == "layer_norm"]
    assert len(norms) == 1 + 3 + 18 + 1            # stem, 3 downsamplings, 18 blocks, head
    elements = sum(numel_of(spec, p) for p in norms)
    assert elements == 2_973_696
    assert spec.check().totals.macs + 5 * elements + 768 * 7 * 7 == 4_470_437_376


def test_convnext_v2_differs_from_v1_by_grn_and_layer_scale():
    v1 = nasforge.load(CONVNEXT).check().totals
    v2 = nasforge.load(CONVNEXT_V2, variant="convnextv2_tiny").check().totals
    channels = sum(n * c for n, c in zip(T_DEPTHS, T_DIMS))   # 6,624
    assert v2.params - v1.params == 8 * channels - channels == 46_368
    assert v2.macs == v1.macs                                  # GRN has no multiply-accumulates
    atto = rows_of(nasforge.load(CONVNEXT_V2), depth=2)
    assert atto["stages.0"][0] == 2 * convnext_block_params(40, v2=True)
    assert convnext_block_params(40, v2=True) == 8 * 40 * 40 + 65 * 40


def test_convnext_stochastic_depth_follows_the_global_block_index():
    rate = 0.1
    nodes = nasforge.load(CONVNEXT, drop_path_rate=rate).graph.nodes
    expected = torch.linspace(0, rate, 18).tolist()           # the official dp_rates
    k = 0
    for s, n in enumerate(T_DEPTHS):
        for i in range(n):
            path = f"stages.{s}.blocks.{i}.drop_path"
            if k == 0:
                assert path not in nodes
            else:
                assert nodes[path].attrs["p"] == pytest.approx(expected[k])
            k += 1
    assert nodes["stages.3.blocks.2.drop_path"].attrs["p"] == pytest.approx(rate)


class _LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class _GRN(nn.Module):
    """ConvNeXt V2's Global Response Normalization on NHWC, with the official [1, 1, 1, C] parameters."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, c))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, c))

    def forward(self, x):
        g = x.square().sum(dim=(1, 2), keepdim=True).sqrt()
        return x + self.gamma * (x * (g / (g.mean(dim=-1, keepdim=True) + 1e-6))) + self.beta


class _ConvNeXtBlock(nn.Module):
    def __init__(self, c: int, v2: bool) -> None:
        super().__init__()
        self.v2 = v2
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pwconv1 = nn.Linear(c, 4 * c)
        self.pwconv2 = nn.Linear(4 * c, c)
        if v2:
            self.grn = _GRN(4 * c)
        else:
            self.gamma = nn.Parameter(torch.full((c,), 1e-6))

    def forward(self, x):
        y = F.gelu(self.pwconv1(self.norm(self.dwconv(x).permute(0, 2, 3, 1))))
        y = self.pwconv2(self.grn(y) if self.v2 else y)
        return x + (y if self.v2 else self.gamma * y).permute(0, 3, 1, 2)


class _ReferenceConvNeXt(nn.Module):
    """ConvNeXt / ConvNeXt V2 with the official module names (downsample_layers, stages.N.M.dwconv, ...)."""

    def __init__(self, depths, dims, v2: bool = False) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), _LayerNorm2d(dims[0], eps=1e-6))]
            + [nn.Sequential(_LayerNorm2d(dims[s - 1], eps=1e-6), nn.Conv2d(dims[s - 1], dims[s], 2, 2))
               for s in range(1, 4)])
        self.stages = nn.ModuleList(nn.Sequential(*[_ConvNeXtBlock(c, v2) for _ in range(n)])
                                    for n, c in zip(depths, dims))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], 1000)

    def forward(self, x):
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.head(self.norm(x.mean((2, 3))))


def official_convnext_to_spec(key: str) -> str:
    """The key mapping documented in specs/blocks/convnext.yaml (the official names to timm's)."""
    key = re.sub(r"^downsample_layers\.0\.", "stem.", key)
    key = re.sub(r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample.", key)
    key = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", key)
    for old, new in ((".dwconv.", ".conv_dw."), (".pwconv1.", ".mlp.fc1."), (".pwconv2.", ".mlp.fc2."),
                     (".grn.gamma", ".mlp.grn.weight"), (".grn.beta", ".mlp.grn.bias")):
        key = key.replace(old, new)
    key = re.sub(r"\.gamma$", ".gamma.gamma", key)     # layer_scale keeps gamma one level down
    key = re.sub(r"^norm\.", "head.norm.", key)
    return re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)


@pytest.mark.parametrize("path, variant, v2, depths, dims, size", [
    pytest.param(CONVNEXT, None, False, [1, 1, 2, 1], [32, 64, 96, 128], 64, id="convnext-small-dims"),
    pytest.param(CONVNEXT_V2, "convnextv2_atto", True, [2, 2, 6, 2], [40, 80, 160, 320], 96, id="v2-atto"),
    pytest.param(CONVNEXT, "convnext_tiny", False, T_DEPTHS, T_DIMS, 224, id="convnext-tiny",
                 marks=pytest.mark.slow),
    pytest.param(CONVNEXT_V2, "convnextv2_tiny", True, T_DEPTHS, T_DIMS, 224, id="v2-tiny",
                 marks=pytest.mark.slow),
])
def test_convnext_equals_an_independent_implementation(path, variant, v2, depths, dims, size):
    overrides = {"image_size": size} if variant else {"image_size": size, "depths": depths, "dims": dims}
    spec = nasforge.load(path, variant=variant, **overrides)
    assert_same_function(spec, _ReferenceConvNeXt(depths, dims, v2), official_convnext_to_spec, size)


# -- InceptionNeXt --------------------------------------------------------------------------------------

def test_inception_depthwise_conv_splits_and_shapes():
    spec = nasforge.load(INCEPTIONNEXT)
    mixer = "stages.0.blocks.0.token_mixer"
    g = int(96 * 0.125)
    assert g == 12
    assert [tuple(t.concrete_shape({"B": 1}))[1] for t in spec.graph.nodes[f"{mixer}.split"].outputs] == \
        [96 - 3 * g, g, g, g]
    rows = rows_of(spec)
    assert rows[f"{mixer}.dwconv_hw"] == (9 * g + g, 56 * 56 * 9 * g)
    assert rows[f"{mixer}.dwconv_w"] == (11 * g + g, 56 * 56 * 11 * g)
    assert rows[f"{mixer}.dwconv_h"] == (11 * g + g, 56 * 56 * 11 * g)
    assert shape_of(spec, f"{mixer}.concat") == (1, 96, 56, 56)
    # the last stage's MLP ratio is 3 and the head an MLP with ratio 3
    assert shape_of(spec, "stages.3.blocks.0.mlp.fc1") == (1, 3 * 768, 7, 7)
    assert shape_of(spec, "stages.2.blocks.0.mlp.fc1") == (1, 4 * 384, 14, 14)
    assert rows["head.fc1"] == (768 * 2304 + 2304, 768 * 2304)
    assert rows["head.norm"] == (2 * 2304, 0)


def test_inceptionnext_tiny_hand_count_per_stage():
    spec = nasforge.load(INCEPTIONNEXT)
    rows = rows_of(spec, depth=3)
    total_macs = 56 * 56 * 96 * 48 + 768 * 2304 + 2304 * 1000
    for s, (n, c, r) in enumerate(zip(T_DEPTHS, T_DIMS, [4, 4, 4, 3])):
        g, hw = c // 8, (56 >> s) ** 2
        block = 34 * g + 2 * c + (r * c * c + r * c) + (r * c * c + c) + c   # mixer, BN, fc1, fc2, gamma
        assert rows[f"stages.{s}.blocks"] == (n * block, n * hw * (31 * g + 2 * r * c * c)), s
        total_macs += n * hw * (31 * g + 2 * r * c * c)
        if s:
            cin = T_DIMS[s - 1]
            assert rows[f"stages.{s}.downsample"] == (2 * cin + 4 * cin * c + c, hw * 4 * cin * c)
            total_macs += hw * 4 * cin * c
    assert spec.check().totals.macs == total_macs == 4_188_634_272


class _InceptionDW(nn.Module):
    def __init__(self, c: int, band: int = 11, ratio: float = 0.125) -> None:
        super().__init__()
        g = int(c * ratio)
        self.sizes = [c - 3 * g, g, g, g]
        self.dwconv_hw = nn.Conv2d(g, g, 3, padding=1, groups=g)
        self.dwconv_w = nn.Conv2d(g, g, (1, band), padding=(0, band // 2), groups=g)
        self.dwconv_h = nn.Conv2d(g, g, (band, 1), padding=(band // 2, 0), groups=g)

    def forward(self, x):
        rest, hw, w, h = torch.split(x, self.sizes, dim=1)
        return torch.cat([rest, self.dwconv_hw(hw), self.dwconv_w(w), self.dwconv_h(h)], dim=1)


class _MetaNeXtBlock(nn.Module):
    def __init__(self, c: int, ratio: int, band: int, branch: float) -> None:
        super().__init__()
        self.token_mixer = _InceptionDW(c, band, branch)
        self.norm = nn.BatchNorm2d(c)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Conv2d(c, ratio * c, 1)
        self.mlp.fc2 = nn.Conv2d(ratio * c, c, 1)
        self.gamma = nn.Parameter(torch.full((c,), 1e-6))

    def forward(self, x):
        y = self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm(self.token_mixer(x)))))
        return x + y * self.gamma.view(1, -1, 1, 1)


class _ReferenceInceptionNeXt(nn.Module):
    """InceptionNeXt with the official module names (stem, stages.N.downsample / blocks, head.fc1/norm/fc2)."""

    def __init__(self, depths, dims, band: int = 11, branch: float = 0.125) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), nn.BatchNorm2d(dims[0]))
        self.stages = nn.Sequential()
        for s, (n, c, r) in enumerate(zip(depths, dims, [4, 4, 4, 3])):
            stage = nn.Module()
            stage.downsample = (nn.Sequential(nn.BatchNorm2d(dims[s - 1]), nn.Conv2d(dims[s - 1], c, 2, 2))
                                if s else nn.Identity())
            stage.blocks = nn.Sequential(*[_MetaNeXtBlock(c, r, band, branch) for _ in range(n)])
            self.stages.add_module(str(s), stage)
        self.head = nn.Module()
        self.head.fc1 = nn.Linear(dims[-1], 3 * dims[-1])
        self.head.norm = nn.LayerNorm(3 * dims[-1], eps=1e-6)
        self.head.fc2 = nn.Linear(3 * dims[-1], 1000)

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage.blocks(stage.downsample(x))
        return self.head.fc2(self.head.norm(F.gelu(self.head.fc1(x.mean((2, 3))))))


@pytest.mark.parametrize("overrides, depths, dims, band, branch, size", [
    pytest.param({"depths": [1, 1, 2, 1], "dims": [32, 64, 96, 128]}, [1, 1, 2, 1], [32, 64, 96, 128], 11,
                 0.125, 64, id="small-dims"),
    pytest.param({"depths": [2, 2, 6, 2], "dims": [40, 80, 160, 320], "band_kernel": 9, "branch_ratio": 0.25},
                 [2, 2, 6, 2], [40, 80, 160, 320], 9, 0.25, 96, id="atto"),
    pytest.param({}, T_DEPTHS, T_DIMS, 11, 0.125, 224, id="tiny", marks=pytest.mark.slow),
])
def test_inceptionnext_equals_an_independent_implementation(overrides, depths, dims, band, branch, size):
    spec = nasforge.load(INCEPTIONNEXT, image_size=size, **overrides)
    assert_same_function(spec, _ReferenceInceptionNeXt(depths, dims, band, branch),
                         lambda k: re.sub(r"\.gamma$", ".gamma.gamma", k), size)


def test_inceptionnext_atto_matches_the_official_count():
    """The official inceptionnext_atto (band 9, branch ratio 0.25; not in the paper's tables): 4,156,520."""
    spec = nasforge.load(INCEPTIONNEXT, depths=[2, 2, 6, 2], dims=[40, 80, 160, 320], band_kernel=9,
                         branch_ratio=0.25)
    assert spec.check().totals.params == 4_156_520
    assert spec.check().totals.macs == 503_035_040


# -- PoolFormer -----------------------------------------------------------------------------------------

def test_poolformer_s12_hand_count_per_stage():
    spec = nasforge.load(POOLFORMER)
    rows = rows_of(spec, depth=2)
    dims, depths = [64, 128, 320, 512], [2, 2, 6, 2]
    assert rows["patch_embed.proj"] == (3 * 64 * 49 + 64, 56 * 56 * 64 * 3 * 49)
    macs = 56 * 56 * 64 * 3 * 49 + 512 * 1000
    for s, (n, c) in enumerate(zip(depths, dims)):
        hw = (56 >> s) ** 2
        block = 2 * 2 * c + (4 * c * c + 4 * c) + (4 * c * c + c) + 2 * c   # 2 GroupNorms, MLP, 2 LayerScales
        assert block == 8 * c * c + 11 * c
        assert rows[f"network.{2 * s}"] == (n * block, n * hw * 8 * c * c), s
        macs += n * hw * 8 * c * c
        if s:
            assert rows[f"network.{2 * s - 1}"] == (9 * dims[s - 1] * c + c, hw * 9 * dims[s - 1] * c)
            macs += hw * 9 * dims[s - 1] * c
    assert rows["norm"] == (2 * 512, 0)
    assert spec.check().totals.macs == macs == 1_812_267_008
    # the pooling token mixer is parameter-free: pool(x) - x keeps the shape
    assert shape_of(spec, "network.4.5.token_mixer.sub") == (1, 320, 14, 14)
    assert spec.graph.nodes["network.0.0.token_mixer.pool"].attrs["count_include_pad"] is False


def test_poolformer_fvcore_figure_is_macs_plus_group_norm_and_pool():
    """The repository's fvcore count (timm's 1.82 GMACs): MACs + 5 per GroupNorm element + pool + head LN.

    fvcore counts timm's port, whose head pools first and normalises the pooled vector (2,560 = 5 x 512).
    """
    spec = nasforge.load(POOLFORMER)
    norms = [n.path for n in spec.graph if n.op == "group_norm" and n.path != "norm"]
    elements = sum(numel_of(spec, p) for p in norms)
    assert len(norms) == 2 * 12
    assert spec.check().totals.macs + 5 * elements + 512 * 7 * 7 + 5 * 512 == 1_822_580_736


def test_poolformer_stochastic_depth_follows_the_global_block_index():
    nodes = nasforge.load(POOLFORMER, drop_path_rate=0.1).graph.nodes
    assert "network.0.0.drop_path1" not in nodes
    assert nodes["network.2.1.drop_path2"].attrs["p"] == pytest.approx(0.1 * 3 / 11)
    assert nodes["network.6.1.drop_path1"].attrs["p"] == pytest.approx(0.1)


class _PoolFormerBlock(nn.Module):
    def __init__(self, c: int, ls_init: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(1, c)
        self.norm2 = nn.GroupNorm(1, c)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Conv2d(c, 4 * c, 1)
        self.mlp.fc2 = nn.Conv2d(4 * c, c, 1)
        self.layer_scale_1 = nn.Parameter(torch.full((c,), ls_init))
        self.layer_scale_2 = nn.Parameter(torch.full((c,), ls_init))

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.layer_scale_1.view(1, -1, 1, 1) * (F.avg_pool2d(y, 3, 1, 1, count_include_pad=False) - y)
        y = self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))
        return x + self.layer_scale_2.view(1, -1, 1, 1) * y


class _ReferencePoolFormer(nn.Module):
    """PoolFormer with the official module names (patch_embed.proj, network.0..6, norm, head)."""

    def __init__(self, depths, dims, ls_init: float = 1e-5) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dims[0], 7, 4, 2)
        self.network = nn.ModuleList()
        for s, (n, c) in enumerate(zip(depths, dims)):
            if s:
                down = nn.Module()
                down.proj = nn.Conv2d(dims[s - 1], c, 3, 2, 1)
                self.network.append(down)
            self.network.append(nn.Sequential(*[_PoolFormerBlock(c, ls_init) for _ in range(n)]))
        self.norm = nn.GroupNorm(1, dims[-1])
        self.head = nn.Linear(dims[-1], 1000)

    def forward(self, x):
        x = self.patch_embed.proj(x)
        for layer in self.network:
            x = layer.proj(x) if hasattr(layer, "proj") else layer(x)
        return self.head(self.norm(x).mean((2, 3)))


@pytest.mark.parametrize("variant, depths, dims, size", [
    pytest.param("poolformer_s12", [2, 2, 6, 2], [64, 128, 320, 512], 96, id="s12"),
    pytest.param("poolformer_m36", [6, 6, 18, 6], [96, 192, 384, 768], 224, id="m36", marks=pytest.mark.slow),
])
def test_poolformer_equals_an_independent_implementation(variant, depths, dims, size):
    spec = nasforge.load(POOLFORMER, variant=variant, image_size=size)
    assert_same_function(spec, _ReferencePoolFormer(depths, dims),
                         lambda k: re.sub(r"\.(layer_scale_\d)$", r".\1.gamma", k), size)


# -- show -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, depth, present, absent", [
    pytest.param(CONVNEXT, 2, ["stem.0", "stages.2", "11,112,960", "head.fc", "28,589,128"],
                 ["stages.2.blocks.0.conv_dw"], id="convnext"),
    pytest.param(INCEPTIONNEXT, 3, ["stages.1.downsample", "stages.2.blocks", "head.fc1", "28,055,680"],
                 ["token_mixer.dwconv_hw"], id="inceptionnext"),
    pytest.param(POOLFORMER, 2, ["patch_embed.proj", "network.4", "network.5", "4,936,320", "11,915,176"],
                 ["network.4.0.norm1"], id="poolformer"),
])
def test_show_folds_stages(capsys, path, depth, present, absent):
    assert cli_main(["show", str(path), "--depth", str(depth)]) == 0
    out = capsys.readouterr().out
    for text in present:
        assert text in out, text
    for text in absent:
        assert text not in out, text


def test_show_selects_a_variant(capsys):
    assert cli_main(["show", str(CONVNEXT), "--variant", "convnext_base", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "88,591,464" in out and "[B, 1024, 7, 7]" in out
