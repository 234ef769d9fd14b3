"""Dense prediction, generative and reinforcement-learning networks: FCN-8s, U-Net, DCGAN, DQN.

Each spec is held to hand counts per layer or level (from the reference code's layer sizes), to the feature
map sizes the papers and reference code give, and compared numerically with a small independent PyTorch
implementation written here from the papers and the reference code's layout: the same state_dict must
give the same outputs. The big dense-prediction nets are compared at small inputs (the full-size forward
of FCN-8s is ~180 GMACs, of U-Net ~150); the FCN comparisons (134M parameters each) are marked slow, U-Net
is compared at small widths.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nasforge
from tests.specs.weights import fan_in_random_state

MODELS = Path(__file__).resolve().parents[2] / "specs" / "models"
FCN = MODELS / "fcn8s.yaml"
UNET = MODELS / "unet.yaml"
GENERATOR = MODELS / "dcgan_generator.yaml"
DISCRIMINATOR = MODELS / "dcgan_discriminator.yaml"
DQN = MODELS / "dqn.yaml"


def _rows(spec) -> dict[str, tuple[int, int]]:
    return {r.path: (r.params, r.macs) for r in spec.summary(depth=0).rows}


def _shape(spec, path: str) -> tuple[int, ...]:
    return tuple(spec.graph.nodes[path].outputs[0].concrete_shape({"B": 1}))


def _compare(spec, ref: nn.Module, *inputs: torch.Tensor) -> None:
    """One random state_dict in both (same keys), same outputs in eval mode."""
    gm = spec.build().eval()
    ref = ref.eval()
    state = fan_in_random_state(ref)
    assert {k: v.shape for k, v in gm.state_dict().items()} == {k: v.shape for k, v in state.items()}
    gm.load_state_dict(state)
    ref.load_state_dict(state)
    with torch.no_grad():
        out, expected = gm(*inputs), ref(*inputs)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


# -- FCN -----------------------------------------------------------------------------------------------

VGG16 = [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)]   # (convs, width) per stage


class _Scale(nn.Module):
    """Caffe's Scale layer on one input: a per-channel factor (fixed in the reference)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))

    def forward(self, x):
        return x * self.gamma.view(1, -1, 1, 1)


class _FCN(nn.Module):
    """voc-fcn32s / 16s / 8s / 8s-atonce as the authors' Caffe net.py files lay them out, written out
    independently: conv1_1 pads by 100, pools round up, crops at the reference's fixed offsets."""

    def __init__(self, stride: int = 8, at_once: bool = False, classes: int = 21) -> None:
        super().__init__()
        self.stride, self.at_once = stride, at_once
        cin = 3
        for s, (n, width) in enumerate(VGG16, 1):
            for k in range(1, n + 1):
                self.add_module(f"conv{s}_{k}", nn.Conv2d(cin, width, 3, padding=100 if s == k == 1 else 1))
                cin = width
        self.fc6 = nn.Conv2d(512, 4096, 7)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.score_fr = nn.Conv2d(4096, classes, 1)

        def up(k: int, s: int) -> nn.ConvTranspose2d:
            return nn.ConvTranspose2d(classes, classes, k, s, bias=False)

        if stride == 32:
            self.upscore = up(64, 32)
            return
        self.upscore2 = up(4, 2)
        if at_once:
            self.scale_pool4 = _Scale(512)
        self.score_pool4 = nn.Conv2d(512, classes, 1)
        if stride == 16:
            self.upscore16 = up(32, 16)
            return
        self.upscore_pool4 = up(4, 2)
        if at_once:
            self.scale_pool3 = _Scale(256)
        self.score_pool3 = nn.Conv2d(256, classes, 1)
        self.upscore8 = up(16, 8)

    @staticmethod
    def crop(x, like, offset):
        return x[:, :, offset:offset + like.shape[2], offset:offset + like.shape[3]]

    def forward(self, image):
        h, pools = image, {}
        for s, (n, _) in enumerate(VGG16, 1):
            for k in range(1, n + 1):
                h = F.relu(getattr(self, f"conv{s}_{k}")(h))
            h = pools[s] = F.max_pool2d(h, 2, 2, ceil_mode=True)
        h = self.score_fr(F.relu(self.fc7(F.relu(self.fc6(h)))))      # dropout: identity in eval
        if self.stride == 32:
            return self.crop(self.upscore(h), image, 19)
        up = self.upscore2(h)
        pool4 = self.scale_pool4(pools[4]) if self.at_once else pools[4]
        h = up + self.crop(self.score_pool4(pool4), up, 5)
        if self.stride == 16:
            return self.crop(self.upscore16(h), image, 27)
        up = self.upscore_pool4(h)
        pool3 = self.scale_pool3(pools[3]) if self.at_once else pools[3]
        h = up + self.crop(self.score_pool3(pool3), up, 9)
        return self.crop(self.upscore8(h), image, 31)


