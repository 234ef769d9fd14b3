"""The residual CNN family: ResNet-18..152, ResNeXt-50/101, Wide ResNet-50-2 and SE-ResNet-50.

The generic harness (``test_model_specs.py``) loads, checks, builds, runs and exports every spec and
variant and holds it to its ``paper:`` numbers (MACs within 1%). Here: the exact counts of every
variant (so a change to an op that moves a count by a single MAC fails), hand counts per stage, the
layout knobs the papers disagree on (where the bottleneck strides, Caffe's stem pool), stochastic depth,
``nasforge show``, and a numerical comparison of each built network with an independent PyTorch
implementation written here from the papers' descriptions (and, where the papers leave a detail open,
from the authors' released models), loading the same random state_dict.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import nasforge
from nasforge.cli import main as cli_main
from tests.specs.weights import small_random_state

MODELS = Path(__file__).resolve().parents[2] / "specs" / "models"
RESNET = MODELS / "resnet.yaml"
RESNEXT = MODELS / "resnext50_32x4d.yaml"
WIDE = MODELS / "wide_resnet50_2.yaml"
SE = MODELS / "se_resnet50.yaml"

# The first 1x1 conv of layer2..4's first bottleneck runs at 4x the pixels when the 3x3 conv strides
# (torchvision's "v1.5") instead of the 1x1 (the papers' Caffe models): 56*56*256*128 vs 28*28*256*128
# MACs, and the same for layer3 and layer4.
V1_5_EXTRA_MACS = 3 * (56 * 56 - 28 * 28) * 256 * 128
# SE-ResNet-50's 16 SE modules: two 1x1 convs C -> C/16 -> C (with biases) per block.
SE_WEIGHTS = sum(n * 2 * c * c // 16 for n, c in ((3, 256), (4, 512), (6, 1024), (3, 2048)))
SE_BIASES = sum(n * (c + c // 16) for n, c in ((3, 256), (4, 512), (6, 1024), (3, 2048)))


def params_of(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- exact counts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path, variant, params, macs", [
    pytest.param(RESNET, "resnet18", 11_689_512, 1_814_073_344, id="resnet18"),
    pytest.param(RESNET, "resnet34", 21_797_672, 3_663_761_408, id="resnet34"),
    pytest.param(RESNET, "resnet50", 25_557_032, 4_089_184_256, id="resnet50"),
    pytest.param(RESNET, "resnet101", 44_549_160, 7_801_405_440, id="resnet101"),
    pytest.param(RESNET, "resnet152", 60_192_808, 11_513_626_624, id="resnet152"),
    pytest.param(RESNEXT, "resnext50_32x4d", 25_028_904, 4_230_479_872, id="resnext50_32x4d"),
    pytest.param(RESNEXT, "resnext101_32x4d", 44_177_704, 7_969_996_800, id="resnext101_32x4d"),
    pytest.param(RESNEXT, "resnext101_64x4d", 83_455_272, 15_460_270_080, id="resnext101_64x4d"),
    pytest.param(WIDE, None, 68_883_240, 11_398_021_120, id="wide_resnet50_2"),
    pytest.param(SE, "se_resnet50", 28_088_024, 3_860_488_192, id="se_resnet50"),
    pytest.param(SE, "seresnet50", 28_088_024, 4_091_699_200, id="seresnet50"),
])
def test_exact_counts(path, variant, params, macs):
    """Parameters: torchvision's num_params / timm's parameter counts, exactly. MACs: counted by hand
    (convolutions and linear layers, one 224x224 sample); the published figures they are within 1% of
    are in each spec's notes."""
    spec = nasforge.load(path, variant=variant) if variant else nasforge.load(path)
    totals = spec.check().totals
    assert (totals.params, totals.macs) == (params, macs)


