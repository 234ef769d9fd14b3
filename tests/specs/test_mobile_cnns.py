"""The mobile CNN specs: MobileNetV2, MobileNetV3-Large, EfficientNet-B0..B7 and RepVGG.

Each is compared numerically with a small PyTorch implementation written here from the papers' tables
(MobileNetV2 Table 2, MobileNetV3 Table 1, EfficientNet Table 1 plus the reference code's scaling table,
RepVGG Section 3 / Table 2) with timm's module names (the RepVGG authors' names for RepVGG): the same
state_dict keys and shapes, and the same outputs with the same random weights. Hand counts per stage,
the width / depth / resolution rules, the family members' parameter counts (torchvision's num_params,
the RepVGG authors' code) and forward passes at smaller resolutions complete the picture.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import nasforge
from nasforge.cli import main as cli_main
from nasforge.compiler.reparam import reparameterize

ROOT = Path(__file__).resolve().parents[2]
V2 = ROOT / "specs" / "models" / "mobilenet_v2.yaml"
V3 = ROOT / "specs" / "models" / "mobilenet_v3_large.yaml"
EFFNET = ROOT / "specs" / "models" / "efficientnet.yaml"
REPVGG = ROOT / "specs" / "models" / "repvgg_a0.yaml"


def params_of(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make_divisible(v: float, divisor: int = 8) -> int:
    """The MobileNet channel rule, written out: nearest multiple of divisor, never 10% below v."""
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


def randomize(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights and BN statistics, scaled so activations stay of order one."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if not value.is_floating_point():
            state[key] = value
        elif "running_var" in key:
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif "running_mean" in key or key.endswith("bias"):
            state[key] = 0.1 * torch.randn(value.shape, generator=gen)
        elif value.dim() == 1:
            state[key] = 0.3 + 0.3 * torch.rand(value.shape, generator=gen)
        else:
            state[key] = torch.randn(value.shape, generator=gen) * (2 / value[0].numel()) ** 0.5
    return state


def assert_same_network(gm: nn.Module, ref: nn.Module, size: int, atol: float = 1e-5) -> None:
    """Same state_dict keys and shapes (in order), and the same outputs with the same random weights."""
    ref.eval()
    assert [(k, v.shape) for k, v in gm.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    state = randomize(ref)
    ref.load_state_dict(state)
    gm.load_state_dict(state)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(x)
        assert expected.abs().max() > 1e-3
        torch.testing.assert_close(gm(x), expected, rtol=1e-4, atol=atol)


# -- an independent implementation of the inverted-bottleneck family -------------------------------------

ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "silu": nn.SiLU,
        "sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid}


class SE(nn.Module):
    def __init__(self, dim: int, squeeze: int, act: str, gate: str) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(dim, squeeze, 1)
        self.act1 = ACTS[act]()
        self.conv_expand = nn.Conv2d(squeeze, dim, 1)
        self.gate = ACTS[gate]()

    def forward(self, x):
        return x * self.gate(self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True)))))


class Bottleneck(nn.Module):
    """Optional 1x1 expansion (conv_pw/bn1), depthwise (conv_dw/bn2), optional SE, linear 1x1 projection."""

    def __init__(self, cin: int, mid: int, cout: int, kernel: int, stride: int, act: str,
                 se: tuple | None = None, eps: float = 1e-5) -> None:
        super().__init__()
        self.expand = mid != cin
        self.residual = stride == 1 and cin == cout
        dw_bn, pw_bn = ("bn2", "bn3") if self.expand else ("bn1", "bn2")
        if self.expand:
            self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(mid, eps=eps)
        self.conv_dw = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self.add_module(dw_bn, nn.BatchNorm2d(mid, eps=eps))
        self.se = SE(mid, *se) if se else nn.Identity()
        self.add_module("conv_pwl" if self.expand else "conv_pw", nn.Conv2d(mid, cout, 1, bias=False))
        self.add_module(pw_bn, nn.BatchNorm2d(cout, eps=eps))
        self.names = (dw_bn, "conv_pwl" if self.expand else "conv_pw", pw_bn)
        self.act = ACTS[act]()

    def forward(self, x):
        dw_bn, proj, pw_bn = (getattr(self, n) for n in self.names)
        y = self.act(self.bn1(self.conv_pw(x))) if self.expand else x
        y = self.se(self.act(dw_bn(self.conv_dw(y))))
        y = pw_bn(proj(y))
        return x + y if self.residual else y


class MobileNet(nn.Module):
    """conv_stem/bn1, stages of Bottlenecks under blocks.S.K, then the head given by ``head``."""

    def __init__(self, stem: int, stages: list[list[tuple]], act: str, head: int, classes: int = 1000,
                 v3_head: tuple | None = None, eps: float = 1e-5) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(3, stem, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, eps=eps)
        self.act = ACTS[act]()
        self.blocks = nn.Sequential(*[nn.Sequential(*[Bottleneck(*row, eps=eps) for row in stage])
                                      for stage in stages])
        last = stages[-1][-1][2]
        self.v3 = v3_head is not None
        if self.v3:            # MobileNetV3: 1x1 conv + BN + act as a last stage, pool, 1x1 conv with bias
            final = nn.Module()
            final.conv = nn.Conv2d(last, v3_head[0], 1, bias=False)
            final.bn1 = nn.BatchNorm2d(v3_head[0], eps=eps)
            self.blocks.append(nn.Sequential(final))
            self.conv_head = nn.Conv2d(v3_head[0], head, 1)
        else:
            self.conv_head = nn.Conv2d(last, head, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(head, eps=eps)
        self.classifier = nn.Linear(head, classes)

    def forward(self, x):
        x = self.act(self.bn1(self.conv_stem(x)))
        if self.v3:
            for stage in self.blocks[:-1]:
                x = stage(x)
            final = self.blocks[-1][0]
            x = self.act(final.bn1(final.conv(x))).mean((2, 3), keepdim=True)
            x = self.act(self.conv_head(x)).flatten(1)
        else:
            x = self.act(self.bn2(self.conv_head(self.blocks(x)))).mean((2, 3))
        return self.classifier(x)


def mobilenet_v2_reference(width: float = 1.0) -> MobileNet:
    """MobileNetV2, the paper's Table 2: (t, c, n, s) per stage, widths through make_divisible."""
    table = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1)]
    cin = stem = make_divisible(32 * width)
    stages = []
    for t, c, n, s in table:
        cout = make_divisible(c * width)
        stages.append([(cin if i == 0 else cout, (cin if i == 0 else cout) * t, cout, 3, s if i == 0 else 1,
                        "relu6") for i in range(n)])
        cin = cout
    return MobileNet(stem, stages, "relu6", make_divisible(1280 * max(1.0, width)))


