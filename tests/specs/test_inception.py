"""The Inception family and Xception: specs/models/{inception_v3,inception_v4,inception_resnet_v2,xception}.yaml.

The generic harness (test_model_specs.py) holds each spec to its published parameter count and MACs and
builds, runs and exports it. Here: hand counts of single modules, the Inception-v3 auxiliary head (a
second output), forward passes at a small resolution, and, for every network, a comparison with a small
PyTorch implementation written in this file from the papers' descriptions in the layout of the public
ports (torchvision's Inception3, timm's inception_v4 / inception_resnet_v2 / legacy_xception): the same
state_dict keys in the same order with the same shapes, and the same outputs from the same random weights.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nasforge
from nasforge.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
V3 = ROOT / "specs" / "models" / "inception_v3.yaml"
V4 = ROOT / "specs" / "models" / "inception_v4.yaml"
IRV2 = ROOT / "specs" / "models" / "inception_resnet_v2.yaml"
XCEPTION = ROOT / "specs" / "models" / "xception.yaml"


def params_of(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def rows(path: Path, depth: int = 1, **overrides) -> dict[str, tuple[int, int]]:
    """(params, MACs) per folded node path, one sample."""
    return {r.path: (r.params, r.macs) for r in nasforge.load(path, **overrides).summary(depth=depth).rows}


def conv_count(cin: int, cout: int, kh: int, kw: int, h: int, w: int, bn: bool = True) -> tuple[int, int]:
    """(params, MACs) of a bias-free conv (+ BN's weight and bias) producing an h x w map."""
    return cin * cout * kh * kw + (2 * cout if bn else 0), cin * cout * kh * kw * h * w


def total(*counts: tuple[int, int]) -> tuple[int, int]:
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


# -- independent references ---------------------------------------------------------------------------

def basic(cin: int, cout: int, kernel, stride=1, padding=0, eps: float = 1e-3) -> nn.Module:
    """BasicConv2d: bias-free conv, BatchNorm (eps 0.001), ReLU; submodules conv / bn."""
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(cin, cout, kernel, stride, padding, bias=False),
                                     bn=nn.BatchNorm2d(cout, eps=eps), relu=nn.ReLU()))


def seq(*modules: nn.Module) -> nn.Sequential:
    return nn.Sequential(*modules)


class Mixed(nn.Module):
    """Branches from one input, concatenated. ``paths`` lists each branch as steps: a submodule name, a
    stateless callable, or a tuple of steps applied to the same tensor and concatenated."""

    def __init__(self, paths: list[list], **modules: nn.Module) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        self.paths = paths

    def step(self, step, x):
        if isinstance(step, tuple):
            return torch.cat([self.step(s, x) for s in step], 1)
        return getattr(self, step)(x) if isinstance(step, str) else step(x)

    def forward(self, x):
        outs = []
        for path in self.paths:
            y = x
            for step in path:
                y = self.step(step, y)
            outs.append(y)
        return torch.cat(outs, 1)


class Residual(Mixed):
    """Inception-ResNet block: concatenated branches, a linear 1x1 conv (``conv2d``, with bias) back to
    the input width, scaled and added to the input, then ReLU (unless ``relu`` is false)."""

    def __init__(self, concat: int, width: int, scale: float, paths: list[list], relu: bool = True,
                 **branches) -> None:
        super().__init__(paths, **branches)
        self.conv2d = nn.Conv2d(concat, width, 1)
        self.scale, self.relu = scale, relu

    def forward(self, x):
        y = x + self.scale * self.conv2d(super().forward(x))
        return torch.relu(y) if self.relu else y


class Net(nn.Module):
    """Children applied in order; a Linear child sees the flattened input; children named in ``taps``
    read the running tensor without replacing it and give extra outputs (Inception-v3's AuxLogits)."""

    def __init__(self, children: "OrderedDict[str, nn.Module]", taps: tuple[str, ...] = ()) -> None:
        super().__init__()
        for name, module in children.items():
            self.add_module(name, module)
        self.taps = taps

    def forward(self, x):
        extra = []
        for name, child in self.named_children():
            if name in self.taps:
                extra.append(child(x))
                continue
            x = child(x.flatten(1) if isinstance(child, nn.Linear) else x)
        return (x, *extra) if extra else x


def gap() -> nn.Module:
    return nn.AdaptiveAvgPool2d(1)


