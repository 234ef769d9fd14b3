"""Classic CNNs: VGG, Network in Network, All-CNN-C and DenseNet.

Each spec is held to hand counts per stage (from the layer sizes of the paper / reference code) and to
the reference metadata of its family members, and compared numerically with a small independent PyTorch
implementation written here from the paper and the reference code's layout: the same state_dict (keys
mapped where the reference names modules differently) must give the same outputs, at the spec's
resolution and at a smaller one. Full-size comparisons of the big networks are marked slow.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import nasforge
from tests.specs.weights import fan_in_random_state

MODELS = Path(__file__).resolve().parents[2] / "specs" / "models"
VGG = MODELS / "vgg16.yaml"
NIN = MODELS / "nin.yaml"
ALL_CNN_C = MODELS / "all_cnn_c.yaml"
DENSENET = MODELS / "densenet121.yaml"


def _rows(spec, depth: int | None = None) -> dict[str, tuple[int, int]]:
    return {r.path: (r.params, r.macs) for r in spec.summary(depth=depth).rows}


def _shape(spec, path: str) -> tuple[int, ...]:
    return tuple(spec.graph.nodes[path].outputs[0].concrete_shape({"B": 1}))


def _compare(spec, ref: nn.Module, key_map, sizes: tuple[int, ...], channels: int = 3) -> None:
    """Load one random state_dict into both (ref keys -> spec keys by ``key_map``) and compare outputs."""
    gm = spec.build().eval()
    ref = ref.eval()
    state = fan_in_random_state(ref)
    mapped = {key_map(k): v for k, v in state.items()}
    assert {k: v.shape for k, v in gm.state_dict().items()} == {k: v.shape for k, v in mapped.items()}
    ref.load_state_dict(state)
    gm.load_state_dict(mapped)
    for size in sizes:
        x = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            out, expected = gm(x), ref(x)
        assert expected.abs().max() > 1e-3 and torch.isfinite(expected).all()
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


# -- VGG -----------------------------------------------------------------------------------------------

# torchvision's VGG*_Weights metadata: num_params and _ops (GMACs at 224x224), and the layer count
VGG_FAMILY = {
    "vgg11": (132_863_336, 7.609e9, 8), "vgg11_bn": (132_868_840, 7.609e9, 8),
    "vgg13": (133_047_848, 11.308e9, 10), "vgg13_bn": (133_053_736, 11.308e9, 10),
    "vgg16": (138_357_544, 15.47e9, 13), "vgg16_bn": (138_365_992, 15.47e9, 13),
    "vgg19": (143_667_240, 19.632e9, 16), "vgg19_bn": (143_678_248, 19.632e9, 16),
}


def test_vgg_variants_are_the_torchvision_family():
    assert set(nasforge.load(VGG).variants) == set(VGG_FAMILY)


@pytest.mark.parametrize("name", list(VGG_FAMILY))
def test_vgg_family_matches_torchvision_metadata(name):
    params, macs, convs = VGG_FAMILY[name]
    spec = nasforge.load(VGG, variant=name)
    totals = spec.check().totals
    assert totals.params == params
    assert abs(totals.macs - macs) <= 0.001 * macs
    ops = [n.op for n in spec.graph.nodes.values()]
    assert ops.count("conv2d") == convs and ops.count("linear") == 3
    assert ops.count("batch_norm2d") == (convs if name.endswith("_bn") else 0)


def test_vgg16_hand_count_per_stage():
    spec = nasforge.load(VGG)
    rows = _rows(spec, depth=2)

    def conv(cin, cout, size):  # a 3x3 conv with bias at size x size: (params, MACs)
        return cin * cout * 9 + cout, size * size * cout * cin * 9

    stages = [[(3, 64), (64, 64)], [(64, 128), (128, 128)], [(128, 256)] + [(256, 256)] * 2,
              [(256, 512)] + [(512, 512)] * 2, [(512, 512)] * 3]
    size = 224
    for s, layers in enumerate(stages):
        counts = [conv(cin, cout, size) for cin, cout in layers]
        assert rows[f"stages.{s}"] == (sum(p for p, _ in counts), sum(m for _, m in counts))
        size //= 2
        assert _shape(spec, f"stages.{s}.pool") == (1, layers[-1][1], size, size)
    assert [rows[f"stages.{s}"][0] for s in range(5)] == [38_720, 221_440, 1_475_328, 5_899_776, 7_079_424]
    assert rows["classifier.0"] == (25_088 * 4096 + 4096, 25_088 * 4096)
    assert rows["classifier.3"] == (4096 * 4096 + 4096, 4096 * 4096)
    assert rows["classifier.6"] == (4096 * 1000 + 1000, 4096 * 1000)
    assert spec.check().totals.macs == 15_346_630_656 + 123_633_664


def test_vgg16_bn_adds_a_batchnorm_after_every_conv():
    spec = nasforge.load(VGG, batch_norm=True)
    convs = [p for p, n in spec.graph.nodes.items() if n.op == "conv2d"]
    assert len(convs) == 13
    for path in convs:
        assert spec.graph.nodes[path.replace(".conv", ".bn")].op == "batch_norm2d"
        assert spec.graph.nodes[path].attrs["bias"] is True     # torchvision keeps the bias under BN
    # two parameters per conv channel: 2 x (2*64 + 2*128 + 3*256 + 6*512)
    assert spec.check().totals.params - nasforge.load(VGG).check().totals.params == 8_448


class _ReferenceVGG(nn.Module):
    """torchvision's VGG layout, written out independently: one flat ``features`` Sequential
    (conv [bn] relu ... maxpool), a 7x7 adaptive average pool and the fc6-fc7-fc8 classifier."""

    def __init__(self, depths, widths, batch_norm: bool, fc: int = 4096, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for depth, width in zip(depths, widths):
            for _ in range(depth):
                layers.append(nn.Conv2d(cin, width, 3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU())
                cin = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(nn.Linear(cin * 49, fc), nn.ReLU(), nn.Dropout(),
                                        nn.Linear(fc, fc), nn.ReLU(), nn.Dropout(), nn.Linear(fc, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _vgg_key_map(depths, batch_norm: bool):
    """torchvision's flat ``features.N`` index -> the spec's ``stages.S.layers.K.{conv,bn}``."""
    table, index = {}, 0
    for s, depth in enumerate(depths):
        for k in range(depth):
            table[str(index)] = f"stages.{s}.layers.{k}.conv"
            if batch_norm:
                table[str(index + 1)] = f"stages.{s}.layers.{k}.bn"
            index += 3 if batch_norm else 2
        index += 1  # the max pool

    def key_map(key: str) -> str:
        if key.startswith("features."):
            _, n, leaf = key.split(".", 2)
            return f"{table[n]}.{leaf}"
        return key

    return key_map


@pytest.mark.parametrize("batch_norm", [False, True], ids=["vgg", "vgg_bn"])
def test_vgg_equals_an_independent_torchvision_layout(batch_norm):
    """A narrow VGG-16 (widths / 8, fc 256) at 64x64 and 32x32 (where the 1x1 map is spread to 7x7)."""
    depths, widths = [2, 2, 3, 3, 3], [8, 16, 32, 64, 64]
    spec = nasforge.load(VGG, widths=widths, fc_width=256, batch_norm=batch_norm, image_size=64)
    ref = _ReferenceVGG(depths, widths, batch_norm, fc=256)
    _compare(spec, ref, _vgg_key_map(depths, batch_norm), sizes=(64, 32))


@pytest.mark.slow
@pytest.mark.parametrize("batch_norm", [False, True], ids=["vgg16", "vgg16_bn"])
def test_vgg16_full_size_equals_the_reference(batch_norm):
    depths = [2, 2, 3, 3, 3]
    spec = nasforge.load(VGG, variant="vgg16_bn" if batch_norm else "vgg16")
    ref = _ReferenceVGG(depths, [64, 128, 256, 512, 512], batch_norm)
    _compare(spec, ref, _vgg_key_map(depths, batch_norm), sizes=(224,))


# -- Network in Network --------------------------------------------------------------------------------

class _ReferenceNIN(nn.Module):
    """The authors' cuda-convnet CIFAR-10 definition (NIN/cifar-10_def), written out with its layer
    names: conv1 cccp1 cccp2 pool1, conv2 cccp3 cccp4 pool2, conv3 cccp5 cccp6, global average."""

    def __init__(self, avg_pool2: bool = False) -> None:
        super().__init__()
        self.conv1, self.cccp1, self.cccp2 = nn.Conv2d(3, 192, 5, padding=2), nn.Conv2d(192, 160, 1), nn.Conv2d(160, 96, 1)
        self.conv2, self.cccp3, self.cccp4 = nn.Conv2d(96, 192, 5, padding=2), nn.Conv2d(192, 192, 1), nn.Conv2d(192, 192, 1)
        self.conv3, self.cccp5, self.cccp6 = nn.Conv2d(192, 192, 3, padding=1), nn.Conv2d(192, 192, 1), nn.Conv2d(192, 10, 1)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.pool2 = nn.AvgPool2d(3, 2, ceil_mode=True) if avg_pool2 else nn.MaxPool2d(3, 2, ceil_mode=True)

    def forward(self, x):
        r = torch.relu
        x = self.pool1(r(self.cccp2(r(self.cccp1(r(self.conv1(x)))))))
        x = self.pool2(r(self.cccp4(r(self.cccp3(r(self.conv2(x)))))))
        x = r(self.cccp6(r(self.cccp5(r(self.conv3(x))))))
        return x.mean((2, 3))


_NIN_NAMES = {"conv1": "mlpconv1.conv", "cccp1": "mlpconv1.cccp1", "cccp2": "mlpconv1.cccp2",
              "conv2": "mlpconv2.conv", "cccp3": "mlpconv2.cccp1", "cccp4": "mlpconv2.cccp2",
              "conv3": "mlpconv3.conv", "cccp5": "mlpconv3.cccp1", "cccp6": "mlpconv3.cccp2"}


def _nin_key_map(key: str) -> str:
    layer, leaf = key.split(".")
    return f"{_NIN_NAMES[layer]}.{leaf}"


@pytest.mark.parametrize("variant", ["nin", "nin_caffe"])
def test_nin_equals_the_authors_definition(variant):
    """cuda-convnet's definition (max pool 2) and the Caffe Model Zoo model (average pool 2)."""
    spec = nasforge.load(NIN, variant=variant)
    _compare(spec, _ReferenceNIN(avg_pool2=variant == "nin_caffe"), _nin_key_map, sizes=(32, 24, 29))


