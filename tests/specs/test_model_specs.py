"""The model specs in ``specs/models``, held to their papers.

Every ``specs/models/*.yaml`` (globbed, so a new spec is covered the day it lands) must load, check
without warnings, build, run a batch of 2, pass ``torch.export`` with a dynamic batch, round-trip through
``to_yaml``, and match its ``paper:`` metadata: the parameter count exactly, MACs within 1%. Parameters
and MACs are also counted independently of nasforge's analysis (``numel`` over the built module, torch's
``FlopCounterMode``). The per-model tests below pin the family variants and, for ViT, compare the built
network numerically with a small independent PyTorch implementation of timm's VisionTransformer. Family
tests live beside this file (test_resnet_family.py: ResNet, ResNeXt, Wide ResNet, SE-ResNet).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.export import Dim
from torch.utils.flop_counter import FlopCounterMode

import nasforge
from nasforge.cli import main as cli_main
from nasforge.compiler.fx_builder import example_inputs
from nasforge.dsl.document import load_document
from nasforge.dsl.variants import variants
from tests.specs.weights import small_random_state

ROOT = Path(__file__).resolve().parents[2]
MODELS = sorted((ROOT / "specs" / "models").glob("*.yaml"))
BLOCK_FILES = sorted((ROOT / "specs" / "blocks").glob("*.yaml"))
VIT = ROOT / "specs" / "models" / "vit.yaml"
LENET = ROOT / "specs" / "models" / "lenet5.yaml"
MLP = ROOT / "specs" / "models" / "mlp.yaml"

PAPER_KEYS = ("title", "authors", "year", "venue", "url", "reference", "params", "notes")


def by_name(paths: list[Path]) -> dict:
    return {"argvalues": paths, "ids": [p.stem for p in paths]}


def family_members() -> list[tuple[Path, str | None]]:
    """Every spec at its defaults and every variant it names: each is held to its own paper numbers."""
    return [(path, name) for path in MODELS for name in (None, *variants(load_document(path)))]


MEMBERS = family_members()
MEMBER_IDS = [f"{p.stem}:{v}" if v else p.stem for p, v in MEMBERS]
BIG = 50_000_000
"""Networks above this many parameters export in the slow set (tens of seconds each on 2 cores)."""


@functools.lru_cache(maxsize=None)
def member(path: Path, variant: str | None):
    """Loaded and checked once per test session (specs are immutable; tests build fresh modules)."""
    spec = nasforge.load(path, variant=variant)
    spec.check()
    return spec


HEAVY_MACS = 50_000_000_000
"""Networks above this many MACs per sample (FCN-8s, U-Net at 500+ pixels) also export in the slow set."""


HUGE = 300_000_000
"""Networks above this many parameters (TinyLlama-1.1B, GPT-2 XL) are not built at full size in the suite: the
exact counts hold them (analysis needs no build) and their family's small member is built and exported."""


def is_heavy(path: Path, variant: str | None = None) -> bool:
    totals = member(path, variant).check().totals
    return totals.params > BIG or totals.macs > HEAVY_MACS


def build_params(paths: list[Path]) -> list:
    """(spec, member) pairs for the tests that build networks: the default member (slow when big, left out
    when huge), plus the family's smallest member in the fast set when the default is big."""
    cases = []
    for path in paths:
        heavy = is_heavy(path)
        if heavy:
            smallest = min((v for v in variants(load_document(path)) if not is_heavy(path, v)),
                           key=lambda v: member(path, v).check().totals.params, default=None)
            if smallest is not None:
                cases.append(pytest.param(path, smallest, id=f"{path.stem}:{smallest}"))
        if member(path, None).check().totals.params <= HUGE:
            cases.append(pytest.param(path, None, id=path.stem, marks=[pytest.mark.slow] if heavy else []))
    return cases


BUILD_CASES = build_params(MODELS)


def _shape(spec, path: str) -> tuple[int, ...]:
    """The output shape of node ``path`` for one sample."""
    return tuple(spec.graph.nodes[path].outputs[0].concrete_shape({"B": 1}))


