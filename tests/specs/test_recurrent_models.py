"""Recurrent model specs: the LSTM language model of Zaremba et al. (pytorch/examples' RNNModel layout) and
LRCN (Donahue et al.'s Caffe activity-recognition net). Counts by hand, outputs against independent
PyTorch references written here, and the fused (nn.LSTM) and unrolled (matmul) forms agreeing within 1e-5.
The generic harness (test_model_specs.py) also builds, runs and exports both specs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

import nasforge
from nasforge.compiler.fx_builder import example_inputs

ROOT = Path(__file__).resolve().parents[2]
LM = ROOT / "specs" / "models" / "lstm_lm.yaml"
LRCN = ROOT / "specs" / "models" / "lrcn.yaml"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomize(module: nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    g = gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))


def shape_of(spec, path: str) -> tuple[int, ...]:
    return tuple(spec.graph.nodes[path].outputs[0].concrete_shape({"B": 1}))


# -- LSTM language model ---------------------------------------------------------------------------------

def lm_params(vocab: int, dim: int, hidden: int, layers: int = 2) -> int:
    """RNNModel('LSTM', vocab, dim, hidden, layers), untied: encoder + LSTM (two biases) + decoder."""
    lstm = sum(4 * hidden * ((dim if k == 0 else hidden) + hidden) + 2 * 4 * hidden for k in range(layers))
    return vocab * dim + lstm + hidden * vocab + vocab


@pytest.mark.parametrize("variant,hidden,seq_len", [
    ("zaremba_medium", 650, 35), ("zaremba_large", 1500, 35), ("zaremba_small", 200, 20),
])
def test_lm_counts_by_hand(variant, hidden, seq_len):
    spec = nasforge.load(LM, variant=variant)
    totals = spec.check().totals
    assert totals.params == lm_params(10_000, hidden, hidden) == spec.paper["params"]
    per_token = 2 * 4 * hidden * (hidden + hidden) + hidden * 10_000
    assert totals.macs == seq_len * per_token == spec.paper["macs"]
    assert shape_of(spec, "log_probs") == (1, seq_len, 10_000)


class RNNModel(nn.Module):
    """pytorch/examples word_language_model RNNModel (LSTM, untied), written out: [T, B] tokens in."""

    def __init__(self, ntoken: int, ninp: int, nhid: int, nlayers: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(self.drop(self.encoder(tokens)))
        return F.log_softmax(self.decoder(self.drop(output)), dim=-1)


SMALL_LM = {"vocab": 97, "dim": 24, "hidden": 32, "seq_len": 9}


def test_lm_equals_pytorch_examples_rnnmodel():
    spec = nasforge.load(LM, **SMALL_LM)
    gm = spec.build()
    ref = RNNModel(97, 24, 32, 2, 0.5).eval()
    assert {k: v.shape for k, v in gm.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    randomize(ref)
    gm.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, 97, (3, 9), generator=gen(1))
    with torch.no_grad():
        torch.testing.assert_close(gm(tokens), ref(tokens.T).transpose(0, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [SMALL_LM, {}], ids=["small", "medium"])
def test_lm_fused_and_unrolled_agree(overrides):
    fused = nasforge.load(LM, **overrides).build()
    unrolled = nasforge.load(LM, **overrides, impl="unrolled").build()
    randomize(fused, scale=0.05)
    unrolled.load_state_dict(fused.state_dict())
    tokens = torch.randint(0, overrides.get("vocab", 10_000), (2, overrides.get("seq_len", 35)), generator=gen(2))
    with torch.no_grad():
        a, b = fused.rnn(fused.encoder(tokens)), unrolled.rnn(unrolled.encoder(tokens))
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        torch.testing.assert_close(fused(tokens), unrolled(tokens), rtol=1e-5, atol=1e-5)


def test_lm_unrolled_exports_without_the_fused_op():
    spec = nasforge.load(LM, **SMALL_LM, impl="unrolled")
    gm = spec.build()
    inputs = example_inputs(spec.graph, batch=2)
    program = torch.export.export(gm, inputs, dynamic_shapes=({0: Dim("batch", min=1, max=64)},))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("lstm" in t for t in targets)
    other = example_inputs(spec.graph, batch=5, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*other), gm(*other))


# -- LRCN -----------------------------------------------------------------------------------------------

LRCN_LAYERS = {            # per-layer parameters of the Caffe prototxt
    "conv1": 96 * 3 * 7 * 7 + 96,
    "conv2": 384 * 48 * 5 * 5 + 384,
    "conv3": 512 * 384 * 3 * 3 + 512,
    "conv4": 512 * 256 * 3 * 3 + 512,
    "conv5": 384 * 256 * 3 * 3 + 384,
    "fc6": 384 * 6 * 6 * 4096 + 4096,
}


@pytest.mark.parametrize("variant,hidden", [("lrcn_rgb", 256), ("lrcn_flow", 1024)])
def test_lrcn_counts_by_hand(variant, hidden):
    spec = nasforge.load(LRCN, variant=variant)
    rows = {r.path: r for r in spec.summary().rows}
    assert {k: rows[k].params for k in LRCN_LAYERS} == LRCN_LAYERS
    # Caffe's LSTM: W_xc [4H, 4096] with b_c, W_hc [4H, H] without a bias
    assert rows["lstm1"].params == 4 * hidden * 4096 + 4 * hidden + 4 * hidden * hidden
    assert rows["fc8_final"].params == hidden * 101 + 101
    totals = spec.check().totals
    assert totals.params == sum(LRCN_LAYERS.values()) + rows["lstm1"].params + rows["fc8_final"].params
    assert totals.params == spec.paper["params"]
    trunk = (96 * 111 * 111 * 3 * 49 + 384 * 26 * 26 * 48 * 25 + 512 * 13 * 13 * 384 * 9
             + 512 * 13 * 13 * 256 * 9 + 384 * 13 * 13 * 256 * 9 + 13_824 * 4096)
    assert totals.macs == 16 * (trunk + 4 * hidden * (4096 + hidden) + hidden * 101) == spec.paper["macs"]


def test_lrcn_shapes_follow_caffes_ceil_pooling():
    spec = nasforge.load(LRCN)
    assert shape_of(spec, "fold") == (16, 3, 227, 227)
    assert shape_of(spec, "conv1") == (16, 96, 111, 111)
    assert shape_of(spec, "pool1") == (16, 96, 55, 55)
    assert shape_of(spec, "conv2") == (16, 384, 26, 26)
    assert shape_of(spec, "pool2") == (16, 384, 13, 13)           # 12 with floor rounding
    assert shape_of(spec, "pool5") == (16, 384, 6, 6)
    assert shape_of(spec, "unfold") == (1, 16, 4096)
    assert shape_of(spec, "lstm1") == (1, 16, 256)
    assert shape_of(spec, "average") == (1, 101)
    assert spec.graph.nodes["lstm1"].attrs["bias"] == "input"


class CaffeLRCN(nn.Module):
    """The prototxt written out in PyTorch, frame by frame (inference: dropout off), and Caffe's one-bias
    LSTM unrolled by hand; per-frame softmax averaged over time as classify_video.py."""

    def __init__(self, hidden: int = 256) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 96, 7, stride=2)
        self.conv2 = nn.Conv2d(96, 384, 5, stride=2, groups=2)
        self.conv3 = nn.Conv2d(384, 512, 3, padding=1)
        self.conv4 = nn.Conv2d(512, 512, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(512, 384, 3, padding=1, groups=2)
        self.fc6 = nn.Linear(13_824, 4096)
        self.w_xc = nn.Parameter(torch.zeros(4 * hidden, 4096))
        self.b_c = nn.Parameter(torch.zeros(4 * hidden))
        self.w_hc = nn.Parameter(torch.zeros(4 * hidden, hidden))
        self.fc8 = nn.Linear(hidden, 101)

    def frame(self, x: torch.Tensor) -> torch.Tensor:
        def pool(t):
            return F.max_pool2d(t, 3, 2, ceil_mode=True)

        def lrn(t):
            return F.local_response_norm(t, 5, alpha=1e-4, beta=0.75, k=1.0)

        x = lrn(pool(F.relu(self.conv1(x))))
        x = lrn(pool(F.relu(self.conv2(x))))
        x = pool(F.relu(self.conv5(F.relu(self.conv4(F.relu(self.conv3(x)))))))
        return F.relu(self.fc6(x.flatten(1)))

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        feats = [self.frame(clip[:, k]) for k in range(clip.shape[1])]
        h = feats[0].new_zeros(clip.shape[0], self.w_hc.shape[1])
        c = torch.zeros_like(h)
        probs = []
        for x in feats:
            i, f, g, o = (x @ self.w_xc.T + self.b_c + h @ self.w_hc.T).chunk(4, -1)
            c = f.sigmoid() * c + i.sigmoid() * g.tanh()
            h = o.sigmoid() * c.tanh()
            probs.append(self.fc8(h).softmax(-1))
        return torch.stack(probs, 1).mean(1)


SPEC_NAMES = {"w_xc": "lstm1.weight_ih_l0", "b_c": "lstm1.bias_ih_l0", "w_hc": "lstm1.weight_hh_l0"}


def test_lrcn_equals_the_caffe_network_written_out():
    spec = nasforge.load(LRCN, frames=3)
    gm = spec.build()
    ref = CaffeLRCN().eval()
    randomize(ref, scale=0.02)
    state = {SPEC_NAMES.get(k, k.replace("fc8.", "fc8_final.")): v for k, v in ref.state_dict().items()}
    assert {k: v.shape for k, v in gm.state_dict().items()} == {k: v.shape for k, v in state.items()}
    gm.load_state_dict(state)
    clip = torch.randn(2, 3, 3, 227, 227, generator=gen(4))
    with torch.no_grad():
        got = gm(clip)
        torch.testing.assert_close(got, ref(clip), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got.sum(-1), torch.ones(2))


def test_lrcn_fused_and_unrolled_agree():
    fused = nasforge.load(LRCN, frames=4).build()
    unrolled = nasforge.load(LRCN, frames=4, impl="unrolled").build()
    randomize(fused, scale=0.02)
    unrolled.load_state_dict(fused.state_dict())
    feats = torch.randn(2, 4, 4096, generator=gen(5))
    with torch.no_grad():
        torch.testing.assert_close(unrolled.lstm1(feats), fused.lstm1(feats), rtol=0, atol=1e-5)
        clip = torch.randn(1, 4, 3, 227, 227, generator=gen(6))
        torch.testing.assert_close(unrolled(clip), fused(clip), rtol=0, atol=1e-5)