def test_nin_hand_counts_and_ceil_mode_pooling():
    spec = nasforge.load(NIN)
    rows = _rows(spec)
    # (in, out, kernel, size) of every convolution, as NIN/cifar-10_def
    layers = {"mlpconv1.conv": (3, 192, 5, 32), "mlpconv1.cccp1": (192, 160, 1, 32), "mlpconv1.cccp2": (160, 96, 1, 32),
              "mlpconv2.conv": (96, 192, 5, 16), "mlpconv2.cccp1": (192, 192, 1, 16), "mlpconv2.cccp2": (192, 192, 1, 16),
              "mlpconv3.conv": (192, 192, 3, 8), "mlpconv3.cccp1": (192, 192, 1, 8), "mlpconv3.cccp2": (192, 10, 1, 8)}
    for path, (cin, cout, k, size) in layers.items():
        assert rows[path] == (cin * cout * k * k + cout, size * size * cout * cin * k * k), path
    totals = spec.check().totals
    assert totals.params == sum(p for p, _ in rows.values()) == 966_986
    assert totals.macs == 222_486_528
    # cuda-convnet / Caffe pools round up: 32 -> 16 -> 8 (torch's default would give 15 -> 7)
    assert _shape(spec, "pool1") == (1, 96, 16, 16)
    assert _shape(spec, "pool2") == (1, 192, 8, 8)
    assert _shape(spec, "poolg") == (1, 10)