def params_of(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_specs_exist():
    assert {"mlp", "lenet5", "resnet", "vit"} <= {p.stem for p in MODELS}
    assert {"resnet", "transformer"} <= {p.stem for p in BLOCK_FILES}


# -- every model spec ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", **by_name(MODELS))
def test_spec_metadata(path: Path):
    spec = nasforge.load(path)
    raw = spec.document.raw
    assert raw.get("nasforge") == 1
    assert spec.name == path.stem
    assert isinstance(raw.get("doc"), str) and raw["doc"].strip()
    paper = spec.paper
    missing = [k for k in PAPER_KEYS if not paper.get(k)]
    assert not missing, f"paper: is missing {missing}"
    assert isinstance(paper["params"], int) and not isinstance(paper["params"], bool)
    assert isinstance(paper["year"], int)
    assert str(paper["url"]).startswith("https://")
    if "macs" in paper:
        assert isinstance(paper["macs"], int) and paper["macs"] > 0
    assert raw.get("params"), "a model spec exposes its family's variants as params"


@pytest.mark.parametrize("path,variant", MEMBERS, ids=MEMBER_IDS)
def test_spec_checks_cleanly(path: Path, variant: str | None):
    report = member(path, variant).check()
    assert report.warnings == []
    assert report.totals.params > 0 and report.totals.macs > 0


@pytest.mark.parametrize("path,variant", MEMBERS, ids=MEMBER_IDS)
def test_params_match_paper(path: Path, variant: str | None):
    spec = member(path, variant)
    assert isinstance(spec.paper.get("params"), int), "every family member records its published params"
    assert spec.check().totals.params == spec.paper["params"]


@pytest.mark.parametrize("path,variant", MEMBERS, ids=MEMBER_IDS)
def test_macs_match_paper(path: Path, variant: str | None):
    spec = member(path, variant)
    if "macs" not in spec.paper:
        pytest.skip("the paper quotes no MACs / FLOPs")
    macs, published = spec.check().totals.macs, spec.paper["macs"]
    assert abs(macs - published) <= 0.01 * published, f"{macs:,} MACs vs published {published:,}"


@pytest.mark.parametrize("path,variant", BUILD_CASES)
def test_builds_and_runs_a_batch(path: Path, variant: str | None):
    spec = nasforge.load(path, variant=variant)
    gm = spec.build()
    inputs = example_inputs(spec.graph, batch=2)
    with torch.no_grad():
        out = gm(*inputs)
    outputs = list(spec.graph.outputs.values())
    assert len(outputs) == 1
    expected = spec.graph.type_of(outputs[0]).concrete_shape({"B": 2})
    assert tuple(out.shape) == tuple(expected)
    if "num_classes" in spec.graph.meta["params"]:
        assert tuple(out.shape) == (2, spec.graph.meta["params"]["num_classes"])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("path,variant", BUILD_CASES)
def test_built_module_counts_agree_with_analysis(path: Path, variant: str | None):
    """Independent counts: numel over the built module's parameters, and torch's own FLOP counter."""
    spec = nasforge.load(path, variant=variant)
    gm = spec.build()
    totals = spec.check().totals
    assert params_of(gm) == totals.params
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        gm(*example_inputs(spec.graph, batch=1))
    assert counter.get_total_flops() == 2 * totals.macs


@pytest.mark.parametrize("path,variant", BUILD_CASES)
def test_exports_with_dynamic_batch(path: Path, variant: str | None):
    """Full-size torch.export of every model with a dynamic batch, traced at batch 2 and checked against the
    module at batch 1: another batch than the traced one, and the size a program wrongly specialized on its
    example (a broadcast, a squeeze) most often gets wrong; the smallest, too (batch 3 took Mamba-130m 72 s)."""
    spec = nasforge.load(path, variant=variant)
    gm = spec.build()
    inputs = example_inputs(spec.graph, batch=2)
    dynamic = tuple({0: Dim("batch", min=1, max=64)} for _ in inputs)
    program = torch.export.export(gm, inputs, dynamic_shapes=dynamic)
    other = example_inputs(spec.graph, batch=1, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*other), gm(*other))