def test_resnet18_hand_count_per_stage():
    spec = nasforge.load(RESNET)
    rows = {r.path: (r.params, r.macs) for r in spec.summary(depth=1).rows}
    # stem: 3*64*7*7 conv + 2*64 BN; MACs 112*112*64*(3*7*7)
    assert rows["conv1"] == (9_408, 118_013_952)
    assert rows["bn1"][0] == 128
    # layer1: 2 blocks x (2 x 64*64*9 + 2 x 2*64); MACs 4 x 56*56*64*(64*9)
    assert rows["layer1"] == (147_968, 462_422_016)
    # layer2: block 0 = 64*128*9 + 128*128*9 + 2*256 + shortcut 64*128 + 256; block 1 = 2 x 128*128*9 + 2*256
    assert rows["layer2"][0] == (73_728 + 147_456 + 512 + 8_192 + 256) + (2 * 147_456 + 512) == 525_568
    assert rows["layer3"][0] == (294_912 + 589_824 + 1_024 + 32_768 + 512) + (2 * 589_824 + 1_024) == 2_099_712
    layer4 = (1_179_648 + 2_359_296 + 2_048 + 131_072 + 1_024) + (2 * 2_359_296 + 2_048)
    assert rows["layer4"][0] == layer4 == 8_393_728
    # 28*28*128*(64*9) + 3 x 28*28*128*(128*9) + 28*28*128*64: the same for layers 2-4
    assert rows["layer2"][1] == rows["layer3"][1] == rows["layer4"][1] == 411_041_792
    assert rows["fc"] == (513_000, 512_000)
    totals = spec.check().totals
    assert totals.macs == 118_013_952 + 462_422_016 + 3 * 411_041_792 + 512_000 == 1_814_073_344


def test_resnet50_hand_count_of_a_bottleneck_stage():
    rows = {r.path: (r.params, r.macs) for r in nasforge.load(RESNET, variant="resnet50").summary(depth=2).rows}
    # layer1.0: 64->64 1x1, 64->64 3x3, 64->256 1x1, shortcut 64->256 1x1; BN 2*(64 + 64 + 256 + 256)
    assert rows["layer1.0"][0] == 4_096 + 36_864 + 16_384 + 16_384 + 1_280 == 75_008
    assert rows["layer1.0"][1] == 56 * 56 * (4_096 + 36_864 + 16_384 + 16_384) == 231_211_008
    # layer1.1: 256->64 1x1, 64->64 3x3, 64->256 1x1, identity shortcut
    assert rows["layer1.1"][0] == 16_384 + 36_864 + 16_384 + 768 == 70_400
    # layer2.0 (v1.5): the 1x1 at 56x56, the strided 3x3 and everything after at 28x28
    assert rows["layer2.0"][1] == 56 * 56 * 256 * 128 + 28 * 28 * (128 * 128 * 9 + 128 * 512 + 256 * 512)


def test_resnext_and_wide_resnet_widen_the_bottleneck():
    nodes = nasforge.load(RESNEXT).graph.nodes
    # 32 groups of 4 channels per 64 of base width: 128 in layer1, 1024 in layer4; outputs as ResNet-50
    assert nodes["layer1.0.conv2"].attrs["groups"] == 32
    assert nodes["layer1.0.conv1"].attrs["out"] == 128 and nodes["layer4.2.conv2"].attrs["out"] == 1024
    assert nodes["layer4.2.conv3"].attrs["out"] == 2048
    # grouped 3x3: 128 * (128 / 32) * 9 weights; layer1 = 3 blocks of 1x1 + grouped 3x3 + 1x1 (+ shortcut)
    rows = {r.path: r.params for r in nasforge.load(RESNEXT).summary().rows}
    assert rows["layer1.0.conv2"] == 128 * 4 * 9 == 4_608
    wide = nasforge.load(WIDE).graph.nodes
    # twice ResNet-50's inner width, in the first 1x1 as in the 3x3 (the authors' WRN-50-2 printout)
    assert [wide[f"layer{s}.0.conv1"].attrs["out"] for s in (1, 2, 3, 4)] == [128, 256, 512, 1024]
    assert [wide[f"layer{s}.0.conv3"].attrs["out"] for s in (1, 2, 3, 4)] == [256, 512, 1024, 2048]
    assert nasforge.load(WIDE, width_factor=1).check().totals == nasforge.load(RESNET, variant="resnet50").check().totals


