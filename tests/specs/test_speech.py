"""Speech: QuartzNet 5x5 / 10x5 / 15x5, Citrinet-256..1024 (with NeMo's gamma = 0.25 kernels) and the
MelGAN generator.

The generic harness (``test_model_specs.py``) loads, checks, builds, runs and exports every spec and holds
every variant to its ``paper:`` numbers. Here each network is compared with an independent PyTorch module
written in the layout of the authors' code: NeMo's JasperBlock (``mconv`` list of MaskedConv1d-wrapped
convs, BatchNorm, ReLU, Dropout and SqueezeExcite; ``res``; ``mout``) and ConvASRDecoder for the speech
recognizers, descriptinc/melgan-neurips's weight-normalized ``Generator`` for MelGAN. Parameter counts
and torch's FlopCounterMode MACs of those modules are the numbers the specs record (checked for every
variant on the meta device, so the 143M-parameter Citrinet-1024 allocates nothing), and the built specs
load the references' random state_dicts (MelGAN's keys unchanged; NeMo's through a documented renaming)
and give the same outputs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import nasforge

MODELS = Path(__file__).resolve().parents[2] / "specs" / "models"
QUARTZNET = MODELS / "quartznet.yaml"
CITRINET = MODELS / "citrinet.yaml"
MELGAN = MODELS / "melgan_generator.yaml"


def params_of(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def macs_of(module: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() // 2


def randomized(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state_dict with random weights and BN statistics (BN is then not the identity)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if not value.is_floating_point():
            state[key] = value
        elif "running_var" in key:
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif key.endswith("weight_g"):
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        else:
            state[key] = 0.05 * torch.randn(value.shape, generator=gen)
    return state


# -- NeMo's layout, written out independently ------------------------------------------------------------

def nemo_kernel(kernel: int, factor: float) -> int:
    """NeMo's compute_new_kernel_size: scale, floor, at least 1, rounded up to odd."""
    k = max(int(kernel * factor), 1)
    return k + 1 if k % 2 == 0 else k