@pytest.mark.parametrize("path", **by_name(MODELS))
def test_to_yaml_round_trips(path: Path):
    spec = nasforge.load(path)
    again = nasforge.loads(spec.to_yaml(), name=str(path))
    assert again.check().totals == spec.check().totals


@pytest.mark.parametrize("path", **by_name(BLOCK_FILES))
def test_block_files_load_and_document_their_blocks(path: Path):
    doc = load_document(path)
    assert doc.blocks
    for block in doc.blocks.values():
        assert isinstance(block.raw.get("doc"), str) and block.raw["doc"].strip(), block.name


# -- MLP -----------------------------------------------------------------------------------------------

def test_mlp_layers_and_variants():
    spec = nasforge.load(MLP)
    rows = {r.path: r.params for r in spec.summary().rows}
    # 784-300-100-10: (784*300 + 300) + (300*100 + 100) + (100*10 + 10)
    assert rows == {"flatten": 0, "hidden.0.fc": 235_500, "hidden.0.act": 0, "hidden.1.fc": 30_100,
                    "hidden.1.act": 0, "head": 1_010}
    # 784-256-128-10: 200,960 + 32,896 + 1,290; MACs 200,704 + 32,768 + 1,280
    totals = nasforge.load(MLP, hidden=[256, 128]).check().totals
    assert (totals.params, totals.macs) == (235_146, 234_752)
    # the paper's 784-300-10 and 784-1000-10: one hidden layer
    assert nasforge.load(MLP, hidden=[300]).check().totals.params == 784 * 300 + 300 + 300 * 10 + 10
    assert nasforge.load(MLP, hidden=[1000], act="tanh").check().totals.params == 795_010


# -- LeNet-5 -------------------------------------------------------------------------------------------

def test_lenet5_layers_match_the_paper_figure():
    spec = nasforge.load(LENET)
    rows = {r.path: (_shape(spec, r.path), r.params) for r in spec.summary().rows}
    assert rows["c1"] == ((1, 6, 28, 28), 156)        # 6 x (5*5*1 + 1)
    assert rows["s2"] == ((1, 6, 14, 14), 0)
    assert rows["c3"] == ((1, 16, 10, 10), 2_416)     # 16 x (5*5*6 + 1): every S2 map (paper: 1,516)
    assert rows["s4"] == ((1, 16, 5, 5), 0)
    assert rows["c5"] == ((1, 120, 1, 1), 48_120)     # 120 x (5*5*16 + 1)
    assert rows["f6"] == ((1, 84), 10_164)            # 84 x (120 + 1)
    assert rows["output"] == ((1, 10), 850)           # 10 x (84 + 1) (paper: 840 fixed RBF weights)


def test_lenet5_exact_count_and_the_papers_60k():
    totals = nasforge.load(LENET).check().totals
    # 156 + 2,416 + 48,120 + 10,164 + 850 = 61,706
    assert totals.params == 156 + 2_416 + 48_120 + 10_164 + 850 == 61_706
    # MACs: 28*28*6*25 + 10*10*16*150 + 120*400 + 84*120 + 10*84
    assert totals.macs == 117_600 + 240_000 + 48_000 + 10_080 + 840 == 416_520
    # The paper's 60,000 trainable parameters: C1 156, S2 12, C3 1,516 (Table I: 60 5x5 kernels over
    # 6 + 9 + 1 maps seeing 3, 4 and 6 inputs, plus 16 biases), S4 32, C5 48,120, F6 10,164, RBF 0.
    c3_sparse = 25 * (6 * 3 + 9 * 4 + 1 * 6) + 16
    assert c3_sparse == 1_516
    assert 156 + 12 + c3_sparse + 32 + 48_120 + 10_164 == 60_000
    assert totals.params - 60_000 == (2_416 - c3_sparse) + 850 - (12 + 32)