def test_se_resnet50_is_resnet50_v1_plus_squeeze_excite():
    se = nasforge.load(SE).check().totals
    plain = nasforge.load(SE, se_reduction=0).check().totals
    resnet50 = nasforge.load(RESNET, variant="resnet50").check().totals
    # without SE: ResNet-50's parameters; the stride on the 1x1 saves the v1.5 extra MACs
    assert plain.params == resnet50.params == 25_557_032
    assert plain.macs == resnet50.macs - V1_5_EXTRA_MACS == 3_857_973_248
    # SE: C*C/16 * 2 weights per block (= MACs at 1x1) plus C/16 + C biases
    assert (SE_WEIGHTS, SE_BIASES) == (2_514_944, 16_048)
    assert se.params == plain.params + SE_WEIGHTS + SE_BIASES == 28_088_024
    assert se.macs == plain.macs + SE_WEIGHTS
    timm_layout = nasforge.load(SE, variant="seresnet50").check().totals
    assert timm_layout.params == se.params and timm_layout.macs == se.macs + V1_5_EXTRA_MACS
    rows = {r.path: r.params for r in nasforge.load(SE).summary().rows}
    assert rows["layer4.0.se.fc1"] == 2048 * 128 + 128 and rows["layer4.0.se.fc2"] == 128 * 2048 + 2048
    assert rows["layer1.2.se.fc1"] == 256 * 16 + 16


def test_se_resnet50_caffe_layout():
    nodes = nasforge.load(SE).graph.nodes
    assert nodes["layer2.0.conv1"].attrs["stride"] == 2 and nodes["layer2.0.conv2"].attrs["stride"] == 1
    assert nodes["maxpool"].attrs["padding"] == 0 and nodes["maxpool"].attrs["ceil_mode"] is True
    timm = nasforge.load(SE, variant="seresnet50").graph.nodes
    assert timm["layer2.0.conv1"].attrs["stride"] == 1 and timm["layer2.0.conv2"].attrs["stride"] == 2
    assert timm["maxpool"].attrs["padding"] == 1 and timm["maxpool"].attrs["ceil_mode"] is False
    # SE sits after bn3, before the residual addition
    assert nodes["layer1.0.se.pool"].inputs[0].node == "layer1.0.bn3"
    assert nodes["layer1.0.add"].inputs[0].node == "layer1.0.se.scale"


# -- an independent implementation ------------------------------------------------------------------

