"""The DARTS, Single Path One-Shot and Once-for-All spaces, held to their reference code.

Sizes and random members are checked for every space by ``test_paper_spaces.py``; here the named members
(DARTS_V1/V2, SPOS's searched network, OFA's largest/smallest/a random subnet) must have the parameter
counts the reference implementations give, each space's choices must count what its paper counts, and
the DARTS and SPOS networks must compute what a plain functional reading of their papers computes (an
independent forward over the built module's own weights).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import nasforge
from nasforge.search.space import Space, option_count

SPACES = Path(__file__).resolve().parents[2] / "specs" / "spaces"
DARTS = SPACES / "darts.yaml"
SPOS = SPACES / "spos_shufflenetv2.yaml"
MBCONV = SPACES / "mbconv.yaml"

Genotype = list[tuple[str, int]]
"""A cell as quark0/darts genotypes.py writes it: (op, input state) for the 8 edges, two per node."""

DARTS_V1 = {
    "normal": [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
               ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    "reduce": [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
               ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
}
DARTS_V2 = {
    "normal": [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
               ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    "reduce": [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
               ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
}
EVERY_OP = {  # every op in both cells, strided skip_connect (FactorizedReduce) and strided convs included
    "normal": [("dil_conv_5x5", 1), ("avg_pool_3x3", 0), ("sep_conv_5x5", 2), ("max_pool_3x3", 0),
               ("skip_connect", 1), ("dil_conv_3x3", 3), ("sep_conv_3x3", 4), ("skip_connect", 2)],
    "reduce": [("skip_connect", 0), ("sep_conv_5x5", 1), ("dil_conv_3x3", 0), ("avg_pool_3x3", 2),
               ("dil_conv_5x5", 1), ("sep_conv_3x3", 3), ("max_pool_3x3", 4), ("skip_connect", 2)],
}


def genotype_choices(genotype: dict[str, Genotype]) -> dict[str, Any]:
    """A genotype as decisions of darts.yaml: per node its input pair (lower state first) and the op on
    each of the two states."""
    decided: dict[str, Any] = {}
    for kind, edges in genotype.items():
        for node in range(2, 6):
            (op_a, a), (op_b, b) = sorted(edges[2 * node - 4: 2 * node - 2], key=lambda edge: edge[1])
            if node > 2:
                decided[f"params.{kind}_in_{node}"] = [a, b]
            decided[f"params.{kind}_op_{node}a"], decided[f"params.{kind}_op_{node}b"] = op_a, op_b
    return decided


def randomize_batch_norms(gm: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters, so that a wrong BN placement shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in gm.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.rand(module.num_features, generator=gen) - 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
                if module.affine:
                    module.weight.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
                    module.bias.copy_(torch.rand(module.num_features, generator=gen) - 0.5)


def bn(x: torch.Tensor, p: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.batch_norm(x, p[f"{name}.running_mean"], p[f"{name}.running_var"], p.get(f"{name}.weight"),
                        p.get(f"{name}.bias"), False, 0.0, 1e-5)


def depthwise(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, dilation: int = 1) -> torch.Tensor:
    k = weight.shape[-1]
    return F.conv2d(x, weight, stride=stride, padding=dilation * (k // 2), dilation=dilation, groups=x.shape[1])


# ------------------------------------------------------------------------------------------------ DARTS

def darts_edge(op: str, x: torch.Tensor, p: dict[str, torch.Tensor], name: str, stride: int) -> torch.Tensor:
    """One edge of a DARTS cell, read from the paper's Section 3 / operations.py."""
    if op == "max_pool_3x3":
        return F.max_pool2d(x, 3, stride, 1)
    if op == "avg_pool_3x3":
        return F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)
    if op == "skip_connect":
        return x if stride == 1 else factorized_reduce(x, p, f"{name}.reduce")
    unit, dilation = ("sep", 1) if op.startswith("sep") else ("dil", 2)
    w = f"{name}.{unit}.op"
    y = bn(F.conv2d(depthwise(F.relu(x), p[f"{w}.1.weight"], stride, dilation), p[f"{w}.2.weight"]), p, f"{w}.3")
    if unit == "dil":
        return y
    return bn(F.conv2d(depthwise(F.relu(y), p[f"{w}.5.weight"]), p[f"{w}.6.weight"]), p, f"{w}.7")