def test_fcn8s_maps_at_500_follow_the_reference():
    """Caffe's sizes for a 500x500 PASCAL image: the 100-pixel pad and round-up pools, then the crops."""
    spec = nasforge.load(FCN)
    sizes = {p: _shape(spec, p)[2:] for p in ("conv1_1", "pool1", "pool2", "pool3", "pool4", "pool5", "fc6",
                                              "upscore2", "score_pool4c", "upscore_pool4", "score_pool3c",
                                              "upscore8", "score")}
    assert {p: s[0] for p, s in sizes.items()} == {
        "conv1_1": 698, "pool1": 349, "pool2": 175, "pool3": 88, "pool4": 44, "pool5": 22, "fc6": 16,
        "upscore2": 34, "score_pool4c": 34, "upscore_pool4": 70, "score_pool3c": 70, "upscore8": 568,
        "score": 500}
    assert _shape(spec, "score") == (1, 21, 500, 500)
    # the crops keep the reference's fixed offsets
    nodes = spec.graph.nodes
    assert [nodes[p].attrs["offset"] for p in ("score_pool4c", "score_pool3c", "score")] == [5, 9, 31]


def test_fcn8s_counts():
    spec = nasforge.load(FCN)
    rows = _rows(spec)
    vgg = sum(p for path, (p, _) in rows.items() if path.startswith("conv"))
    assert vgg == 14_714_688                                       # torchvision's vgg16 features
    assert rows["fc6"] == (7 * 7 * 512 * 4096 + 4096, 16 * 16 * 4096 * 7 * 7 * 512)
    assert rows["fc7"] == (4096 * 4096 + 4096, 16 * 16 * 4096 * 4096)
    assert rows["score_fr"][0] == 4096 * 21 + 21 == 86_037
    assert rows["score_pool4"][0] == 512 * 21 + 21 == 10_773
    assert rows["score_pool3"][0] == 256 * 21 + 21 == 5_397
    # up-convolutions: 21 x 21 x k x k, no bias; MACs = input pixels x 21 x 21 x k x k
    assert rows["upscore2"] == (21 * 21 * 4 * 4, 16 * 16 * 21 * 21 * 16) == (7_056, 1_806_336)
    assert rows["upscore_pool4"] == (7_056, 34 * 34 * 21 * 21 * 16)
    assert rows["upscore8"] == (21 * 21 * 16 * 16, 70 * 70 * 21 * 21 * 256) == (112_896, 553_190_400)
    totals = spec.check().totals
    assert totals.params == 134_489_759
    fixed = sum(rows[p][0] for p in ("upscore2", "upscore_pool4", "upscore8"))
    assert totals.params - fixed == 134_362_751                     # learned in the reference
    assert totals.macs == 181_529_034_048


@pytest.mark.parametrize("variant, params, macs, upsampling", [
    ("fcn8s_atonce", 134_490_527, 181_529_034_048, ("upscore2", "upscore_pool4", "upscore8")),
    ("fcn16s", 134_815_994, 181_448_086_272, ("upscore2", "upscore16")),
    ("fcn32s", 136_152_917, 181_365_854_976, ("upscore",)),
])
def test_fcn_family(variant, params, macs, upsampling):
    spec = nasforge.load(FCN, variant=variant)
    totals = spec.check().totals
    assert (totals.params, totals.macs) == (params, macs)
    nodes = spec.graph.nodes
    assert [p for p in nodes if nodes[p].op == "conv_transpose2d"] == list(upsampling)
    assert _shape(spec, "score") == (1, 21, 500, 500)
    # the net up to score_fr is the paper's "134M" FCN-VGG16 in every member
    up_to_score = sum(r.params for r in spec.summary(depth=0).rows
                      if r.path.startswith(("conv", "fc", "score_fr")))
    assert up_to_score == 134_346_581
    if variant == "fcn8s_atonce":
        assert nodes["scale_pool4"].attrs["init"] == 0.01 and nodes["scale_pool3"].attrs["init"] == 0.0001
        assert totals.params - nasforge.load(FCN).check().totals.params == 512 + 256