class _SqueezeExcite(nn.Module):
    """SENet Fig. 3: global average pool, 1x1 conv to C/r, ReLU, 1x1 conv to C, sigmoid, scale."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class _Block(nn.Module):
    """A residual block from the papers: ResNet's basic block (Fig. 2 left) or bottleneck (Fig. 5 right),
    with ResNeXt's grouped 3x3 (form (c) of Fig. 3), WRN's wider inner convs, an SE module on the
    residual branch, and the stride on the 3x3 (v1.5) or the first 1x1 (the Caffe models)."""

    def __init__(self, cin: int, planes: int, stride: int, bottleneck: bool, groups: int = 1,
                 base_width: int = 64, se: int = 0, stride_in_1x1: bool = False) -> None:
        super().__init__()
        out = planes * 4 if bottleneck else planes
        if bottleneck:
            width = planes * base_width // 64 * groups
            s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
            self.convs = [("conv1", nn.Conv2d(cin, width, 1, s1, bias=False), "bn1", width),
                          ("conv2", nn.Conv2d(width, width, 3, s3, 1, groups=groups, bias=False), "bn2", width),
                          ("conv3", nn.Conv2d(width, out, 1, bias=False), "bn3", out)]
        else:
            self.convs = [("conv1", nn.Conv2d(cin, planes, 3, stride, 1, bias=False), "bn1", planes),
                          ("conv2", nn.Conv2d(planes, planes, 3, 1, 1, bias=False), "bn2", planes)]
        for conv_name, conv, bn_name, channels in self.convs:
            self.add_module(conv_name, conv)
            self.add_module(bn_name, nn.BatchNorm2d(channels))
        self.se = _SqueezeExcite(out, out // se) if se else None
        self.downsample = (nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                           if stride != 1 or cin != out else None)

    def forward(self, x):
        y = x
        for k, (conv_name, _, bn_name, _) in enumerate(self.convs):
            y = getattr(self, bn_name)(getattr(self, conv_name)(y))
            if k < len(self.convs) - 1:
                y = torch.relu(y)
        if self.se is not None:
            y = self.se(y)
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class _ReferenceResNet(nn.Module):
    """ResNet (He et al.) for ImageNet: 7x7/2 conv, BN, ReLU, 3x3/2 max pool (torchvision's padded one,
    or Caffe's unpadded with the output size rounded up), four stages, global average pool, fc."""

    def __init__(self, depths: list[int], bottleneck: bool, caffe_pool: bool = False, **block) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 0, ceil_mode=True) if caffe_pool else nn.MaxPool2d(3, 2, 1)
        cin = 64
        for s, (n, planes) in enumerate(zip(depths, (64, 128, 256, 512))):
            blocks = []
            for i in range(n):
                blocks.append(_Block(cin, planes, 2 if i == 0 and s > 0 else 1, bottleneck, **block))
                cin = planes * (4 if bottleneck else 1)
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, 1000)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


BASIC = {"bottleneck": False}
BOTTLENECK = {"bottleneck": True}


