"""The design spaces of specs/spaces held to their papers and reference code: the decision counts they
state, their named members against the model specs and the numbers counted on the reference
implementations, and the structure each encoding promises (test_paper_spaces.py runs the generic checks:
metadata, option problems, random members that build and run)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import nasforge
from nasforge.compiler.fx_builder import example_inputs
from nasforge.search.hashing import graph_hash
from nasforge.search.space import Space, option_count

SPACES = Path(__file__).resolve().parents[2] / "specs" / "spaces"
CONVNEXT, VIT, BOSS, SIMQ = (SPACES / f"{name}.yaml" for name in
                             ("convnext_design", "vit_multistage", "bossnas_hybrid", "simq_quant"))


def load(path: Path) -> nasforge.Spec:
    return nasforge.load(path)


def member(path: Path, name: str) -> nasforge.Spec:
    spec = load(path)
    return spec.with_choices(spec.paper["members"][name]["choices"])


def shapes(spec: nasforge.Spec) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in spec.build().state_dict().items()}


# -- sizes: the stated decision counts, from the papers' option lists and from nasforge's count --------

@pytest.mark.parametrize("path,expected", [
    # depths 3*3*5*3, widths 3^4, stem norm 2, head 2, per stage 5 ConvNeXt kernels + 2*4*3 InceptionNeXt settings
    (CONVNEXT, 3 * 3 * 5 * 3 * 3 ** 4 * 2 * 2 * (5 + 2 * 4 * 3) ** 4),
    # per stage: 5 widths, 3 fixed layers of 4x7 settings, 3 removable layers of 4x7 + removed
    (VIT, (5 * (4 * 7) ** 3 * (4 * 7 + 1) ** 3) ** 3),
    # depths at 1/4, 1/8, 1/16 (5, 5, 9 options) and an op per layer
    (BOSS, 5 * 5 * 9 * 2 ** 16),
    # 53 layers at FP32 or INT8
    (SIMQ, 2 ** 53),
], ids=["convnext_design", "vit_multistage", "bossnas_hybrid", "simq_quant"])
def test_stated_decision_count_is_what_nasforge_counts(path: Path, expected: int):
    spec = load(path)
    assert spec.paper["decisions"] == expected
    space = Space(spec)
    assert space.size() == expected
    # every decision exists in every network: the count is the plain product of the options
    assert not space.structural()
    assert math.prod(option_count(c) for c in space.choices) == expected


# -- ConvNeXt / InceptionNeXt ----------------------------------------------------------------------

@pytest.mark.parametrize("name,model,params", [
    ("convnext_tiny", "convnext.yaml", 28_589_128),
    ("inceptionnext_tiny", "inceptionnext_tiny.yaml", 28_055_680),
])
def test_convnext_design_members_are_the_model_specs(name: str, model: str, params: int):
    spec = member(CONVNEXT, name)
    reference = nasforge.load(SPACES.parent / "models" / model)
    assert spec.paper["members"][name]["params"] == params
    assert spec.check().totals.params == reference.check().totals.params == params
    assert spec.check().totals.macs == reference.check().totals.macs
    assert shapes(spec) == shapes(reference)


def test_convnext_design_choices_reach_the_blocks():
    spec = load(CONVNEXT)
    atto_like = spec.with_choices({
        "params.depths.0": 2, "params.depths.2": 6, "params.dims.0": 64,
        "stages.0.block": {"block": "inceptionnext_stage", "mlp_ratio": 3, "band_kernel": 9,
                           "branch_ratio": 0.25}})
    weights = shapes(atto_like)
    # InceptionNeXt's split: 16 of the 64 channels in each branch, band kernels 1x9 and 9x1, MLP ratio 3
    assert weights["stages.0.blocks.0.token_mixer.dwconv_w.weight"] == (16, 1, 1, 9)
    assert weights["stages.0.blocks.1.token_mixer.dwconv_h.weight"] == (16, 1, 9, 1)
    assert weights["stages.0.blocks.1.mlp.fc1.weight"] == (192, 64, 1, 1)
    assert "stages.0.blocks.2.norm.weight" not in weights            # depth 2
    assert weights["stages.1.blocks.0.conv_dw.weight"] == (192, 1, 7, 7)   # stage 1 stays ConvNeXt
    assert sum(1 for k in weights if k.startswith("stages.2.blocks.") and k.endswith("conv_dw.weight")) == 6


def test_convnext_design_depthwise_kernel_is_a_choice():
    spec = load(CONVNEXT)
    assert spec.check().totals.params == 28_589_128  # the defaults are ConvNeXt-T (kernel 7 everywhere)
    kernels = {o["kernel"] for c in spec.choices if c.label == "stages.3.block" for o in c.options
               if o["block"] == "convnext_stage"}
    assert kernels == {3, 5, 7, 9, 11}  # ConvNeXt's Sec. 2.5
    small = spec.with_choices({"stages.1.block": {"block": "convnext_stage", "block_type": "convnext_block",
                                                  "kernel": 3}})
    weights = shapes(small)
    assert weights["stages.1.blocks.2.conv_dw.weight"] == (192, 1, 3, 3)
    assert weights["stages.2.blocks.0.conv_dw.weight"] == (384, 1, 7, 7)
    # a 3x3 instead of a 7x7 depthwise kernel in stage 1 saves (49 - 9) weights per channel and block
    assert spec.check().totals.params - small.check().totals.params == 3 * 192 * 40
    out = small.build()(*example_inputs(small.graph, batch=1))
    assert out.shape == (1, 1000)


# -- ViT-ResNAS ------------------------------------------------------------------------------------

def test_vit_resnas_tiny_member_matches_the_reference_counts():
    spec = member(VIT, "vit_resnas_tiny")
    entry = spec.paper["members"]["vit_resnas_tiny"]
    totals = spec.check().totals
    assert (totals.params, totals.macs) == (entry["params"], entry["macs"]) == (40_793_552, 1_782_630_272)
    weights = shapes(spec)
    # 5, 6 and 5 layers: the removed slots own nothing
    assert not any(k.startswith(("stages.0.blocks.5.", "stages.2.blocks.5.")) for k in weights)
    assert weights["stages.1.blocks.5.attn.qkv.weight"] == (3 * 10 * 48, 352)    # 5 sixths of 12 heads of 48
    assert weights["stages.2.blocks.1.mlp.fc1.weight"] == (7 * 256, 704)
    # the spatial reductions: 3x3/2 conv, class-token Linear and a position table for 8x8 + 1 tokens
    assert weights["stages.1.sr.patch_reduce.weight"] == (352, 176, 3, 3)
    assert weights["stages.1.sr.token_transform.weight"] == (352, 176)
    assert weights["stages.2.sr.pos_embed.pos"] == (1, 16, 704)
    assert weights["pos_embed.pos"] == (1, 257, 176)


def test_vit_resnas_token_counts_per_stage():
    graph = load(VIT).graph
    types = {node.path: node.outputs[0] for node in graph}
    assert types["stages.0.blocks.0.residual2"].shape[1:] == (257, 256)
    assert types["stages.1.sr.sum"].shape[1:] == (65, 512)
    assert types["stages.2.sr.sum"].shape[1:] == (17, 1024)


# -- BossNAS HyTra -----------------------------------------------------------------------------------

def test_bossnet_t0_member_matches_the_reference_counts():
    spec = member(BOSS, "bossnet_t0_nose")
    entry = spec.paper["members"]["bossnet_t0_nose"]
    totals = spec.check().totals
    assert (totals.params, totals.macs) == (entry["params"], entry["macs"]) == (37_319_080, 3_441_888_768)
    graph = spec.graph
    attention = sorted(int(n.path.split(".")[1]) for n in graph if n.op == "sdpa")
    assert attention == [5, 7, 8, 9, 11, 12, 13, 14, 15]
    side = {int(n.path.split(".")[1]): n.outputs[0].shape[2] for n in graph
            if n.path.startswith("layers.") and n.path.endswith(".op.act3")}
    # ResConv layers: 1 at 1/4, 1 at 1/8, 4 at 1/16 (one of the five is ResAtt), 1 at 1/32
    assert side == {0: 56, 1: 28, 2: 14, 3: 14, 4: 14, 6: 14, 10: 7}


def test_hytra_downsampling_positions_and_empty_resolutions():
    spec = load(BOSS)
    everything_at_1_32 = spec.with_choices({"params.depths.0": 0, "params.depths.1": 0, "params.depths.2": 0})
    weights = shapes(everything_at_1_32)
    # the first layer leaves the stem through transitions at 1/8 and 1/16, then downsamples itself
    assert weights["layers.0.transition.0.conv.weight"] == (512, 64, 3, 3)
    assert weights["layers.0.transition.1.conv.weight"] == (1024, 512, 3, 3)
    assert weights["layers.0.op.peg.conv.weight"] == (512, 1, 3, 3)
    assert weights["layers.0.op.downsample.1.weight"] == (2048, 1024, 1, 1)
    nothing_at_1_32 = spec.with_choices({"params.depths.0": 4, "params.depths.1": 4, "params.depths.2": 8})
    weights = shapes(nothing_at_1_32)
    assert weights["tail.0.conv.weight"] == (2048, 1024, 3, 3)
    assert not any(k.startswith("layers.8.transition") for k in weights)
    for net in (everything_at_1_32, nothing_at_1_32):
        assert net.graph.type_of(net.graph.outputs["logits"]).shape[1:] == (1000,)


def test_hytra_ops_at_1_4_and_1_8_are_ignored():
    spec = load(BOSS)
    base = spec.with_choices({"params.ops.0": "res_conv"})
    assert graph_hash(spec.with_choices({"params.ops.0": "res_att"}).graph) == graph_hash(base.graph)
    assert graph_hash(spec.with_choices({"params.ops.2": "res_att"}).graph) != graph_hash(base.graph)


# -- SimQ-NAS policy -----------------------------------------------------------------------------------

def policy(bits: int) -> nasforge.Spec:
    spec = load(SIMQ)
    return spec.with_choices({c.label: bits for c in spec.choices})


def test_simq_fp32_member_is_mobilenet_v2():
    fp32 = policy(32)
    reference = nasforge.load(SPACES.parent / "models" / "mobilenet_v2.yaml")
    assert fp32.paper["members"]["fp32"]["params"] == fp32.check().totals.params == 3_504_872
    assert fp32.check().totals.macs == reference.check().totals.macs
    assert graph_hash(fp32.graph) == graph_hash(reference.graph)
    assert not any(node.op == "fake_quantize" for node in fp32.graph)


def test_simq_int8_member_quantizes_every_layer_input():
    int8 = policy(8)
    graph = int8.graph
    quantizers = {node.path for node in graph if node.op == "fake_quantize"}
    assert len(quantizers) == 53 == len(load(SIMQ).choices)
    assert int8.check().totals.params == int8.paper["members"]["int8"]["params"]
    layers = [node for node in graph if node.op in ("conv2d", "linear")]
    assert len(layers) == 53
    assert all(node.inputs[0].node in quantizers for node in layers)
    # same weights, INT8 inputs: close to the float network but not equal to it
    fp32_module, int8_module = policy(32).build().eval(), int8.build().eval()
    int8_module.load_state_dict(fp32_module.state_dict())
    x = example_inputs(graph, batch=2)
    with torch.no_grad():
        want, got = fp32_module(*x), int8_module(*x)
    assert not torch.equal(got, want)
    assert (got - want).abs().max() < 0.1 * want.abs().max()


def test_simq_one_layer_at_int8():
    spec = load(SIMQ)
    one = spec.with_choices({"blocks.3.2.bits_dw": 8})
    quantizers = [node for node in one.graph if node.op == "fake_quantize"]
    assert [q.path for q in quantizers] == ["blocks.3.2.quant_dw.fq"]
    assert quantizers[0].attrs == {"bits": 8, "symmetric": False, "per_channel": False, "axis": 1}