def test_fcn8s_other_input_sizes():
    """The 100-pixel pad lets any input size align: the scores always come out at the input size."""
    for size in (32, 224, 375):
        assert _shape(nasforge.load(FCN, image_size=size), "score") == (1, 21, size, size)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, {"at_once": True}, {"stride": 16}, {"stride": 32}],
                         ids=["fcn8s", "fcn8s_atonce", "fcn16s", "fcn32s"])
def test_fcn_equals_an_independent_caffe_layout(overrides):
    spec = nasforge.load(FCN, image_size=40, **overrides)
    ref = _FCN(stride=overrides.get("stride", 8), at_once=overrides.get("at_once", False))
    x = torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    _compare(spec, ref, x)


# -- U-Net ---------------------------------------------------------------------------------------------

class _Level(nn.Module):
    def __init__(self, cin: int, cout: int, padding: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=padding)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=padding)

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x))))


class _UpLevel(_Level):
    def __init__(self, cin: int, cup: int, cskip: int, cout: int, padding: int, up_relu: bool) -> None:
        super().__init__(cup + cskip, cout, padding)
        self.up = nn.ConvTranspose2d(cin, cup, 2, 2)
        self.up_relu = up_relu

    def forward(self, x, skip):
        x = self.up(x)
        x = F.relu(x) if self.up_relu else x
        top, left = (skip.shape[2] - x.shape[2]) // 2, (skip.shape[3] - x.shape[3]) // 2
        skip = skip[:, :, top:top + x.shape[2], left:left + x.shape[3]]
        return super().forward(torch.cat([x, skip], dim=1))


class _UNet(nn.Module):
    """Ronneberger et al.'s U-Net from Fig. 1 (and the release's two differences), written out
    independently: valid 3x3 convs, 2x2 max pools, 2x2 up-convs, centre crop, [up, skip] concatenation."""

    def __init__(self, widths, cin=1, classes=2, padding=0, up_relu=False, last_up=None) -> None:
        super().__init__()
        w = list(widths)
        self.down0 = _Level(cin, w[0], padding)
        for i in range(1, 5):
            setattr(self, f"down{i}", _Level(w[i - 1], w[i], padding))
        for i in (3, 2, 1, 0):
            cup = w[i] if i or last_up is None else last_up
            setattr(self, f"up{i}", _UpLevel(w[i + 1], cup, w[i], w[i], padding, up_relu))
        self.score = nn.Conv2d(w[0], classes, 1)

    def forward(self, x):
        skips = [self.down0(x)]
        for i in range(1, 5):
            skips.append(getattr(self, f"down{i}")(F.max_pool2d(skips[-1], 2)))   # dropout: eval
        h = skips[4]
        for i in (3, 2, 1, 0):
            h = getattr(self, f"up{i}")(h, skips[i])
        return self.score(h)


def test_unet_maps_follow_fig1():
    spec = nasforge.load(UNET)
    contracting = [_shape(spec, f"down{i}.relu2")[2] for i in range(5)]
    expansive = [_shape(spec, f"up{i}.relu2")[2] for i in (3, 2, 1, 0)]
    assert contracting == [568, 280, 136, 64, 28]
    assert expansive == [52, 100, 196, 388]
    assert [_shape(spec, f"up{i}.crop")[2] for i in (3, 2, 1, 0)] == [56, 104, 200, 392]
    assert _shape(spec, "score") == (1, 2, 388, 388)
    assert sum(spec.graph.nodes[p].op in ("conv2d", "conv_transpose2d") for p in spec.graph.nodes) == 23
    assert [_shape(spec, f"up{i}.up")[1] for i in (3, 2, 1, 0)] == [512, 256, 128, 64]