def avg3(x):  # torchvision's functional 3x3/1 average pool (counts padded zeros)
    return F.avg_pool2d(x, 3, 1, 1)


def avg3_excl() -> nn.Module:  # TF's SAME average pool: padded zeros not counted
    return nn.AvgPool2d(3, 1, 1, count_include_pad=False)


def max3(x):
    return F.max_pool2d(x, 3, 2)


def ref_inception_v3(aux: bool = False, classes: int = 1000) -> nn.Module:
    """torchvision's Inception3 layout."""
    def a(cin, pool):
        return Mixed([["branch1x1"], ["branch5x5_1", "branch5x5_2"],
                      ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"], [avg3, "branch_pool"]],
                     branch1x1=basic(cin, 64, 1), branch5x5_1=basic(cin, 48, 1),
                     branch5x5_2=basic(48, 64, 5, 1, 2),
                     branch3x3dbl_1=basic(cin, 64, 1), branch3x3dbl_2=basic(64, 96, 3, 1, 1),
                     branch3x3dbl_3=basic(96, 96, 3, 1, 1), branch_pool=basic(cin, pool, 1))

    def c(c7):
        r, q = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # a 1x7 and a 7x1 conv's (kernel, padding)
        return Mixed([["branch1x1"], ["branch7x7_1", "branch7x7_2", "branch7x7_3"],
                      ["branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5"],
                      [avg3, "branch_pool"]],
                     branch1x1=basic(768, 192, 1), branch7x7_1=basic(768, c7, 1),
                     branch7x7_2=basic(c7, c7, r[0], 1, r[1]), branch7x7_3=basic(c7, 192, q[0], 1, q[1]),
                     branch7x7dbl_1=basic(768, c7, 1), branch7x7dbl_2=basic(c7, c7, q[0], 1, q[1]),
                     branch7x7dbl_3=basic(c7, c7, r[0], 1, r[1]), branch7x7dbl_4=basic(c7, c7, q[0], 1, q[1]),
                     branch7x7dbl_5=basic(c7, 192, r[0], 1, r[1]), branch_pool=basic(768, 192, 1))

    def e(cin):
        return Mixed([["branch1x1"], ["branch3x3_1", ("branch3x3_2a", "branch3x3_2b")],
                      ["branch3x3dbl_1", "branch3x3dbl_2", ("branch3x3dbl_3a", "branch3x3dbl_3b")],
                      [avg3, "branch_pool"]],
                     branch1x1=basic(cin, 320, 1), branch3x3_1=basic(cin, 384, 1),
                     branch3x3_2a=basic(384, 384, (1, 3), 1, (0, 1)),
                     branch3x3_2b=basic(384, 384, (3, 1), 1, (1, 0)),
                     branch3x3dbl_1=basic(cin, 448, 1), branch3x3dbl_2=basic(448, 384, 3, 1, 1),
                     branch3x3dbl_3a=basic(384, 384, (1, 3), 1, (0, 1)),
                     branch3x3dbl_3b=basic(384, 384, (3, 1), 1, (1, 0)), branch_pool=basic(cin, 192, 1))

    layers = OrderedDict(
        Conv2d_1a_3x3=basic(3, 32, 3, 2), Conv2d_2a_3x3=basic(32, 32, 3), Conv2d_2b_3x3=basic(32, 64, 3, 1, 1),
        maxpool1=nn.MaxPool2d(3, 2), Conv2d_3b_1x1=basic(64, 80, 1), Conv2d_4a_3x3=basic(80, 192, 3),
        maxpool2=nn.MaxPool2d(3, 2), Mixed_5b=a(192, 32), Mixed_5c=a(256, 64), Mixed_5d=a(288, 64),
        Mixed_6a=Mixed([["branch3x3"], ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"], [max3]],
                       branch3x3=basic(288, 384, 3, 2), branch3x3dbl_1=basic(288, 64, 1),
                       branch3x3dbl_2=basic(64, 96, 3, 1, 1), branch3x3dbl_3=basic(96, 96, 3, 2)),
        Mixed_6b=c(128), Mixed_6c=c(160), Mixed_6d=c(160), Mixed_6e=c(192))
    if aux:
        layers["AuxLogits"] = Net(OrderedDict(pool=nn.AvgPool2d(5, 3), conv0=basic(768, 128, 1),
                                              conv1=basic(128, 768, 5), avgpool=gap(), fc=nn.Linear(768, classes)))
    layers.update(
        Mixed_7a=Mixed([["branch3x3_1", "branch3x3_2"],
                        ["branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"], [max3]],
                       branch3x3_1=basic(768, 192, 1), branch3x3_2=basic(192, 320, 3, 2),
                       branch7x7x3_1=basic(768, 192, 1), branch7x7x3_2=basic(192, 192, (1, 7), 1, (0, 3)),
                       branch7x7x3_3=basic(192, 192, (7, 1), 1, (3, 0)), branch7x7x3_4=basic(192, 192, 3, 2)),
        Mixed_7b=e(1280), Mixed_7c=e(2048), avgpool=gap(), dropout=nn.Dropout(0.5), fc=nn.Linear(2048, classes))
    return Net(layers, taps=("AuxLogits",))


def ref_inception_v4() -> nn.Module:
    """timm's inception_v4 layout: features.0 .. features.21, global pool, last_linear."""
    def inception_a():
        return Mixed([["branch0"], ["branch1"], ["branch2"], ["branch3"]],
                     branch0=basic(384, 96, 1), branch1=seq(basic(384, 64, 1), basic(64, 96, 3, 1, 1)),
                     branch2=seq(basic(384, 64, 1), basic(64, 96, 3, 1, 1), basic(96, 96, 3, 1, 1)),
                     branch3=seq(avg3_excl(), basic(384, 96, 1)))

    def inception_b():
        return Mixed([["branch0"], ["branch1"], ["branch2"], ["branch3"]],
                     branch0=basic(1024, 384, 1),
                     branch1=seq(basic(1024, 192, 1), basic(192, 224, (1, 7), 1, (0, 3)),
                                 basic(224, 256, (7, 1), 1, (3, 0))),
                     branch2=seq(basic(1024, 192, 1), basic(192, 192, (7, 1), 1, (3, 0)),
                                 basic(192, 224, (1, 7), 1, (0, 3)), basic(224, 224, (7, 1), 1, (3, 0)),
                                 basic(224, 256, (1, 7), 1, (0, 3))),
                     branch3=seq(avg3_excl(), basic(1024, 128, 1)))

    def inception_c():
        return Mixed([["branch0"], ["branch1_0", ("branch1_1a", "branch1_1b")],
                      ["branch2_0", "branch2_1", "branch2_2", ("branch2_3a", "branch2_3b")], ["branch3"]],
                     branch0=basic(1536, 256, 1), branch1_0=basic(1536, 384, 1),
                     branch1_1a=basic(384, 256, (1, 3), 1, (0, 1)), branch1_1b=basic(384, 256, (3, 1), 1, (1, 0)),
                     branch2_0=basic(1536, 384, 1), branch2_1=basic(384, 448, (3, 1), 1, (1, 0)),
                     branch2_2=basic(448, 512, (1, 3), 1, (0, 1)), branch2_3a=basic(512, 256, (1, 3), 1, (0, 1)),
                     branch2_3b=basic(512, 256, (3, 1), 1, (1, 0)), branch3=seq(avg3_excl(), basic(1536, 256, 1)))

    features = [
        basic(3, 32, 3, 2), basic(32, 32, 3), basic(32, 64, 3, 1, 1),
        Mixed([[max3], ["conv"]], conv=basic(64, 96, 3, 2)),
        Mixed([["branch0"], ["branch1"]], branch0=seq(basic(160, 64, 1), basic(64, 96, 3)),
              branch1=seq(basic(160, 64, 1), basic(64, 64, (1, 7), 1, (0, 3)), basic(64, 64, (7, 1), 1, (3, 0)),
                          basic(64, 96, 3))),
        Mixed([["conv"], [max3]], conv=basic(192, 192, 3, 2)),
        *[inception_a() for _ in range(4)],
        Mixed([["branch0"], ["branch1"], ["branch2"]], branch0=basic(384, 384, 3, 2),
              branch1=seq(basic(384, 192, 1), basic(192, 224, 3, 1, 1), basic(224, 256, 3, 2)),
              branch2=nn.MaxPool2d(3, 2)),
        *[inception_b() for _ in range(7)],
        Mixed([["branch0"], ["branch1"], ["branch2"]],
              branch0=seq(basic(1024, 192, 1), basic(192, 192, 3, 2)),
              branch1=seq(basic(1024, 256, 1), basic(256, 256, (1, 7), 1, (0, 3)),
                          basic(256, 320, (7, 1), 1, (3, 0)), basic(320, 320, 3, 2)),
              branch2=nn.MaxPool2d(3, 2)),
        *[inception_c() for _ in range(3)],
    ]
    return Net(OrderedDict(features=seq(*features), global_pool=gap(), last_linear=nn.Linear(1536, 1000)))


def ref_inception_resnet_v2() -> nn.Module:
    """timm's inception_resnet_v2 layout."""
    def block35():
        return Residual(128, 320, 0.17, [["branch0"], ["branch1"], ["branch2"]], branch0=basic(320, 32, 1),
                        branch1=seq(basic(320, 32, 1), basic(32, 32, 3, 1, 1)),
                        branch2=seq(basic(320, 32, 1), basic(32, 48, 3, 1, 1), basic(48, 64, 3, 1, 1)))

    def block17():
        return Residual(384, 1088, 0.10, [["branch0"], ["branch1"]], branch0=basic(1088, 192, 1),
                        branch1=seq(basic(1088, 128, 1), basic(128, 160, (1, 7), 1, (0, 3)),
                                    basic(160, 192, (7, 1), 1, (3, 0))))

    def block8(scale=0.20, relu=True):
        return Residual(448, 2080, scale, [["branch0"], ["branch1"]], relu=relu, branch0=basic(2080, 192, 1),
                        branch1=seq(basic(2080, 192, 1), basic(192, 224, (1, 3), 1, (0, 1)),
                                    basic(224, 256, (3, 1), 1, (1, 0))))

    return Net(OrderedDict(
        conv2d_1a=basic(3, 32, 3, 2), conv2d_2a=basic(32, 32, 3), conv2d_2b=basic(32, 64, 3, 1, 1),
        maxpool_3a=nn.MaxPool2d(3, 2), conv2d_3b=basic(64, 80, 1), conv2d_4a=basic(80, 192, 3),
        maxpool_5a=nn.MaxPool2d(3, 2),
        mixed_5b=Mixed([["branch0"], ["branch1"], ["branch2"], ["branch3"]], branch0=basic(192, 96, 1),
                       branch1=seq(basic(192, 48, 1), basic(48, 64, 5, 1, 2)),
                       branch2=seq(basic(192, 64, 1), basic(64, 96, 3, 1, 1), basic(96, 96, 3, 1, 1)),
                       branch3=seq(avg3_excl(), basic(192, 64, 1))),
        repeat=seq(*[block35() for _ in range(10)]),
        mixed_6a=Mixed([["branch0"], ["branch1"], ["branch2"]], branch0=basic(320, 384, 3, 2),
                       branch1=seq(basic(320, 256, 1), basic(256, 256, 3, 1, 1), basic(256, 384, 3, 2)),
                       branch2=nn.MaxPool2d(3, 2)),
        repeat_1=seq(*[block17() for _ in range(20)]),
        mixed_7a=Mixed([["branch0"], ["branch1"], ["branch2"], ["branch3"]],
                       branch0=seq(basic(1088, 256, 1), basic(256, 384, 3, 2)),
                       branch1=seq(basic(1088, 256, 1), basic(256, 288, 3, 2)),
                       branch2=seq(basic(1088, 256, 1), basic(256, 288, 3, 1, 1), basic(288, 320, 3, 2)),
                       branch3=nn.MaxPool2d(3, 2)),
        repeat_2=seq(*[block8() for _ in range(9)]),
        block8=block8(1.0, relu=False),
        conv2d_7b=basic(2080, 1536, 1), global_pool=gap(), classif=nn.Linear(1536, 1000)))


class Separable(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.conv1(x))


class XBlock(nn.Module):
    """legacy_xception's Block: `rep` (ReLU - separable - BN units, max pool when strided) plus a shortcut."""

    def __init__(self, cin: int, cout: int, widths: list[int], stride: int, relu_first: bool = True,
                 eps: float = 1e-3) -> None:
        super().__init__()
        if stride != 1 or cin != cout:
            self.skip = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.skipbn = nn.BatchNorm2d(cout, eps=eps)
        else:
            self.skip = None
        rep, width = [], cin
        for w in widths:
            rep += [nn.ReLU(), Separable(width, w), nn.BatchNorm2d(w, eps=eps)]
            width = w
        if not relu_first:
            rep = rep[1:]
        if stride != 1:
            rep.append(nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*rep)

    def forward(self, x):
        return self.rep(x) + (x if self.skip is None else self.skipbn(self.skip(x)))


def ref_xception(eps: float = 1e-3) -> nn.Module:
    """timm's legacy_xception layout."""
    layers = OrderedDict(
        conv1=nn.Conv2d(3, 32, 3, 2, bias=False), bn1=nn.BatchNorm2d(32, eps=eps), act1=nn.ReLU(),
        conv2=nn.Conv2d(32, 64, 3, bias=False), bn2=nn.BatchNorm2d(64, eps=eps), act2=nn.ReLU(),
        block1=XBlock(64, 128, [128, 128], 2, relu_first=False, eps=eps),
        block2=XBlock(128, 256, [256, 256], 2, eps=eps), block3=XBlock(256, 728, [728, 728], 2, eps=eps))
    for k in range(4, 12):
        layers[f"block{k}"] = XBlock(728, 728, [728] * 3, 1, eps=eps)
    layers.update(block12=XBlock(728, 1024, [728, 1024], 2, eps=eps),
                  conv3=Separable(1024, 1536), bn3=nn.BatchNorm2d(1536, eps=eps), act3=nn.ReLU(),
                  conv4=Separable(1536, 2048), bn4=nn.BatchNorm2d(2048, eps=eps), act4=nn.ReLU(),
                  global_pool=gap(), fc=nn.Linear(2048, 1000))
    return Net(layers)


def randomize(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state_dict with random weights and BN statistics, scaled so that activations stay O(1)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if not value.is_floating_point():
            state[key] = value
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif key.endswith("running_mean") or key.endswith("bias"):
            state[key] = 0.1 * torch.randn(value.shape, generator=gen)
        elif value.dim() > 1:  # conv / linear weights: variance 1 / fan_in
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=gen) / fan_in ** 0.5
        else:  # BN weight
            state[key] = 0.5 + 0.5 * torch.rand(value.shape, generator=gen)
    return state


def assert_same_network(spec_path: Path, reference: nn.Module, size: int, **overrides) -> None:
    gm = nasforge.load(spec_path, image_size=size, **overrides).build().eval()
    reference = reference.eval()
    assert [(k, v.shape) for k, v in gm.state_dict().items()] == \
        [(k, v.shape) for k, v in reference.state_dict().items()]
    state = randomize(reference)
    reference.load_state_dict(state)
    gm.load_state_dict(state)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = gm(x), reference(x)
    ours = ours if isinstance(ours, (tuple, list)) else (ours,)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert b.abs().max() > 1e-3  # the comparison is not between two vanishing signals
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


# -- Inception-v3 -------------------------------------------------------------------------------------

def test_inception_v3_module_hand_counts():
    r = rows(V3)
    # the stem: 299 -> 149 -> 147 -> 147 -> (pool) 73 -> 73 -> 71
    assert r["Conv2d_1a_3x3"] == conv_count(3, 32, 3, 3, 149, 149)
    assert r["Conv2d_2b_3x3"] == conv_count(32, 64, 3, 3, 147, 147)
    assert r["Conv2d_4a_3x3"] == conv_count(80, 192, 3, 3, 71, 71)
    # Mixed_5b on 35x35x192: 1x1 64 | 1x1 48 - 5x5 64 | 1x1 64 - 3x3 96 - 3x3 96 | pool - 1x1 32
    assert r["Mixed_5b"] == total(*(conv_count(*c, 35, 35) for c in [
        (192, 64, 1, 1), (192, 48, 1, 1), (48, 64, 5, 5), (192, 64, 1, 1), (64, 96, 3, 3), (96, 96, 3, 3),
        (192, 32, 1, 1)])) == (255_904, 312_345_600)
    # Mixed_6e (c7 = 192) on 17x17x768: every conv keeps 17x17
    c7 = 192
    assert r["Mixed_6e"] == total(*(conv_count(*c, 17, 17) for c in [
        (768, 192, 1, 1), (768, c7, 1, 1), (c7, c7, 1, 7), (c7, 192, 7, 1), (768, c7, 1, 1), (c7, c7, 7, 1),
        (c7, c7, 1, 7), (c7, c7, 7, 1), (c7, 192, 1, 7), (768, 192, 1, 1)])) == (2_141_952, 617_914_368)
    # Mixed_7c on 8x8x2048
    assert r["Mixed_7c"] == total(*(conv_count(*c, 8, 8) for c in [
        (2048, 320, 1, 1), (2048, 384, 1, 1), (384, 384, 1, 3), (384, 384, 3, 1), (2048, 448, 1, 1),
        (448, 384, 3, 3), (384, 384, 1, 3), (384, 384, 3, 1), (2048, 192, 1, 1)])) == (6_076_800, 388_497_408)
    assert r["fc"] == (2048 * 1000 + 1000, 2048 * 1000)
    totals = nasforge.load(V3).check().totals
    assert (totals.params, totals.macs) == (23_834_568, 5_713_216_096)


def test_inception_v3_aux_head_is_a_second_output():
    assert nasforge.load(V3).variants == ["inception_v3", "inception_v3_aux"]
    spec = nasforge.load(V3, variant="inception_v3_aux")
    assert spec.graph.meta["params"]["aux_logits"] is True
    assert spec.paper["params"] == 27_161_264
    assert list(spec.graph.outputs) == ["logits", "aux_logits"]
    assert spec.graph.outputs["aux_logits"].node == "AuxLogits.fc"
    totals = spec.check().totals
    # torchvision's Inception_V3_Weights num_params, which counts the head its checkpoint carries
    assert totals.params == 27_161_264
    aux = rows(V3, aux_logits=True)["AuxLogits"]
    # 17x17 -(5x5/3 pool)-> 5x5: 1x1 conv 128 on 5x5, 5x5 conv 768 -> 1x1, fc 768 -> 1000
    conv0, conv1 = conv_count(768, 128, 1, 1, 5, 5), conv_count(128, 768, 5, 5, 1, 1)
    assert aux == (conv0[0] + conv1[0] + 769_000, conv0[1] + conv1[1] + 768_000) == (3_326_696, 5_683_200)
    assert totals.macs == 5_713_216_096 + 5_683_200
    # off (the default): one output, no AuxLogits nodes
    plain = nasforge.load(V3)
    assert list(plain.graph.outputs) == ["logits"]
    assert not any(path.startswith("AuxLogits") for path in plain.graph.nodes)
    # both heads shrink with num_classes: 990 fewer rows of 2048 + 1 (fc) and of 768 + 1 (aux fc)
    assert nasforge.load(V3, num_classes=10, aux_logits=True).check().totals.params == \
        27_161_264 - 990 * (2048 + 1) - 990 * (768 + 1)


def test_inception_v3_matches_torchvision_layout_at_small_resolution():
    reference = ref_inception_v3()
    assert params_of(reference) == 23_834_568
    assert_same_network(V3, reference, 75)


@pytest.mark.slow
def test_inception_v3_with_aux_matches_torchvision_layout():
    """At 299x299: the head's 5x5/3 pool and unpadded 5x5 conv need the full 17x17 grid of Mixed_6e."""
    reference = ref_inception_v3(aux=True)
    assert params_of(reference) == 27_161_264
    assert_same_network(V3, reference, 299, aux_logits=True)


# -- Inception-v4 -------------------------------------------------------------------------------------

def test_inception_v4_module_hand_counts():
    r = rows(V4, depth=2)
    # Mixed3a on 147x147x64: pool | 3x3/2 conv 96 -> 73x73
    assert r["features.3"] == conv_count(64, 96, 3, 3, 73, 73)
    # Inception-A on 35x35x384
    inception_a = total(*(conv_count(*c, 35, 35) for c in [
        (384, 96, 1, 1), (384, 64, 1, 1), (64, 96, 3, 3), (384, 64, 1, 1), (64, 96, 3, 3), (96, 96, 3, 3),
        (384, 96, 1, 1)]))
    assert all(r[f"features.{i}"] == inception_a for i in range(6, 10))
    # Reduction-A (k, l, m, n) = (192, 224, 256, 384): 35x35 -> 17x17
    n, k, l, m = 384, 192, 224, 256
    assert r["features.10"] == total(conv_count(384, n, 3, 3, 17, 17), conv_count(384, k, 1, 1, 35, 35),
                                     conv_count(k, l, 3, 3, 35, 35), conv_count(l, m, 3, 3, 17, 17))
    inception_b = total(*(conv_count(*c, 17, 17) for c in [
        (1024, 384, 1, 1), (1024, 192, 1, 1), (192, 224, 1, 7), (224, 256, 7, 1), (1024, 192, 1, 1),
        (192, 192, 7, 1), (192, 224, 1, 7), (224, 224, 7, 1), (224, 256, 1, 7), (1024, 128, 1, 1)]))
    assert all(r[f"features.{i}"] == inception_b for i in range(11, 18))
    inception_c = total(*(conv_count(*c, 8, 8) for c in [
        (1536, 256, 1, 1), (1536, 384, 1, 1), (384, 256, 1, 3), (384, 256, 3, 1), (1536, 384, 1, 1),
        (384, 448, 3, 1), (448, 512, 1, 3), (512, 256, 1, 3), (512, 256, 3, 1), (1536, 256, 1, 1)]))
    assert all(r[f"features.{i}"] == inception_c == (4_553_088, 290_979_840) for i in range(19, 22))
    assert r["last_linear"] == (1_537_000, 1_536_000)
    totals = nasforge.load(V4).check().totals
    assert (totals.params, totals.macs) == (42_679_816, 12_253_974_624)


@pytest.mark.slow
def test_inception_v4_matches_timm_layout_at_small_resolution():
    reference = ref_inception_v4()
    assert params_of(reference) == 42_679_816
    assert_same_network(V4, reference, 75)


# -- Inception-ResNet-v2 ------------------------------------------------------------------------------

def test_inception_resnet_v2_block_hand_counts():
    r = rows(IRV2, depth=2)
    # Inception-ResNet-A on 35x35x320: branches (128 channels), then a 1x1 conv with bias back to 320
    block35 = total(*(conv_count(*c, 35, 35) for c in [
        (320, 32, 1, 1), (320, 32, 1, 1), (32, 32, 3, 3), (320, 32, 1, 1), (32, 48, 3, 3), (48, 64, 3, 3)]),
        (128 * 320 + 320, 128 * 320 * 35 * 35))
    assert all(r[f"repeat.{i}"] == block35 for i in range(10))
    block17 = total(*(conv_count(*c, 17, 17) for c in [
        (1088, 192, 1, 1), (1088, 128, 1, 1), (128, 160, 1, 7), (160, 192, 7, 1)]),
        (384 * 1088 + 1088, 384 * 1088 * 17 * 17))
    assert all(r[f"repeat_1.{i}"] == block17 for i in range(20))
    block8 = total(*(conv_count(*c, 8, 8) for c in [
        (2080, 192, 1, 1), (2080, 192, 1, 1), (192, 224, 1, 3), (224, 256, 3, 1)]),
        (448 * 2080 + 2080, 448 * 2080 * 8 * 8))
    top = rows(IRV2)
    assert all(r[f"repeat_2.{i}"] == block8 for i in range(9)) and top["block8"] == block8
    # Reduction-A with (k, l, m, n) = (256, 256, 384, 384)
    assert top["mixed_6a"] == total(conv_count(320, 384, 3, 3, 17, 17), conv_count(320, 256, 1, 1, 35, 35),
                                  conv_count(256, 256, 3, 3, 35, 35), conv_count(256, 384, 3, 3, 17, 17))
    totals = nasforge.load(IRV2).check().totals
    assert (totals.params, totals.macs) == (55_843_464, 13_155_794_016)


def test_inception_resnet_v2_residual_scales_and_last_block():
    nodes = nasforge.load(IRV2).graph.nodes
    assert {nodes[f"repeat.{i}.scaled"].attrs["scalar"] for i in range(10)} == {0.17}
    assert {nodes[f"repeat_1.{i}.scaled"].attrs["scalar"] for i in range(20)} == {0.10}
    assert {nodes[f"repeat_2.{i}.scaled"].attrs["scalar"] for i in range(9)} == {0.20}
    assert "repeat_2.8.relu" in nodes
    # the last 8x8 block: scale 1 (no multiply) and no ReLU
    assert "block8.scaled" not in nodes and "block8.relu" not in nodes
    assert nodes["block8.residual"].inputs[0].node == "block8.conv2d"
    # the residual up-projections are linear (a bias, no BatchNorm)
    assert "bias" in nasforge.load(IRV2, depths=[1, 1, 1]).build().get_submodule("repeat.0.conv2d")._parameters
    shallow = nasforge.load(IRV2, depths=[1, 1, 1]).check().totals.params
    r = rows(IRV2, depth=2)
    assert shallow == 55_843_464 - 9 * r["repeat.0"][0] - 19 * r["repeat_1.0"][0] - 8 * r["repeat_2.0"][0]


@pytest.mark.slow
def test_inception_resnet_v2_matches_timm_layout_at_small_resolution():
    reference = ref_inception_resnet_v2()
    assert params_of(reference) == 55_843_464
    assert_same_network(IRV2, reference, 75)


# -- Xception -----------------------------------------------------------------------------------------

def sep_count(cin: int, cout: int, h: int, w: int, bn: bool = True) -> tuple[int, int]:
    """(params, MACs) of a 3x3 depthwise + 1x1 pointwise conv (+ BN) on an h x w map."""
    return cin * 9 + cin * cout + (2 * cout if bn else 0), (cin * 9 + cin * cout) * h * w


def test_xception_block_hand_counts():
    r = rows(XCEPTION)
    # block1 (147x147x64 -> 74x74x128): separable 64->128, 128->128 at 147x147, shortcut 1x1/2 to 74x74
    assert r["block1"] == total(sep_count(64, 128, 147, 147), sep_count(128, 128, 147, 147),
                                conv_count(64, 128, 1, 1, 74, 74)) == (35_264, 613_262_528)
    middle = total(*(sep_count(728, 728, 19, 19) for _ in range(3)))
    assert all(r[f"block{k}"] == middle for k in range(4, 12))
    # block12: 728 -> 728 -> 1024 at 19x19, pool to 10x10, shortcut 1x1/2
    assert r["block12"] == total(sep_count(728, 728, 19, 19), sep_count(728, 1024, 19, 19),
                                 conv_count(728, 1024, 1, 1, 10, 10))
    assert r["conv3"] == sep_count(1024, 1536, 10, 10, bn=False)
    assert r["conv4"] == sep_count(1536, 2048, 10, 10, bn=False)
    totals = nasforge.load(XCEPTION).check().totals
    assert (totals.params, totals.macs) == (22_855_952, 8_357_403_496)


def test_xception_matches_timm_legacy_layout_at_small_resolution():
    reference = ref_xception()
    assert params_of(reference) == 22_855_952
    assert_same_network(XCEPTION, reference, 71)


# -- all four -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, size", [
    pytest.param(V4, 75, id="inception_v4"),
    pytest.param(IRV2, 75, id="inception_resnet_v2", marks=pytest.mark.slow),
    pytest.param(XCEPTION, 71, id="xception"),
])
def test_runs_at_the_smallest_resolution(path: Path, size: int):
    """Each net runs, with another head width, down to the smallest input its unpadded convolutions and
    pools allow (Inception-v3 at 75x75 is compared with its reference above)."""
    spec = nasforge.load(path, image_size=size, num_classes=10)
    with torch.no_grad():
        out = spec.build().eval()(torch.randn(2, 3, size, size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_shared_blocks_come_from_the_inception_block_file():
    from nasforge.dsl.document import load_document
    blocks = load_document(ROOT / "specs" / "blocks" / "inception.yaml").blocks
    assert {"basic_conv", "separable_conv", "reduction_a"} <= set(blocks)
    # Reduction-A is one block used by Inception-v4 and Inception-ResNet-v2 with Table 1's widths
    for path, node, widths in ((V4, "features.10", (192, 224, 256, 384)),
                               (IRV2, "mixed_6a", (256, 256, 384, 384))):
        nodes = nasforge.load(path).graph.nodes
        k, l, m, n = widths
        assert nodes[f"{node}.branch0.conv"].attrs["out"] == n
        assert [nodes[f"{node}.branch1.{i}.conv"].attrs["out"] for i in range(3)] == [k, l, m]
    # BasicConv2d's BatchNorm eps is TF-slim's 0.001 everywhere
    for path in (V3, V4, IRV2):
        eps = {n.attrs["eps"] for n in nasforge.load(path).graph if n.op == "batch_norm2d"}
        assert eps == {0.001}


def test_show_folds_the_modules(capsys):
    assert cli_main(["show", str(V3), "--depth", "1"]) == 0
    out = capsys.readouterr().out
    for text in ("Mixed_5b", "Mixed_7c", "[B, 768, 17, 17]", "[B, 2048, 8, 8]", "23,834,568", "5.71G"):
        assert text in out, text
    assert "Mixed_5b.branch1x1" not in out
    assert cli_main(["show", str(IRV2), "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "repeat_1" in out and "22,535,680" in out and "repeat_1.0" not in out