@pytest.mark.parametrize("path, variant, size, reference", [
    pytest.param(RESNET, "resnet18", 64, dict(depths=[2, 2, 2, 2], **BASIC), id="resnet18"),
    pytest.param(RESNET, "resnet34", 64, dict(depths=[3, 4, 6, 3], **BASIC), id="resnet34"),
    pytest.param(RESNET, "resnet50", 64, dict(depths=[3, 4, 6, 3], **BOTTLENECK), id="resnet50"),
    pytest.param(RESNEXT, "resnext50_32x4d", 64, dict(depths=[3, 4, 6, 3], groups=32, base_width=4, **BOTTLENECK),
                 id="resnext50_32x4d"),
    pytest.param(WIDE, None, 64, dict(depths=[3, 4, 6, 3], base_width=128, **BOTTLENECK), id="wide_resnet50_2",
                 marks=pytest.mark.slow),
    # an odd size, where Caffe's unpadded ceil-mode stem pool and torchvision's padded one differ in alignment
    pytest.param(SE, "se_resnet50", 97, dict(depths=[3, 4, 6, 3], se=16, stride_in_1x1=True, caffe_pool=True,
                                             **BOTTLENECK), id="se_resnet50"),
    pytest.param(SE, "seresnet50", 64, dict(depths=[3, 4, 6, 3], se=16, **BOTTLENECK), id="seresnet50"),
])
def test_equals_an_independent_implementation(path, variant, size, reference):
    """The same state_dict keys, in the same order and shapes (torchvision's / timm's), and the same
    outputs from the same weights, at a resolution below the papers' 224."""
    spec = nasforge.load(path, variant=variant, image_size=size) if variant else nasforge.load(path, image_size=size)
    gm = spec.build()
    ref = _ReferenceResNet(**reference).eval()
    assert [(k, v.shape) for k, v in gm.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    state = small_random_state(ref)
    ref.load_state_dict(state)
    gm.load_state_dict(state)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(x)
        torch.testing.assert_close(gm(x), expected)
    assert expected.std() > 1e-3   # not a comparison of two constants


# -- stochastic depth ------------------------------------------------------------------------------

def test_resnet_stochastic_depth_rates():
    rate = 0.1
    spec = nasforge.load(RESNET, drop_path_rate=rate)
    nodes = spec.graph.nodes
    blocks = [f"layer{s + 1}.{i}" for s in range(4) for i in range(2)]
    # block k of 8 drops its residual branch with p = rate * k / 7; block 0 (p = 0) has no drop_path node
    assert f"{blocks[0]}.drop_path" not in nodes
    for k, block in enumerate(blocks[1:], start=1):
        assert nodes[f"{block}.drop_path"].attrs["p"] == pytest.approx(rate * k / 7)
    assert nodes["layer4.1.drop_path"].attrs["p"] == pytest.approx(rate)
    # stochastic depth adds no parameters and, in eval mode, changes nothing
    plain = nasforge.load(RESNET).build()
    with_dp = spec.build()
    assert params_of(with_dp) == params_of(plain)
    with_dp.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(with_dp(x), plain(x))
    # ResNet-50 depths: 16 blocks, the last at the full rate
    deep = nasforge.load(RESNET, variant="resnet50", drop_path_rate=0.2).graph.nodes
    assert deep["layer2.0.drop_path"].attrs["p"] == pytest.approx(0.2 * 3 / 15)
    assert deep["layer4.2.drop_path"].attrs["p"] == pytest.approx(0.2)


@pytest.mark.parametrize("path", [RESNEXT, WIDE, SE], ids=lambda p: p.stem)
def test_bottleneck_specs_take_stochastic_depth(path):
    nodes = nasforge.load(path, drop_path_rate=0.3).graph.nodes
    assert "layer1.0.drop_path" not in nodes
    assert nodes["layer3.0.drop_path"].attrs["p"] == pytest.approx(0.3 * 7 / 15)
    assert nodes["layer4.2.drop_path"].attrs["p"] == pytest.approx(0.3)
    # on the residual branch, after SE where there is one, before the addition
    assert nodes["layer4.2.add"].inputs[0].node == "layer4.2.drop_path"
    expected_input = "layer4.2.se.scale" if path == SE else "layer4.2.bn3"
    assert nodes["layer4.2.drop_path"].inputs[0].node == expected_input


# -- nasforge show ---------------------------------------------------------------------------------

def test_show_prints_the_resnet18_table(capsys):
    # by default one row per block instance, torchvision's module names
    assert cli_main(["show", str(RESNET)]) == 0
    out = capsys.readouterr().out
    for text in ("resnet", "conv1", "maxpool", "layer1.0", "layer2.0", "layer4.1", "fc", "[B, 64, 112, 112]",
                 "[B, 512, 7, 7]", "[B, 1000]", "11,689,512", "1.81G", "118.01M", "230,144"):
        assert text in out, text
    assert "layer1.0.conv1" not in out
    assert cli_main(["show", str(RESNET), "--depth", "0"]) == 0
    every = capsys.readouterr().out
    for text in ("layer1.0.conv1", "layer2.0.downsample.0", "layer4.1.bn2"):
        assert text in every, text
    assert cli_main(["show", str(RESNET), "--depth", "1"]) == 0
    folded = capsys.readouterr().out
    assert "layer3" in folded and "2,099,712" in folded and "layer3.0" not in folded


def test_show_folds_se_resnet50_blocks(capsys):
    assert cli_main(["show", str(SE)]) == 0
    out = capsys.readouterr().out
    assert "layer4.2" in out and "layer4.2.se.fc1" not in out and "28,088,024" in out
    assert cli_main(["show", str(SE), "--variant", "seresnet50", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "seresnet50" in out and "layer4" in out and "layer4.2" not in out and "4.09G" in out