def test_unet_counts():
    spec = nasforge.load(UNET)
    levels = {r.path: r.params for r in spec.summary(depth=1).rows}
    conv = lambda cin, cout, k=3: cin * cout * k * k + cout       # noqa: E731
    assert levels["down0"] == conv(1, 64) + conv(64, 64) == 640 + 36_928
    assert levels["down4"] == conv(512, 1024) + conv(1024, 1024) == 4_719_616 + 9_438_208
    assert levels["up3"] == conv(1024, 512, 2) + conv(1024, 512) + conv(512, 512)
    assert levels["up0"] == conv(128, 64, 2) + conv(128, 64) + conv(64, 64) == 32_832 + 73_792 + 36_928
    assert levels["score"] == conv(64, 2, 1) == 130
    totals = spec.check().totals
    assert totals.params == 31_030_658
    assert totals.macs == 150_428_424_448
    release = nasforge.load(UNET, variant="unet_phseg_v5").check().totals
    # the release's last up-conv: 128 outputs (+32,832); conv_u0b-c sees 128 + 64 inputs (+36,864)
    assert release.params - totals.params == (128 * 128 * 4 + 128 - 32_832) + 64 * 64 * 9 == 69_696
    assert release.params == 31_100_354
    assert release.macs == 157_294_254_336


def test_unet_same_padding_keeps_the_size():
    spec = nasforge.load(UNET, variant="unet_same")
    assert _shape(spec, "score") == (1, 2, 512, 512)
    assert [_shape(spec, f"down{i}.relu2")[2] for i in range(5)] == [512, 256, 128, 64, 32]
    for i in range(4):                                         # the crops cut nothing
        assert _shape(spec, f"up{i}.crop") == _shape(spec, f"down{i}.relu2")
    totals = spec.check().totals
    assert (totals.params, totals.macs) == (31_030_658, 192_384_335_872)


SMALL = [4, 8, 16, 32, 64]


@pytest.mark.parametrize("overrides, ref_kwargs, size", [
    ({}, {}, 188),                                                      # the smallest valid tile
    ({"upconv_relu": True, "last_upconv_width": 8}, {"up_relu": True, "last_up": 8}, 204),
    ({"padding": 1}, {"padding": 1}, 48),
    ({"in_channels": 3, "classes": 5}, {"cin": 3, "classes": 5}, 188),
], ids=["paper", "release", "same", "rgb-5-classes"])
def test_unet_equals_an_independent_implementation(overrides, ref_kwargs, size):
    spec = nasforge.load(UNET, widths=SMALL, image_size=size, **overrides)
    ref = _UNet(SMALL, **ref_kwargs)
    cin = overrides.get("in_channels", 1)
    x = torch.randn(2, cin, size, size, generator=torch.Generator().manual_seed(2))
    _compare(spec, ref, x)


@pytest.mark.slow
def test_unet_full_width_at_the_smallest_tile_runs_and_exports():
    """The paper's widths at 188x188 (16k + 60, k = 8): a 4x4 output, a dynamic batch through export."""
    spec = nasforge.load(UNET, image_size=188)
    assert _shape(spec, "score") == (1, 2, 4, 4)
    gm = spec.build().eval()
    x = torch.randn(2, 1, 188, 188)
    program = torch.export.export(gm, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=8)},))
    y = torch.randn(3, 1, 188, 188)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(y), gm(y))


def test_unet_rejects_a_tile_whose_crop_cannot_fit():
    with pytest.raises(nasforge.SpecError, match="crop window does not fit|empty|size"):
        nasforge.load(UNET, image_size=92).check()


# -- DCGAN ---------------------------------------------------------------------------------------------

class _Generator(nn.Module):
    """The DCGAN example's Generator as a `main` Sequential: 4x4 transposed convs 1 -> 4 -> ... -> 64."""

    def __init__(self, nz=100, ngf=64, nc=3, bias=False) -> None:
        super().__init__()
        widths = [nz, ngf * 8, ngf * 4, ngf * 2, ngf]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths, widths[1:])):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=bias),
                       nn.BatchNorm2d(cout), nn.ReLU()]
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=bias), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z):
        return self.main(z)