def factorized_reduce(x: torch.Tensor, p: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    x = F.relu(x)
    halves = [F.conv2d(x, p[f"{name}.conv_1.weight"], stride=2),
              F.conv2d(x[:, :, 1:, 1:], p[f"{name}.conv_2.weight"], stride=2)]
    return bn(torch.cat(halves, 1), p, f"{name}.bn")


def relu_conv_bn(x: torch.Tensor, p: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return bn(F.conv2d(F.relu(x), p[f"{name}.op.1.weight"]), p, f"{name}.op.2")


def darts_forward(p: dict[str, torch.Tensor], genotype: dict[str, Genotype], x: torch.Tensor,
                  layers: int) -> torch.Tensor:
    """NetworkCIFAR in eval mode: each cell takes the two previous cells' outputs."""
    s0 = s1 = bn(F.conv2d(x, p["stem.0.weight"], padding=1), p, "stem.1")
    reductions = (layers // 3, 2 * layers // 3)
    for k in range(layers):
        cell, reduction = f"cells.{k}", k in reductions
        pre0 = factorized_reduce if k - 1 in reductions else relu_conv_bn
        states = [pre0(s0, p, f"{cell}.preprocess0"), relu_conv_bn(s1, p, f"{cell}.preprocess1")]
        edges = genotype["reduce" if reduction else "normal"]
        for node in range(4):
            pair = sorted(edges[2 * node: 2 * node + 2], key=lambda edge: edge[1])
            states.append(sum(darts_edge(op, states[i], p, f"{cell}._ops.{2 * node + e}",
                                         2 if reduction and i < 2 else 1) for e, (op, i) in enumerate(pair)))
        s0, s1 = s1, torch.cat(states[2:], 1)
    return F.linear(s1.mean((2, 3)), p["classifier.weight"], p["classifier.bias"])


@pytest.mark.parametrize("name,genotype,params", [("DARTS_V2", DARTS_V2, 3_349_342), ("DARTS_V1", DARTS_V1, 3_169_414)])
def test_darts_genotypes_have_the_reference_parameter_counts(name, genotype, params):
    """NetworkCIFAR(36, 10, 20, auxiliary=False, genotype) of quark0/darts; V2 is the paper's 3.3M."""
    spec = nasforge.load(DARTS).with_choices(genotype_choices(genotype))
    assert spec.check().totals.params == params
    if name == "DARTS_V2":
        assert spec.paper["params_darts_v2"] == params


def test_darts_search_skeleton_is_the_small_proxy():
    spec = nasforge.load(DARTS, variant="search_skeleton").with_choices(genotype_choices(DARTS_V2))
    graph = spec.graph
    assert spec.check().totals.params == 246_106  # NetworkCIFAR(16, 10, 8, False, DARTS_V2)
    assert sorted({int(n.path.split(".")[1]) for n in graph if n.path.startswith("cells.")}) == list(range(8))
    # reductions at cells 2 and 5, and the cell after each preprocesses s0 with FactorizedReduce
    assert {n.path.split(".")[1] for n in graph if n.path.endswith("preprocess0.conv_1")} == {"3", "6"}
    assert graph.nodes["cells.7.concat"].outputs[0].shape[1:] == (4 * 64, 8, 8)


def test_darts_choices_count_genotypes_not_ordered_pairs():
    choices = {c.label: c for c in nasforge.load(DARTS).choices}
    assert len(choices) == 2 * (3 + 8)
    for kind in ("normal", "reduce"):
        for node in range(3, 6):  # an unordered pair of distinct earlier states per node
            assert choices[f"params.{kind}_in_{node}"].options == tuple(
                [a, b] for a in range(node) for b in range(a + 1, node))
    assert choices["params.normal_op_2a"].options == (
        "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
        "dil_conv_5x5")
    count = math.prod(option_count(c) for c in choices.values())
    assert count == (math.comb(3, 2) * math.comb(4, 2) * math.comb(5, 2)) ** 2 * 7 ** 16
    assert count == nasforge.load(DARTS).paper["size"] == 1_076_746_950_455_072_400


@pytest.mark.parametrize("genotype", [DARTS_V2, EVERY_OP], ids=["DARTS_V2", "every_op"])
def test_darts_networks_compute_the_papers_cells(genotype):
    spec = nasforge.load(DARTS, variant="search_skeleton").with_choices(genotype_choices(genotype))
    gm = spec.build()
    randomize_batch_norms(gm)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = gm(x)
        want = darts_forward(dict(gm.state_dict()), genotype, x, layers=8)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def test_strided_skip_connect_is_a_factorized_reduce():
    graph = nasforge.load(DARTS, variant="search_skeleton").with_choices(genotype_choices(EVERY_OP)).graph
    assert "cells.2._ops.0.reduce.conv_1" in graph.nodes  # reduction cell, skip_connect on state 0
    assert not any(p.startswith("cells.2._ops.6.") for p in graph.nodes)  # on node 2: the identity
    assert graph.nodes["cells.2.n5"].inputs[0].node == "cells.2.n2"
    assert graph.nodes["cells.2._ops.1.sep.op.1"].attrs["stride"] == 2  # sep_conv on s1, strided
    assert graph.nodes["cells.2._ops.5.sep.op.1"].attrs["stride"] == 1  # sep_conv on node 3


# ------------------------------------------------------------------------------------------------- SPOS

SPOS_SEARCHED = (2, 1, 0, 1, 2, 0, 2, 0, 2, 0, 2, 3, 0, 0, 0, 0, 3, 2, 3, 3)
"""The network the SinglePathOneShot README reports (3.5M parameters, 323M FLOPs)."""


def spos_choices(arch: tuple[int, ...]) -> dict[str, int]:
    return {f"features.{k}.arch": a for k, a in enumerate(arch)}


def spos_forward(p: dict[str, torch.Tensor], arch: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    """ShuffleNetV2_OneShot in eval mode, from the paper's Figure / blocks.py semantics."""
    def conv_bn(x: torch.Tensor, name: str, stride: int = 1, relu: bool = False) -> torch.Tensor:
        w = p[f"{name}.conv.weight"]
        y = bn(depthwise(x, w, stride) if w.shape[1] == 1 and w.shape[-1] > 1 else F.conv2d(x, w), p, f"{name}.bn")
        return F.relu(y) if relu else y

    x = F.relu(bn(F.conv2d(x, p["first_conv.conv.weight"], stride=2, padding=1), p, "first_conv.bn"))
    for k, a in enumerate(arch):
        block = f"features.{k}"
        stride = 2 if k in (0, 4, 8, 16) else 1
        if stride == 1:  # keep the even channels, transform the odd ones
            kept, x = x[:, 0::2], x[:, 1::2]
        else:
            kept = conv_bn(conv_bn(x, f"{block}.branch_proj.dw", 2), f"{block}.branch_proj.pw", relu=True)
        m = f"{block}.branch_main"
        if a == 3:
            for unit in (1, 2, 3):
                x = conv_bn(x, f"{m}.dw{unit}", stride if unit == 1 else 1)
                x = conv_bn(x, f"{m}.pw{unit}", relu=True)
        else:
            x = conv_bn(conv_bn(conv_bn(x, f"{m}.pw1", relu=True), f"{m}.dw", stride), f"{m}.pw2", relu=True)
        x = torch.cat([kept, x], 1)
    x = F.relu(bn(F.conv2d(x, p["conv_last.conv.weight"]), p, "conv_last.bn"))
    return F.linear(x.mean((2, 3)), p["classifier.weight"])


def test_spos_searched_network_has_the_reference_counts():
    spec = nasforge.load(SPOS).with_choices(spos_choices(SPOS_SEARCHED))
    totals = spec.check().totals
    # Evaluation/template network.py with channels_scales 1.0: the README's 3.5M params, 323M FLOPs
    assert (totals.params, totals.macs) == (3_558_464, 322_918_720)
    assert (spec.paper["params_searched"], spec.paper["macs_searched"]) == (totals.params, totals.macs)
    # the same path through the supernet (Supernet/network.py: BNs without affine parameters)
    supernet_path = nasforge.load(SPOS, bn_affine=False).with_choices(spos_choices(SPOS_SEARCHED))
    assert supernet_path.check().totals.params == 3_529_312


def test_spos_has_one_four_way_choice_per_block():
    choices = nasforge.load(SPOS).choices
    assert [c.label for c in choices] == [f"features.{k}.arch" for k in range(20)]
    assert all(c.options == (0, 1, 2, 3) for c in choices)
    assert math.prod(option_count(c) for c in choices) == 4 ** 20 == nasforge.load(SPOS).paper["size"]


@pytest.mark.parametrize("arch", [SPOS_SEARCHED, (3, 3, 1, 2, 3, 0, 1, 3, 1, 3, 2, 2, 1, 3, 0, 1, 0, 3, 1, 2)],
                         ids=["searched", "xception_strided"])
def test_spos_networks_compute_the_papers_blocks(arch):
    gm = nasforge.load(SPOS).with_choices(spos_choices(arch)).build()
    randomize_batch_norms(gm)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = gm(x)
        want = spos_forward(dict(gm.state_dict()), arch, x)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------- MBConv

def ofa_choices(ks: list[int], expand: list[int], depth: list[int]) -> dict[str, int]:
    """OFA's set_active_subnet(ks, e, d): ks/e per block slot (4 per stage, the first d used)."""
    decided = {}
    for stage, d in enumerate(depth):
        decided[f"stages.{stage}.blocks.repeat"] = d
        for j in range(d):
            decided[f"stages.{stage}.blocks.{j}.kernel"] = ks[4 * stage + j]
            decided[f"stages.{stage}.blocks.{j}.expand"] = expand[4 * stage + j]
    return decided


@pytest.mark.parametrize("ks,expand,depth,params", [
    ([7] * 20, [6] * 20, [4] * 5, 7_664_760),
    ([3] * 20, [3] * 20, [2] * 5, 3_410_792),
    ([5, 5, 3, 5, 7, 5, 5, 5, 5, 5, 7, 3, 7, 3, 5, 3, 3, 7, 5, 7],
     [6, 6, 3, 4, 3, 6, 3, 6, 4, 4, 6, 3, 4, 4, 4, 6, 6, 3, 6, 4], [3, 4, 3, 2, 4], 5_316_280),
], ids=["largest", "smallest", "random"])
def test_mbconv_subnets_have_ofa_parameter_counts(ks, expand, depth, params):
    """OFAMobileNetV3(ks 3/5/7, e 3/4/6, d 2/3/4).get_active_subnet() parameter counts."""
    spec = nasforge.load(MBCONV).with_choices(ofa_choices(ks, expand, depth))
    assert spec.check().totals.params == params
    if depth == [4] * 5 and ks == [7] * 20:
        assert spec.paper["params_max"] == params
    if depth == [2] * 5 and ks == [3] * 20:
        assert spec.paper["params_min"] == params


def test_mbconv_depth_reveals_kernel_and_expansion_per_layer():
    """Each stage's depth d brings exactly d layers with 3 kernels x 3 ratios: the OFA paper's count."""
    space = Space(nasforge.load(MBCONV))
    per_stage = []
    for stage in range(5):
        total = 0
        for d in (2, 3, 4):
            met = [c for c in space.concrete({f"stages.{stage}.blocks.repeat": d}).choices
                   if c.label.startswith(f"stages.{stage}.blocks.") and not c.label.endswith("repeat")]
            assert sorted(c.label for c in met) == sorted(
                f"stages.{stage}.blocks.{j}.{key}" for j in range(d) for key in ("kernel", "expand"))
            total += math.prod(option_count(c) for c in met)
        per_stage.append(total)
    assert per_stage == [9 ** 2 + 9 ** 3 + 9 ** 4] * 5
    assert math.prod(per_stage) == nasforge.load(MBCONV).paper["size"] == 21_758_655_492_572_485_851


def test_mbconv_stages_fix_se_and_activation_as_mobilenet_v3():
    graph = nasforge.load(MBCONV).with_choices(ofa_choices([3] * 20, [4] * 20, [2] * 5)).graph
    se = {s: f"stages.{s}.blocks.0.se.conv_reduce" in graph.nodes for s in range(5)}
    assert se == {0: False, 1: True, 2: False, 3: True, 4: True}
    acts = {s: graph.nodes[f"stages.{s}.blocks.1.act1"].op for s in range(5)}
    assert acts == {0: "relu", 1: "relu", 2: "hardswish", 3: "hardswish", 4: "hardswish"}
    # stage 1's first layer: 24 x 4 = 96 expanded channels, SE squeezes to make_divisible(96 / 4, 8) = 24
    assert graph.nodes["stages.1.blocks.0.se.conv_reduce"].outputs[0].shape[1] == 24
    assert graph.nodes["stages.1.blocks.1.residual"].op == "add"  # shape kept: identity shortcut
    assert "stages.1.blocks.0.residual" not in graph.nodes  # strided and widening: none