class MaskedConv(nn.Module):
    """NeMo's MaskedConv1d keeps its conv as ``.conv``; with full-length inputs the mask is a no-op."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, stride=stride, padding=dilation * (kernel - 1) // 2,
                              dilation=dilation, groups=groups, bias=False)

    def forward(self, x):
        return self.conv(x)


class SqueezeExcite(nn.Module):
    """Global-context SE over time: mean, fc (C -> C/r -> C, no biases, ReLU between), sigmoid, scale."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(),
                                nn.Linear(channels // reduction, channels, bias=False))

    def forward(self, x):
        context = x.mean(dim=-1, keepdim=True).transpose(1, 2)        # [B, 1, C]
        return x * torch.sigmoid(self.fc(context).transpose(1, 2))


class JasperBlock(nn.Module):
    """``mconv``: per sub-block [dw, pw, BN, ReLU, Dropout] (the last without ReLU/Dropout), then SE;
    ``res``: [[1x1 conv, BN]]; ``mout``: [ReLU, Dropout]. ``spec_names`` maps each mconv index to the
    spec's node path inside the block."""

    def __init__(self, cin, cout, repeat, kernel, stride=1, dilation=1, residual=True, separable=True,
                 se=False, stride_last=False, stride_add=False, factor=1.0):
        super().__init__()
        k = nemo_kernel(kernel, factor)
        layers, names, c = [], [], cin
        for j in range(repeat):
            s = stride if (j == repeat - 1 or not stride_last) else 1
            if separable:
                layers += [MaskedConv(c, c, k, s, dilation, groups=c), MaskedConv(c, cout, 1)]
                names += [f"sub.{j}.dw", f"sub.{j}.pw"]
            else:
                layers.append(MaskedConv(c, cout, k, s, dilation))
                names.append(f"sub.{j}.pw")
            layers.append(nn.BatchNorm1d(cout, eps=1e-3))
            names.append(f"sub.{j}.bn")
            if j < repeat - 1:
                layers += [nn.ReLU(), nn.Dropout(0.0)]
                names += [f"sub.{j}.act", f"sub.{j}.drop"]
            c = cout
        if se:
            layers.append(SqueezeExcite(cout))
            names.append("se")
        self.mconv = nn.ModuleList(layers)
        self.spec_names = names
        self.res = None
        if residual:
            shortcut = [MaskedConv(cin, cout, 1, stride if stride_add else 1), nn.BatchNorm1d(cout, eps=1e-3)]
            self.res = nn.ModuleList([nn.ModuleList(shortcut)])
        self.mout = nn.Sequential(nn.ReLU(), nn.Dropout(0.0))

    def forward(self, x):
        out = x
        for layer in self.mconv:
            out = layer(out)
        if self.res is not None:
            shortcut = x
            for layer in self.res[0]:
                shortcut = layer(shortcut)
            out = out + shortcut
        return self.mout(out)


class ConvASR(nn.Module):
    """NeMo's EncDecCTCModel minus the featurizer: ``encoder.encoder`` (JasperBlocks) and
    ``decoder.decoder_layers.0`` (1x1 conv with bias), log_softmax over classes of [B, T', classes]."""

    def __init__(self, blocks: list[dict], feat_in: int, num_classes: int):
        super().__init__()
        layers, c = [], feat_in
        for cfg in blocks:
            layers.append(JasperBlock(c, **cfg))
            c = cfg["cout"]
        self.encoder = nn.Module()
        self.encoder.encoder = nn.Sequential(*layers)
        self.decoder = nn.Module()
        self.decoder.decoder_layers = nn.Sequential(nn.Conv1d(c, num_classes + 1, 1))

    def forward(self, x):
        logits = self.decoder.decoder_layers(self.encoder.encoder(x))
        return torch.log_softmax(logits.transpose(1, 2), dim=-1)

    def spec_key(self, key: str) -> str:
        """This module's state_dict key as the spec's: encoder.encoder.N.mconv.I.* -> encoder.N.<path>.*"""
        parts = key.split(".")
        if parts[0] == "decoder":
            return "decoder." + parts[-1]
        block = int(parts[2])
        rest = parts[3:]
        if rest[0] == "mconv":
            name = self.encoder.encoder[block].spec_names[int(rest[1])]
            tail = [p for p in rest[2:] if p != "conv"]
        else:                                              # res.0.0.conv.weight / res.0.1.<bn>
            name = "res.conv" if rest[2] == "0" else "res.bn"
            tail = [p for p in rest[3:] if p != "conv"]
        return ".".join(["encoder", str(block), name, *tail])


def quartznet_blocks(block_repeat: int) -> list[dict]:
    """The quartznet5x5 / 10x5 / 15x5 configs: C1, B1..B5 (each S times), C2, C3."""
    blocks = [dict(cout=256, repeat=1, kernel=33, stride=2, residual=False)]
    for cout, kernel in zip((256, 256, 512, 512, 512), (33, 39, 51, 63, 75)):
        blocks += [dict(cout=cout, repeat=5, kernel=kernel) for _ in range(block_repeat)]
    blocks.append(dict(cout=512, repeat=1, kernel=87, dilation=2, residual=False))
    blocks.append(dict(cout=1024, repeat=1, kernel=1, residual=False, separable=False))
    return blocks


CITRINET_KERNELS = ([11, 13, 15, 17, 19, 21], [13, 15, 17, 19, 21, 23, 25], [25, 27, 29, 31, 33, 35, 37, 39])


def citrinet_blocks(filters: int, enc_final: int, factor: float) -> list[dict]:
    """NeMo's citrinet configs: prolog, three megablocks (first block strides in its last sub-block and
    its residual), epilog; SE everywhere."""
    blocks = [dict(cout=filters, repeat=1, kernel=5, residual=False, se=True)]
    for kernels in CITRINET_KERNELS:
        for i, k in enumerate(kernels):
            blocks.append(dict(cout=filters, repeat=5, kernel=k, stride=2 if i == 0 else 1, se=True,
                               stride_last=True, stride_add=True, factor=factor))
    blocks.append(dict(cout=enc_final, repeat=1, kernel=41, residual=False, se=True, factor=factor))
    return blocks


ASR_MEMBERS = [
    pytest.param(QUARTZNET, "quartznet_5x5", lambda: ConvASR(quartznet_blocks(1), 64, 28), id="quartznet_5x5"),
    pytest.param(QUARTZNET, "quartznet_10x5", lambda: ConvASR(quartznet_blocks(2), 64, 28), id="quartznet_10x5"),
    pytest.param(QUARTZNET, "quartznet_15x5", lambda: ConvASR(quartznet_blocks(3), 64, 28), id="quartznet_15x5"),
    pytest.param(CITRINET, "citrinet_256", lambda: ConvASR(citrinet_blocks(256, 640, 1.0), 80, 1024),
                 id="citrinet_256"),
    pytest.param(CITRINET, "citrinet_384", lambda: ConvASR(citrinet_blocks(384, 640, 1.0), 80, 1024),
                 id="citrinet_384"),
    pytest.param(CITRINET, "citrinet_512", lambda: ConvASR(citrinet_blocks(512, 640, 1.0), 80, 1024),
                 id="citrinet_512"),
    pytest.param(CITRINET, "citrinet_1024", lambda: ConvASR(citrinet_blocks(1024, 1024, 1.0), 80, 1024),
                 id="citrinet_1024"),
    pytest.param(CITRINET, "citrinet_256_gamma_0_25",
                 lambda: ConvASR(citrinet_blocks(256, 640, 0.25), 80, 1024), id="citrinet_256_gamma_0_25"),
    pytest.param(CITRINET, "citrinet_1024_gamma_0_25",
                 lambda: ConvASR(citrinet_blocks(1024, 1024, 0.25), 80, 1024), id="citrinet_1024_gamma_0_25"),
]


@pytest.mark.parametrize("path, variant, reference", ASR_MEMBERS)
def test_counts_equal_the_nemo_layout(path, variant, reference):
    """Params and MACs (one 100-frame utterance) of the NeMo-layout module on the meta device, against
    the spec's analysis and the numbers its paper: block records."""
    spec = nasforge.load(path, variant=variant)
    totals = spec.check().totals
    with torch.device("meta"):
        ref = reference().eval()
        x = torch.empty(1, spec.graph.meta["params"]["features"], 100)
    assert params_of(ref) == totals.params == spec.paper["params"]
    assert macs_of(ref, x) == totals.macs == spec.paper["macs"]


@pytest.mark.parametrize("path, variant, reference", [ASR_MEMBERS[0], ASR_MEMBERS[3]])
def test_outputs_equal_the_nemo_layout(path, variant, reference):
    """QuartzNet 5x5 and Citrinet-256 built from the spec load the reference's random weights and BN
    statistics (keys renamed by ConvASR.spec_key, one to one) and compute the same log-probabilities."""
    spec = nasforge.load(path, variant=variant)
    gm = spec.build().eval()
    ref = reference().eval()
    state = randomized(ref)
    renamed = {ref.spec_key(k): v for k, v in state.items()}
    assert len(renamed) == len(state)
    assert {k: v.shape for k, v in gm.state_dict().items()} == {k: v.shape for k, v in renamed.items()}
    gm.load_state_dict(renamed)
    ref.load_state_dict(state)
    x = torch.randn(2, spec.graph.meta["params"]["features"], 100, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = gm(x)
        torch.testing.assert_close(out, ref(x), rtol=1e-4, atol=1e-4)
    # log-probabilities over vocab + blank for every output frame
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(out.shape[:2]))


@pytest.mark.parametrize("frames, quartz, citri", [(100, 50, 13), (101, 51, 13), (128, 64, 16), (17, 9, 3)])
def test_output_frames(frames, quartz, citri):
    """QuartzNet strides once (T' = ceil(T/2)); Citrinet three times (8x)."""
    q = nasforge.load(QUARTZNET, frames=frames)
    c = nasforge.load(CITRINET, frames=frames)
    assert q.graph.type_of(q.graph.outputs["log_probs"]).concrete_shape({"B": 1}) == (1, quartz, 29)
    assert c.graph.type_of(c.graph.outputs["log_probs"]).concrete_shape({"B": 1}) == (1, citri, 1025)


def test_quartznet_block_counts():
    """Hand counts per block of QuartzNet 5x5: dw K*Cin + pw Cin*Cout + BN 2*Cout per sub-block, plus the
    1x1 residual conv and its BN."""
    rows = {}
    for row in nasforge.load(QUARTZNET).summary().rows:
        head = ".".join(row.path.split(".")[:2]) if row.path.startswith("encoder") else row.path
        rows[head] = rows.get(head, 0) + row.params

    def block(cin, cout, k, repeat=5, residual=True):
        subs = (k * cin + cin * cout + 2 * cout) + (repeat - 1) * (k * cout + cout * cout + 2 * cout)
        return subs + (cin * cout + 2 * cout if residual else 0)

    assert rows["encoder.0"] == block(64, 256, 33, 1, False) == 19_008
    assert rows["encoder.1"] == block(256, 256, 33) == 438_528
    assert rows["encoder.3"] == block(256, 512, 51) == 1_434_368
    assert rows["encoder.6"] == block(512, 512, 87, 1, False) == 307_712
    assert rows["encoder.7"] == 512 * 1024 + 2 * 1024                        # C3: plain 1x1 conv + BN
    assert rows["decoder"] == 1024 * 29 + 29


def test_citrinet_kernels_and_strides():
    """gamma 0.25 shrinks every kernel but the prolog's (odd, at least 3 here); strides sit on the last
    sub-block and the residual conv of each megablock's first block."""
    spec = nasforge.load(CITRINET, variant="citrinet_256_gamma_0_25")
    nodes = spec.graph.nodes
    assert nodes["encoder.0.sub.0.dw"].attrs["kernel"] == 5
    assert [nodes[f"encoder.{b}.sub.0.dw"].attrs["kernel"] for b in (1, 6, 7, 14, 21, 22)] == [3, 5, 3, 7, 9, 11]
    for b in (1, 7, 14):
        assert [nodes[f"encoder.{b}.sub.{j}.dw"].attrs["stride"] for j in range(5)] == [1, 1, 1, 1, 2]
        assert nodes[f"encoder.{b}.res.conv"].attrs["stride"] == 2
    assert nodes["encoder.2.res.conv"].attrs["stride"] == 1
    assert "encoder.0.res.conv" not in nodes and "encoder.22.res.conv" not in nodes
    assert nodes["encoder.22.se.fc.0"].attrs["out"] == 640 // 8


def test_dropout_param_adds_train_only_nodes():
    base = nasforge.load(QUARTZNET)
    dropped = nasforge.load(QUARTZNET, dropout=0.2)
    assert not [n for n in base.graph if n.op == "dropout"]
    # B1..B5: after sub-blocks 0-3 and after the block's ReLU; C1-C3 keep the configs' 0
    assert len([n for n in dropped.graph if n.op == "dropout"]) == 5 * (4 + 1)
    before, after = base.check().totals, dropped.check().totals
    assert (after.params, after.macs) == (before.params, before.macs)


# -- MelGAN ------------------------------------------------------------------------------------------------

def _wn(module: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(module)


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(nn.LeakyReLU(0.2), nn.ReflectionPad1d(dilation),
                                   _wn(nn.Conv1d(dim, dim, 3, dilation=dilation)), nn.LeakyReLU(0.2),
                                   _wn(nn.Conv1d(dim, dim, 1)))
        self.shortcut = _wn(nn.Conv1d(dim, dim, 1))

    def forward(self, x):
        return self.shortcut(x) + self.block(x)


class MelGANGenerator(nn.Module):
    """The official Generator's layout: one flat nn.Sequential ``model``."""

    def __init__(self, mel: int = 80, ngf: int = 32, n_res: int = 3, ratios=(8, 8, 2, 2)):
        super().__init__()
        width = ngf * 2 ** len(ratios)
        layers = [nn.ReflectionPad1d(3), _wn(nn.Conv1d(mel, width, 7))]
        for r in ratios:
            layers += [nn.LeakyReLU(0.2), _wn(nn.ConvTranspose1d(width, width // 2, 2 * r, stride=r,
                                                                 padding=r // 2 + r % 2, output_padding=r % 2))]
            layers += [ResnetBlock(width // 2, 3 ** j) for j in range(n_res)]
            width //= 2
        layers += [nn.LeakyReLU(0.2), nn.ReflectionPad1d(3), _wn(nn.Conv1d(ngf, 1, 7)), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def test_melgan_counts_equal_the_official_layout():
    spec = nasforge.load(MELGAN)
    totals = spec.check().totals
    ref = MelGANGenerator()
    assert params_of(ref) == totals.params == spec.paper["params"] == 4_266_050
    assert macs_of(ref, torch.randn(1, 80, 100)) == totals.macs == spec.paper["macs"]
    lengths = sum(p.numel() for k, p in ref.named_parameters() if k.endswith("weight_g"))
    assert lengths == 512 + (512 + 256 + 128 + 64) + 3 * 3 * (256 + 128 + 64 + 32) + 1 == 5_793


def test_melgan_loads_the_official_state_dict_unchanged():
    spec = nasforge.load(MELGAN)
    gm = spec.build().eval()
    ref = MelGANGenerator().eval()
    state = randomized(ref)
    assert set(gm.state_dict()) == set(state)
    assert {k: v.shape for k, v in gm.state_dict().items()} == {k: v.shape for k, v in state.items()}
    gm.load_state_dict(state)
    ref.load_state_dict(state)
    x = torch.randn(2, 80, 20, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(gm(x), ref(x), rtol=1e-4, atol=1e-5)


def test_melgan_upsamples_by_the_hop():
    spec = nasforge.load(MELGAN, frames=20)
    out = spec.graph.type_of(spec.graph.outputs["audio"])
    assert out.concrete_shape({"B": 1}) == (1, 1, 20 * 256)
    shapes = {p: spec.graph.nodes[p].outputs[0].concrete_shape({"B": 1}) for p in ("model.3", "model.8",
                                                                                    "model.13", "model.18")}
    assert shapes == {"model.3": (1, 256, 160), "model.8": (1, 128, 1280), "model.13": (1, 64, 2560),
                      "model.18": (1, 32, 5120)}