# -- All-CNN-C -----------------------------------------------------------------------------------------

class _ReferenceAllCNNC(nn.Module):
    """All-CNN-C from the paper's Tables 1 and 2, written out as a flat Sequential."""

    def __init__(self) -> None:
        super().__init__()

        def conv(cin, cout, k=3, stride=1, padding=1):
            return [nn.Conv2d(cin, cout, k, stride, padding), nn.ReLU()]

        self.net = nn.Sequential(
            nn.Dropout(0.2),
            *conv(3, 96), *conv(96, 96), *conv(96, 96, stride=2), nn.Dropout(0.5),
            *conv(96, 192), *conv(192, 192), *conv(192, 192, stride=2), nn.Dropout(0.5),
            *conv(192, 192, padding=0), *conv(192, 192, 1, padding=0), *conv(192, 10, 1, padding=0),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x)


_ALL_CNN_C_CONVS = ["stage1.conv1", "stage1.conv2", "stage1.conv3", "stage2.conv1", "stage2.conv2",
                    "stage2.conv3", "stage3.conv1", "stage3.conv2", "stage3.conv3"]


def _all_cnn_c_key_map(key: str) -> str:
    _, index, leaf = key.split(".")
    convs = [i for i, m in enumerate(_ReferenceAllCNNC().net) if isinstance(m, nn.Conv2d)]
    return f"{_ALL_CNN_C_CONVS[convs.index(int(index))]}.conv.{leaf}"