def test_lenet5_activation_and_pooling_are_parameters():
    base = nasforge.load(LENET).check().totals
    modern = nasforge.load(LENET, act="relu", pool="max_pool2d")
    assert {n.op for n in modern.graph} >= {"relu", "max_pool2d"}
    assert (modern.check().totals.params, modern.check().totals.macs) == (base.params, base.macs)


# -- ViT -----------------------------------------------------------------------------------------------

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
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(dim, 4 * dim))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _ReferenceViT(nn.Module):
    """timm's VisionTransformer (class token, pre-norm blocks), written out independently."""

    def __init__(self, dim: int, depth: int, heads: int, image: int = 224, patch: int = 16) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*[_Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, 1000)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


# nasforge's class_token / pos_embed_learned ops keep their tables as submodule parameters
_TIMM_TO_SPEC = {"cls_token": "cls_token.token", "pos_embed": "pos_embed.pos"}


@pytest.mark.parametrize("overrides, dim, heads", [
    pytest.param({}, 192, 3, id="vit-ti", marks=pytest.mark.slow),
    pytest.param({"dim": 384, "heads": 6, "depth": 2}, 384, 6, id="vit-s-2-blocks"),
])
def test_vit_equals_an_independent_timm_layout(overrides, dim, heads):
    spec = nasforge.load(VIT, **overrides)
    gm = spec.build()
    ref = _ReferenceViT(dim, spec.graph.meta["params"]["depth"], heads).eval()
    state = {_TIMM_TO_SPEC.get(k, k): v for k, v in small_random_state(ref).items()}
    assert {k: v.shape for k, v in gm.state_dict().items()} == {k: v.shape for k, v in state.items()}
    gm.load_state_dict(state)
    ref.load_state_dict({k: state[_TIMM_TO_SPEC.get(k, k)] for k in ref.state_dict()})
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(gm(x), ref(x), rtol=1e-4, atol=1e-5)


def test_vit_tiny_counts():
    spec = nasforge.load(VIT)
    totals = spec.check().totals
    n, c = 197, 192
    per_block_params = 2 * 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + (c * 4 * c + 4 * c) + (4 * c * c + c)
    assert per_block_params == 444_864
    # patch conv + class token + positions + 12 blocks + final norm + head
    assert totals.params == (3 * 16 * 16 * c + c) + c + n * c + 12 * per_block_params + 2 * c + (c * 1000 + 1000)
    assert totals.params == 5_717_416
    linear = n * c * 3 * c + n * c * c + 2 * n * c * 4 * c      # qkv, proj, fc1, fc2
    attention = 2 * n * n * c                                   # Q K^T and A V
    assert totals.macs == 196 * c * 768 + 12 * (linear + attention) + c * 1000 == 1_253_683_200
    assert _shape(spec, "patch_embed.tokens") == (1, 196, 192)
    assert _shape(spec, "pos_embed") == (1, 197, 192)
    assert _shape(spec, "cls") == (1, 1, 192)
    assert _shape(spec, "pool") == (1, 192)


@pytest.mark.parametrize("overrides, params, macs", [
    pytest.param({"dim": 384, "heads": 6}, 22_050_664, 4.61e9, id="vit-s16"),
    pytest.param({"dim": 768, "heads": 12}, 86_567_656, 17.58e9, id="vit-b16"),
])
def test_vit_family_variants(overrides, params, macs):
    """timm's parameter counts and benchmark-table GMACs for vit_small / vit_base_patch16_224."""
    totals = nasforge.load(VIT, **overrides).check().totals
    assert totals.params == params
    assert abs(totals.macs - macs) <= 0.01 * macs


def test_vit_stochastic_depth_rates():
    nodes = nasforge.load(VIT, drop_path_rate=0.1).graph.nodes
    assert "blocks.0.drop_path1" not in nodes
    for i in range(1, 12):
        for branch in ("drop_path1", "drop_path2"):
            assert nodes[f"blocks.{i}.{branch}"].attrs["p"] == pytest.approx(0.1 * i / 11)