class _Discriminator(nn.Module):
    def __init__(self, nc=3, ndf=64, bias=False) -> None:
        super().__init__()
        widths = [nc, ndf, ndf * 2, ndf * 4, ndf * 8]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths, widths[1:])):
            layers.append(nn.Conv2d(cin, cout, 4, 2, 1, bias=bias))
            if i:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2))
        layers += [nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=bias), nn.Sigmoid()]
        self.main = nn.Sequential(*layers)

    def forward(self, x):
        return self.main(x).view(-1, 1).squeeze(1)


def test_dcgan_generator_counts_and_shapes():
    spec = nasforge.load(GENERATOR)
    rows = _rows(spec)
    convs = {p: r for p, r in rows.items() if spec.graph.nodes[p].op == "conv_transpose2d"}
    assert [p for p, _ in convs.values()] == [819_200, 2_097_152, 524_288, 131_072, 3_072]
    assert [m for _, m in convs.values()] == [819_200, 33_554_432, 33_554_432, 33_554_432, 3_145_728]
    assert sum(p for p, _ in rows.values()) - sum(p for p, _ in convs.values()) == 2 * (512 + 256 + 128 + 64)
    assert spec.check().totals.params == 3_576_704
    assert _shape(spec, "main.13") == (1, 3, 64, 64)
    torch_ = nasforge.load(GENERATOR, variant="dcgan_torch").check().totals
    assert torch_.params == 12_660_355 and torch_.macs == 410_583_040


def test_dcgan_discriminator_counts_and_shapes():
    spec = nasforge.load(DISCRIMINATOR)
    rows = _rows(spec)
    assert [rows[f"main.{i}"][0] for i in (0, 2, 5, 8, 11)] == [3_072, 131_072, 524_288, 2_097_152, 8_192]
    assert [rows[f"main.{i}"][0] for i in (3, 6, 9)] == [256, 512, 1_024]
    totals = spec.check().totals
    assert (totals.params, totals.macs) == (2_765_568, 103_817_216)
    assert _shape(spec, "view") == (1,)
    assert nasforge.load(DISCRIMINATOR, variant="dcgan_torch").check().totals.params == 11_038_081


@pytest.mark.parametrize("kwargs", [{}, {"ngf": 128, "bias": True}, {"ngf": 16, "nz": 32, "nc": 1}],
                         ids=["example", "dcgan.torch", "small-gray"])
def test_dcgan_generator_equals_an_independent_implementation(kwargs):
    spec = nasforge.load(GENERATOR, **kwargs)
    ref = _Generator(**kwargs)
    z = torch.randn(3, kwargs.get("nz", 100), 1, 1, generator=torch.Generator().manual_seed(3))
    _compare(spec, ref, z)


@pytest.mark.parametrize("kwargs", [{}, {"ndf": 128, "bias": True}, {"ndf": 16, "nc": 1}],
                         ids=["example", "dcgan.torch", "small-gray"])
def test_dcgan_discriminator_equals_an_independent_implementation(kwargs):
    spec = nasforge.load(DISCRIMINATOR, **kwargs)
    ref = _Discriminator(**kwargs)
    x = torch.randn(3, kwargs.get("nc", 3), 64, 64, generator=torch.Generator().manual_seed(4))
    _compare(spec, ref, x)


def test_dcgan_generator_feeds_the_discriminator():
    g, d = nasforge.load(GENERATOR), nasforge.load(DISCRIMINATOR)
    out = g.graph.type_of(next(iter(g.graph.outputs.values())))
    assert out.concrete_shape({"B": 1}) == (1, 3, 64, 64) == d.graph.inputs["image"].concrete_shape({"B": 1})
    with torch.no_grad():
        p = d.build().eval()(g.build().eval()(torch.randn(2, 100, 1, 1)))
    assert p.shape == (2,) and bool(((p > 0) & (p < 1)).all())


# -- DQN -----------------------------------------------------------------------------------------------