def test_all_cnn_c_equals_the_papers_layer_table():
    _compare(nasforge.load(ALL_CNN_C), _ReferenceAllCNNC(), _all_cnn_c_key_map, sizes=(32, 24))


def test_all_cnn_c_hand_counts_and_the_6x6_average():
    spec = nasforge.load(ALL_CNN_C)
    rows = _rows(spec, depth=2)
    layers = {"stage1.conv1": (3, 96, 3, 32), "stage1.conv2": (96, 96, 3, 32), "stage1.conv3": (96, 96, 3, 16),
              "stage2.conv1": (96, 192, 3, 16), "stage2.conv2": (192, 192, 3, 16), "stage2.conv3": (192, 192, 3, 8),
              "stage3.conv1": (192, 192, 3, 6), "stage3.conv2": (192, 192, 1, 6), "stage3.conv3": (192, 10, 1, 6)}
    for path, (cin, cout, k, size) in layers.items():
        assert rows[path] == (cin * cout * k * k + cout, size * size * cout * cin * k * k), path
    assert spec.check().totals.params == 1_369_738
    assert spec.check().totals.macs == 270_798_336
    assert _shape(spec, "stage1.conv3.relu") == (1, 96, 16, 16)   # the stride-2 conv replaces the pool
    assert _shape(spec, "stage3.conv3.relu") == (1, 10, 6, 6)     # "global averaging over 6x6"


@pytest.mark.parametrize("variant, downsample, params, macs, convs, pools", [
    ("all_cnn_c", "conv", 1_369_738, 270_798_336, 9, 0),
    ("model_c", "pool", 954_730, 228_331_008, 7, 2),
    ("strided_cnn_c", "strided", 954_730, 100_929_024, 7, 0),
    ("convpool_cnn_c", "conv_pool", 1_369_738, 398_200_320, 9, 2),
])
def test_all_cnn_c_family(variant, downsample, params, macs, convs, pools):
    spec = nasforge.load(ALL_CNN_C, variant=variant)
    assert spec.graph.meta["params"]["downsample"] == downsample
    totals = spec.check().totals
    assert (totals.params, totals.macs) == (params, macs)
    ops = [n.op for n in spec.graph.nodes.values()]
    assert (ops.count("conv2d"), ops.count("max_pool2d")) == (convs, pools)
    assert _shape(spec, "stage2.dropout") == (1, 192, 8, 8)


# -- DenseNet ------------------------------------------------------------------------------------------

# torchvision's DenseNet*_Weights metadata: num_params and _ops (GMACs at 224x224)
DENSENET_FAMILY = {
    "densenet121": (7_978_856, 2.834e9, [6, 12, 24, 16], 32),
    "densenet169": (14_149_480, 3.36e9, [6, 12, 32, 32], 32),
    "densenet201": (20_013_928, 4.291e9, [6, 12, 48, 32], 32),
    "densenet161": (28_681_000, 7.728e9, [6, 12, 36, 24], 48),
}


def test_densenet_variants_are_the_torchvision_family():
    assert set(nasforge.load(DENSENET).variants) == set(DENSENET_FAMILY)


@pytest.mark.parametrize("name", list(DENSENET_FAMILY))
def test_densenet_family_matches_torchvision_metadata(name):
    params, macs, blocks, k = DENSENET_FAMILY[name]
    spec = nasforge.load(DENSENET, variant=name)
    totals = spec.check().totals
    assert totals.params == params
    assert abs(totals.macs - macs) <= 0.001 * macs
    for b, layers in enumerate(blocks, start=1):
        assert f"features.denseblock{b}.{layers - 1}.conv2" in spec.graph.nodes
        assert f"features.denseblock{b}.{layers}.conv2" not in spec.graph.nodes
    # the final width: the stem (2k) through four blocks and three halving transitions
    width = 2 * k
    for b, layers in enumerate(blocks):
        width = width + layers * k if b == 3 else (width + layers * k) // 2
    assert _shape(spec, "features.norm5") == (1, width, 7, 7)