# MobileNetV3-Large, the paper's Table 1: kernel, exp size, #out, SE, NL, stride, per bneck
V3_TABLE = [(3, 16, 16, False, "relu", 1),
            (3, 64, 24, False, "relu", 2), (3, 72, 24, False, "relu", 1),
            (5, 72, 40, True, "relu", 2), (5, 120, 40, True, "relu", 1), (5, 120, 40, True, "relu", 1),
            (3, 240, 80, False, "hardswish", 2), (3, 200, 80, False, "hardswish", 1),
            (3, 184, 80, False, "hardswish", 1), (3, 184, 80, False, "hardswish", 1),
            (3, 480, 112, True, "hardswish", 1), (3, 672, 112, True, "hardswish", 1),
            (5, 672, 160, True, "hardswish", 2), (5, 960, 160, True, "hardswish", 1),
            (5, 960, 160, True, "hardswish", 1)]


def mobilenet_v3_reference(width: float = 1.0) -> MobileNet:
    """Stages group the bnecks of equal output width (timm's layout)."""
    cin = stem = make_divisible(16 * width)
    stages: list[list[tuple]] = []
    for k, exp, out, se, act, s in V3_TABLE:
        cout, mid = make_divisible(out * width), make_divisible(exp * width)
        squeeze = (make_divisible(mid // 4), "relu", "hardsigmoid") if se else None
        row = (cin, mid, cout, k, s, act, squeeze)
        if stages and stages[-1][-1][2] == cout and s == 1:
            stages[-1].append(row)
        else:
            stages.append([row])
        cin = cout
    return MobileNet(stem, stages, "hardswish", make_divisible(1280 * width), v3_head=(6 * cin,), eps=1e-3)


# EfficientNet-B0, the paper's Table 1: expansion, kernel, stride, channels, layers per MBConv stage
B0_TABLE = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
            (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
# the reference code's (width, depth, resolution) per variant
SCALING = {"efficientnet_b0": (1.0, 1.0, 224), "efficientnet_b1": (1.0, 1.1, 240),
           "efficientnet_b2": (1.1, 1.2, 260), "efficientnet_b3": (1.2, 1.4, 300),
           "efficientnet_b4": (1.4, 1.8, 380), "efficientnet_b5": (1.6, 2.2, 456),
           "efficientnet_b6": (1.8, 2.6, 528), "efficientnet_b7": (2.0, 3.1, 600)}


def efficientnet_reference(width: float, depth: float, eps: float = 1e-5) -> MobileNet:
    """round_filters = make_divisible(c * width, 8), round_repeats = ceil(n * depth); SE squeezes the
    block input by 4 with SiLU and a sigmoid gate."""
    cin = stem = make_divisible(32 * width)
    stages = []
    for e, k, s, c, n in B0_TABLE:
        cout = make_divisible(c * width)
        rows = []
        for i in range(math.ceil(n * depth)):
            block_in = cin if i == 0 else cout
            rows.append((block_in, block_in * e, cout, k, s if i == 0 else 1, "silu",
                         (max(1, block_in // 4), "silu", "sigmoid")))
        stages.append(rows)
        cin = cout
    return MobileNet(stem, stages, "silu", make_divisible(1280 * width), eps=eps)


# -- MobileNetV2 ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("width, size", [(1.0, 224), (0.5, 96), (1.4, 64)])
def test_mobilenet_v2_equals_an_independent_implementation(width, size):
    assert_same_network(nasforge.load(V2, width_mult=width, image_size=size).build(),
                        mobilenet_v2_reference(width), size)


def ir_params(cin: int, mid: int, cout: int, k: int = 3, squeeze: int = 0) -> int:
    """An inverted residual: 1x1 expansion, depthwise kxk, SE (two 1x1 convs with bias), 1x1 projection,
    and a BN (2 parameters per channel) after each conv."""
    expand = cin * mid + 2 * mid if mid != cin else 0
    se = (mid * squeeze + squeeze) + (squeeze * mid + mid) if squeeze else 0
    return expand + (mid * k * k + 2 * mid) + se + (mid * cout + 2 * cout)


def test_mobilenet_v2_hand_count_per_stage():
    spec = nasforge.load(V2)
    rows = {r.path: (r.params, r.macs) for r in spec.summary(depth=2).rows}
    assert rows["conv_stem"] == (3 * 32 * 9, 112 * 112 * 32 * 27)
    assert rows["blocks.0"][0] == ir_params(32, 32, 16) == 896
    assert rows["blocks.1"][0] == ir_params(16, 96, 24) + ir_params(24, 144, 24) == 13_968
    assert rows["blocks.2"][0] == ir_params(24, 144, 32) + 2 * ir_params(32, 192, 32) == 39_696
    assert rows["blocks.3"][0] == ir_params(32, 192, 64) + 3 * ir_params(64, 384, 64) == 183_872
    assert rows["blocks.4"][0] == ir_params(64, 384, 96) + 2 * ir_params(96, 576, 96) == 303_168
    assert rows["blocks.5"][0] == ir_params(96, 576, 160) + 2 * ir_params(160, 960, 160) == 795_264
    assert rows["blocks.6"][0] == ir_params(160, 960, 320) == 473_920
    assert rows["conv_head"] == (320 * 1280, 7 * 7 * 320 * 1280)
    assert rows["classifier"] == (1280 * 1000 + 1000, 1_280_000)
    # the first stage at 112x112: depthwise 3x3 then 1x1 to 16 channels
    assert rows["blocks.0"][1] == 112 * 112 * (32 * 9 + 32 * 16)
    assert spec.check().totals.macs == 300_774_272


@pytest.mark.parametrize("width, params", [(0.35, 1_677_128), (0.5, 1_968_680), (0.75, 2_636_424),
                                           (1.0, 3_504_872), (1.4, 6_108_776)])
def test_mobilenet_v2_width_multipliers(width, params):
    """torchvision's mobilenet_v2(width_mult=...) parameter counts (the last conv never below 1280)."""
    assert nasforge.load(V2, width_mult=width).check().totals.params == params


# -- MobileNetV3-Large ---------------------------------------------------------------------------------

@pytest.mark.parametrize("width, size", [(1.0, 224), (0.75, 96)])
def test_mobilenet_v3_large_equals_an_independent_implementation(width, size):
    assert_same_network(nasforge.load(V3, width_mult=width, image_size=size).build(),
                        mobilenet_v3_reference(width), size)


def test_mobilenet_v3_large_counts_and_se_widths():
    spec = nasforge.load(V3)
    nodes = spec.graph.nodes
    out_channels = {p: n.attrs["out"] for p, n in nodes.items() if n.op == "conv2d"}
    # SE squeezes the expanded width: make_divisible(exp / 4, 8)
    assert out_channels["blocks.2.0.se.conv_reduce"] == 24      # 72 / 4 = 18 -> 24
    assert out_channels["blocks.2.1.se.conv_reduce"] == 32      # 120 / 4 = 30 -> 32
    assert out_channels["blocks.5.2.se.conv_reduce"] == 240     # 960 / 4
    assert "blocks.3.0.se.conv_reduce" not in nodes             # no SE in the 80-channel stage
    assert nodes["blocks.3.0.act1"].op == "hardswish" and nodes["blocks.1.0.act1"].op == "relu"
    assert nodes["blocks.2.0.se.gate"].op == "hardsigmoid"
    # the first bneck (exp 16 = input) has no expansion and keeps its shortcut
    assert "blocks.0.0.residual" in nodes and "blocks.0.0.conv_pwl" not in nodes
    rows = {r.path: r.params for r in spec.summary(depth=2).rows}
    assert rows["blocks.2"] == (ir_params(24, 72, 40, 5, 24) + 2 * ir_params(40, 120, 40, 5, 32)) == 52_312
    assert rows["conv_head"] == 960 * 1280 + 1280                # torchvision's Linear(960, 1280)
    totals = spec.check().totals
    assert (totals.params, totals.macs) == (5_483_032, 216_589_760)
    # torchvision's mobilenet_v3_large(width_mult=0.75): expansion sizes scale too
    assert nasforge.load(V3, width_mult=0.75).check().totals.params == 3_377_576


# -- EfficientNet --------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant, size", [("efficientnet_b0", 224), ("efficientnet_b3", 64),
                                           pytest.param("efficientnet_b7", 64, marks=pytest.mark.slow)])
def test_efficientnet_equals_an_independent_implementation(variant, size):
    spec = nasforge.load(EFFNET, variant=variant, image_size=size)
    width, depth, _ = SCALING[variant]
    eps = spec.graph.meta["params"]["bn_eps"]
    assert_same_network(spec.build(), efficientnet_reference(width, depth, eps), size)


@pytest.mark.parametrize("variant", list(SCALING))
def test_efficientnet_compound_scaling(variant):
    """Widths, repeats and resolution of each variant follow the rounding rules; counts are
    torchvision's num_params exactly and its _ops (the paper's 1.0B for B2) within 1%."""
    spec = nasforge.load(EFFNET, variant=variant)
    width, depth, size = SCALING[variant]
    params = spec.graph.meta["params"]
    assert params["widths"] == [make_divisible(c * width) for *_, c, _ in B0_TABLE]
    assert params["repeats"] == [math.ceil(n * depth) for *_, n in B0_TABLE]
    assert (params["stem"], params["head"], params["image_size"]) == (make_divisible(32 * width),
                                                                      make_divisible(1280 * width), size)
    totals = spec.check().totals
    assert totals.params == spec.paper["params"]
    assert abs(totals.macs - spec.paper["macs"]) <= 0.01 * spec.paper["macs"]


def test_efficientnet_variant_table():
    assert nasforge.load(EFFNET).variants == list(SCALING)
    expected = {"efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184, "efficientnet_b2": 9_109_994,
                "efficientnet_b3": 12_233_232, "efficientnet_b4": 19_341_616, "efficientnet_b5": 30_389_784,
                "efficientnet_b6": 43_040_704, "efficientnet_b7": 66_347_960}
    assert {v: nasforge.load(EFFNET, variant=v).paper["params"] for v in SCALING} == expected
    b7 = nasforge.load(EFFNET, variant="efficientnet_b7").graph.meta["params"]
    assert b7["widths"] == [32, 48, 80, 160, 224, 384, 640] and b7["repeats"] == [4, 7, 7, 10, 10, 13, 4]


def test_efficientnet_b0_hand_count_per_stage():
    rows = {r.path: r.params for r in nasforge.load(EFFNET).summary(depth=2).rows}
    assert rows["blocks.0"] == ir_params(32, 32, 16, 3, 8) == 1_448
    assert rows["blocks.1"] == ir_params(16, 96, 24, 3, 4) + ir_params(24, 144, 24, 3, 6) == 16_714
    assert rows["blocks.6"] == ir_params(192, 1152, 320, 3, 48) == 717_232
    assert rows["conv_head"] == 320 * 1280 and rows["classifier"] == 1_281_000


def test_efficientnet_stochastic_depth():
    """Block k of the 16 drops its branch with p = 0.2 * k / 16 (only blocks with a shortcut)."""
    nodes = nasforge.load(EFFNET).graph.nodes
    assert not [p for p in nodes if p.startswith("blocks.0.") and "drop_path" in p]
    assert nodes["blocks.1.1.drop_path"].attrs["p"] == pytest.approx(0.2 * 2 / 16)
    assert nodes["blocks.5.3.drop_path"].attrs["p"] == pytest.approx(0.2 * 14 / 16)
    assert "blocks.5.0.drop_path" not in nodes                  # stride 2: no shortcut to drop
    plain = nasforge.load(EFFNET, drop_path_rate=0.0, image_size=64).build()
    with_dp = nasforge.load(EFFNET, image_size=64).build()
    with_dp.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(with_dp(x), plain(x))


# -- RepVGG --------------------------------------------------------------------------------------------

class RepBlock(nn.Module):
    """The paper's training-time block: ReLU(BN(conv3x3 x) + BN(conv1x1 x) [+ BN(x)]), or deployed
    ReLU(conv3x3 x + b)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, deploy: bool) -> None:
        super().__init__()
        if deploy:
            self.rbr_reparam = nn.Conv2d(cin, cout, 3, stride, 1, groups=groups)
            return
        self.rbr_identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        for name, k in (("rbr_dense", 3), ("rbr_1x1", 1)):
            branch = nn.Sequential()
            branch.add_module("conv", nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False))
            branch.add_module("bn", nn.BatchNorm2d(cout))
            self.add_module(name, branch)

    def forward(self, x):
        if hasattr(self, "rbr_reparam"):
            return torch.relu(self.rbr_reparam(x))
        y = self.rbr_dense(x) + self.rbr_1x1(x)
        return torch.relu(y if self.rbr_identity is None else y + self.rbr_identity(x))


class RepVGGReference(nn.Module):
    """Stage widths min(64, 64a), 64a, 128a, 256a, 512b; the first block of each stage has stride 2;
    the g2/g4 models group the even-numbered layers (2, 4, ..., 26)."""

    def __init__(self, depths, widths, groups: int = 1, deploy: bool = False) -> None:
        super().__init__()
        cin = min(64, int(64 * widths[0]))
        self.stage0 = RepBlock(3, cin, 2, 1, deploy)
        layer = 1
        for s, (n, base, a) in enumerate(zip(depths, (64, 128, 256, 512), widths)):
            blocks = []
            for i in range(n):
                g = groups if layer % 2 == 0 and layer <= 26 else 1
                blocks.append(RepBlock(cin, int(base * a), 2 if i == 0 else 1, g, deploy))
                cin, layer = int(base * a), layer + 1
            self.add_module(f"stage{s + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(cin, 1000)

    def forward(self, x):
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.stage0(x)))))
        return self.linear(x.mean((2, 3)))


REPVGG_FAMILY = {  # variant: (depths, widths, groups, train params, deploy params) from the authors' code
    "repvgg_a0": ([2, 4, 14, 1], [0.75, 0.75, 0.75, 2.5], 1, 9_108_968, 8_309_384),
    "repvgg_a1": ([2, 4, 14, 1], [1, 1, 1, 2.5], 1, 14_092_264, 12_789_864),
    "repvgg_a2": ([2, 4, 14, 1], [1.5, 1.5, 1.5, 2.75], 1, 28_210_600, 25_499_944),
    "repvgg_b0": ([4, 6, 16, 1], [1, 1, 1, 2.5], 1, 15_817_960, 14_339_048),
    "repvgg_b1": ([4, 6, 16, 1], [2, 2, 2, 4], 1, 57_415_016, 51_829_480),
    "repvgg_b1g2": ([4, 6, 16, 1], [2, 2, 2, 4], 2, 45_782_376, 41_360_104),
}


@pytest.mark.parametrize("overrides, deploy", [({}, False), ({}, True),
                                               ({"variant": "repvgg_b1g2", "image_size": 64}, False)])
def test_repvgg_equals_an_independent_implementation(overrides, deploy):
    spec = nasforge.load(REPVGG, deploy=deploy, **overrides)
    p = spec.graph.meta["params"]
    size = p["image_size"] if p["image_size"] < 224 else 96
    assert_same_network(spec.build(), RepVGGReference(p["depths"], p["widths"], p["groups"], deploy), size)


@pytest.mark.parametrize("variant", list(REPVGG_FAMILY))
def test_repvgg_family_counts(variant):
    depths, widths, groups, train, deploy = REPVGG_FAMILY[variant]
    spec = nasforge.load(REPVGG, variant=variant)
    assert spec.graph.meta["params"]["depths"] == depths and spec.graph.meta["params"]["widths"] == widths
    assert spec.check().totals.params == train == spec.paper["params"]
    assert nasforge.load(REPVGG, variant=variant, deploy=True).check().totals.params == deploy


def test_repvgg_a0_structure():
    spec = nasforge.load(REPVGG)
    nodes = spec.graph.nodes
    # identity BN only where the block keeps the shape: never in a stage's first (stride-2) block
    identities = sorted(p for p in nodes if p.endswith("rbr_identity"))
    assert len(identities) == 17 and "stage3.0.rbr_identity" not in nodes and "stage3.1.rbr_identity" in nodes
    assert nodes["stage0.rbr_dense.conv"].attrs["out"] == 48 and nodes["stage4.0.rbr_dense.conv"].attrs["out"] == 1280
    rows = {r.path: r.params for r in spec.summary(depth=1).rows}
    # stage0: 3x3 and 1x1 convs 3 -> 48 with their BNs; stage1 block 0: 48 -> 48, stride 2, no identity
    assert rows["stage0"] == 3 * 48 * 9 + 2 * 48 + 3 * 48 + 2 * 48
    assert rows["linear"] == 1280 * 1000 + 1000
    groups = {p: n.attrs["groups"] for p, n in nasforge.load(REPVGG, variant="repvgg_b1g2").graph.nodes.items()
              if p.endswith("rbr_dense.conv")}
    # layers are numbered from stage1.0 = 1; the even ones up to 26 are grouped
    assert groups["stage1.1.rbr_dense.conv"] == 2 and groups["stage1.0.rbr_dense.conv"] == 1
    assert groups["stage3.15.rbr_dense.conv"] == 2 and groups["stage4.0.rbr_dense.conv"] == 1
    assert sum(g == 2 for g in groups.values()) == 13


def test_repvgg_reparameterize_gives_the_deploy_variant():
    train = nasforge.load(REPVGG, image_size=64).build()
    deploy = reparameterize(train, name="rbr_reparam")
    spec_deploy = nasforge.load(REPVGG, variant="repvgg_a0_deploy", image_size=64)
    assert params_of(deploy) == spec_deploy.paper["params"] == 8_309_384
    assert list(deploy.state_dict()) == list(spec_deploy.build().state_dict())


# -- all four ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, overrides", [(V2, {}), (V3, {}), (EFFNET, {"variant": "efficientnet_b1"}),
                                             (REPVGG, {})])
def test_forward_at_a_smaller_resolution(path, overrides):
    spec = nasforge.load(path, image_size=128, **overrides)
    with torch.no_grad():
        out = spec.build()(torch.randn(1, 3, 128, 128))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_show_folds_stages(capsys):
    assert cli_main(["show", str(EFFNET), "--variant", "efficientnet_b2", "--depth", "2"]) == 0
    out = capsys.readouterr().out
    for text in ("efficientnet_b2", "blocks.6", "conv_head", "[B, 352, 9, 9]", "9,109,994"):
        assert text in out, text
    assert "blocks.6.0.conv_pwl" not in out