class _DQN(nn.Module):
    """The Nature DQN as the authors' convnet.lua builds it (first conv padded by 1), and Wang et al.'s
    dueling head, written out independently."""

    def __init__(self, n_actions=18, dueling=False, padding=1) -> None:
        super().__init__()
        self.dueling = dueling
        self.conv1 = nn.Conv2d(4, 32, 8, 4, padding)
        self.conv2 = nn.Conv2d(32, 64, 4, 2)
        self.conv3 = nn.Conv2d(64, 64, 3, 1)
        if dueling:
            self.value_fc, self.value = nn.Linear(3136, 512), nn.Linear(512, 1)
            self.advantage_fc, self.advantage = nn.Linear(3136, 512), nn.Linear(512, n_actions)
        else:
            self.fc, self.head = nn.Linear(3136, 512), nn.Linear(512, n_actions)

    def forward(self, x):
        h = F.relu(self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))).flatten(1)
        if not self.dueling:
            return self.head(F.relu(self.fc(h)))
        v = self.value(F.relu(self.value_fc(h)))
        a = self.advantage(F.relu(self.advantage_fc(h)))
        return v + a - a.mean(dim=1, keepdim=True)


def test_dqn_counts():
    spec = nasforge.load(DQN)
    rows = _rows(spec)
    assert {p: r for p, r in rows.items() if r != (0, 0)} == {
        "conv1": (32 * 4 * 64 + 32, 20 * 20 * 32 * 4 * 64),
        "conv2": (64 * 32 * 16 + 64, 9 * 9 * 64 * 32 * 16),
        "conv3": (64 * 64 * 9 + 64, 7 * 7 * 64 * 64 * 9),
        "fc": (3136 * 512 + 512, 3136 * 512),
        "head": (512 * 18 + 18, 512 * 18),
    }
    assert _shape(spec, "flatten") == (1, 64 * 7 * 7)
    totals = spec.check().totals
    assert (totals.params, totals.macs) == (1_693_362, 9_352_192)
    assert nasforge.load(DQN, n_actions=4).check().totals.params == 1_686_180          # Breakout
    # a smaller frame: 64 -> 15 -> 6 -> 4 pixels, the fc layer takes 64 x 4 x 4 features
    small = nasforge.load(DQN, image_size=64)
    assert _shape(small, "flatten") == (1, 1024) and _shape(small, "q") == (1, 18)
    # the common PyTorch ports leave conv1 unpadded: the same 20x20 map and counts
    assert nasforge.load(DQN, conv1_padding=0).check().totals == totals


def test_dueling_dqn_counts():
    totals = nasforge.load(DQN, variant="dqn_dueling").check().totals
    convs = 8_224 + 32_832 + 36_928
    assert totals.params == convs + (1_606_144 + 513) + (1_606_144 + 9_234) == 3_300_019
    assert totals.macs == 7_737_344 + 2 * 1_605_632 + 512 + 9_216 == 10_958_336
    assert nasforge.load(DQN, dueling=True, n_actions=4).check().totals.params == 3_292_837


@pytest.mark.parametrize("overrides", [{}, {"dueling": True}, {"n_actions": 4, "conv1_padding": 0},
                                       {"dueling": True, "n_actions": 6}],
                         ids=["dqn", "dueling", "breakout-unpadded", "dueling-6"])
def test_dqn_equals_an_independent_implementation(overrides):
    spec = nasforge.load(DQN, **overrides)
    ref = _DQN(overrides.get("n_actions", 18), overrides.get("dueling", False), overrides.get("conv1_padding", 1))
    x = torch.rand(3, 4, 84, 84, generator=torch.Generator().manual_seed(5))
    _compare(spec, ref, x)


def test_dueling_q_values_average_to_the_value():
    """Eq. 9: with the mean advantage subtracted, the Q-values of a state average to V(s)."""
    spec = nasforge.load(DQN, variant="dqn_dueling")
    gm = spec.build().eval()
    ref = _DQN(dueling=True).eval()
    ref.load_state_dict(gm.state_dict())
    x = torch.rand(2, 4, 84, 84)
    with torch.no_grad():
        q = gm(x)
        features = F.relu(ref.conv3(F.relu(ref.conv2(F.relu(ref.conv1(x)))))).flatten(1)
        value = ref.value(F.relu(ref.value_fc(features)))
    assert q.shape == (2, 18)
    torch.testing.assert_close(q.mean(dim=1, keepdim=True), value, rtol=1e-4, atol=1e-5)