def test_densenet121_hand_count_per_block():
    spec = nasforge.load(DENSENET)
    rows = _rows(spec, depth=2)
    k, width, size = 32, 64, 56

    def dense_layer(cin, size):  # BN(cin) + 1x1 conv to 4k + BN(4k) + 3x3 conv to k; MACs of the two convs
        return 2 * cin + cin * 4 * k + 2 * 4 * k + 4 * k * k * 9, size * size * (cin * 4 * k + 4 * k * k * 9)

    for b, layers in enumerate([6, 12, 24, 16], start=1):
        counts = [dense_layer(width + i * k, size) for i in range(layers)]
        assert rows[f"features.denseblock{b}"] == (sum(p for p, _ in counts), sum(m for _, m in counts))
        width += layers * k
        assert _shape(spec, f"features.denseblock{b}.{layers - 1}.concat") == (1, width, size, size)
        if b < 4:   # BN + 1x1 conv to half the width, then a 2x2 average pool
            assert rows[f"features.transition{b}"] == (2 * width + width * (width // 2),
                                                        size * size * width * (width // 2))
            width, size = width // 2, size // 2
    assert [rows[f"features.denseblock{b}"][0] for b in range(1, 5)] == [335_040, 919_680, 2_837_760, 2_158_080]
    assert rows["features.conv0"] == (3 * 64 * 49, 112 * 112 * 64 * 3 * 49)
    assert rows["classifier"] == (1024 * 1000 + 1000, 1024 * 1000)


def test_densenet_dense_connectivity_grows_the_layer_inputs():
    """Each layer's 1x1 conv sees every earlier feature map: its input width grows by k per layer."""
    spec = nasforge.load(DENSENET)
    for i in range(6):
        weight_in = spec.graph.nodes[f"features.denseblock1.{i}.conv1"].inputs[0]
        assert spec.graph.type_of(weight_in).concrete_shape({"B": 1})[1] == 64 + 32 * i


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, k: int, bn_size: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, bn_size * k, 1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(bn_size * k), nn.Conv2d(bn_size * k, k, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv1(torch.relu(self.norm1(torch.cat(features, 1))))
        return self.conv2(torch.relu(self.norm2(x)))


class _ReferenceDenseNet(nn.Module):
    """torchvision's DenseNet layout, written out independently: each dense layer reads the list of all
    earlier feature maps, a block returns their concatenation."""

    def __init__(self, k: int, blocks: list[int], init: int, bn_size: int = 4, num_classes: int = 1000) -> None:
        super().__init__()
        f = nn.Sequential()
        f.add_module("conv0", nn.Conv2d(3, init, 7, 2, 3, bias=False))
        f.add_module("norm0", nn.BatchNorm2d(init))
        f.add_module("relu0", nn.ReLU())
        f.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        width = init
        for b, layers in enumerate(blocks, start=1):
            block = nn.ModuleDict({f"denselayer{i + 1}": _DenseLayer(width + i * k, k, bn_size)
                                   for i in range(layers)})
            f.add_module(f"denseblock{b}", block)
            width += layers * k
            if b < len(blocks):
                t = nn.Sequential()
                t.add_module("norm", nn.BatchNorm2d(width))
                t.add_module("relu", nn.ReLU())
                t.add_module("conv", nn.Conv2d(width, width // 2, 1, bias=False))
                t.add_module("pool", nn.AvgPool2d(2, 2))
                f.add_module(f"transition{b}", t)
                width //= 2
        f.add_module("norm5", nn.BatchNorm2d(width))
        self.features = f
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x):
        for name, module in self.features.named_children():
            if name.startswith("denseblock"):
                features = [x]
                for layer in module.values():
                    features.append(layer(features))
                x = torch.cat(features, 1)
            else:
                x = module(x)
        return self.classifier(torch.relu(x).mean((2, 3)))


def _densenet_key_map(key: str) -> str:
    """torchvision's ``denselayer{K+1}`` -> the spec's repeat index ``K``."""
    return re.sub(r"\.denselayer(\d+)\.", lambda m: f".{int(m.group(1)) - 1}.", key)


def test_densenet_equals_an_independent_torchvision_layout():
    """A small DenseNet-BC (k=8, blocks [2,3,4,2], stem 16) at 64x64 and 40x40."""
    overrides = {"growth_rate": 8, "block_config": [2, 3, 4, 2], "num_init_features": 16, "image_size": 64}
    spec = nasforge.load(DENSENET, **overrides)
    _compare(spec, _ReferenceDenseNet(8, [2, 3, 4, 2], 16), _densenet_key_map, sizes=(64, 40))


@pytest.mark.slow
def test_densenet121_full_size_equals_the_reference():
    spec = nasforge.load(DENSENET)
    _compare(spec, _ReferenceDenseNet(32, [6, 12, 24, 16], 64), _densenet_key_map, sizes=(224, 96))
