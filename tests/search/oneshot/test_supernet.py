"""Supernets built from space files: sites, keys, modes, and agreement with the members they contain.

The strongest checks compare the supernet with the networks the compiler builds for members of the space:
a single path computes exactly what the member computes with the weights it inherits, and mixed mode with
architecture weights saturated on one member (zero op on the edges it does not wire) computes the same.
"""

from __future__ import annotations

import random

import pytest
import torch

import nasforge
from nasforge.compiler.fx_builder import example_inputs
from nasforge.errors import SpecError
from nasforge.search.oneshot.mixed import ElasticConv2d, MixedNode, MixedOp
from nasforge.search.oneshot.supernet import Supernet, build_supernet

from .conftest import SPACES

SATURATE = 30.0
"""An alpha this far above the others makes softmax one-hot to float32 precision (e^-30 ~ 1e-13)."""


def member_output(net: Supernet, assignment: dict, x: torch.Tensor) -> torch.Tensor:
    """What the space's member computes with the weights it inherits from the supernet (eval mode)."""
    member = net.space.with_choices(assignment).build()
    member.load_state_dict(net.member_state(assignment))  # strict: every key of the member, nothing else
    member.eval()
    with torch.no_grad():
        return member(x)


def saturate(net: Supernet, assignment: dict) -> None:
    """Architecture weights that put all weight on ``assignment``: its option of every plain choice, and on
    relaxed input choices its op on the edges it wires and the zero op on the others."""
    index = net.option_indexes(assignment)
    with torch.no_grad():
        for label in net.own_keys:
            net.alpha(label).zero_()[index[label]] = SATURATE
        for label, choice in net.inputs.items():
            wired = dict((j, p) for p, j in choice.wiring[index[label]])
            for j in range(choice.edges):
                net.alpha(f"{label}@{j}").zero_()[index[choice.op_labels[wired[j]]] if j in wired else -1] = SATURATE


# -- NAS-Bench-201: one cell searched, shared by every cell ------------------------------------------------

def test_nas_bench_201_has_one_key_per_edge_shared_by_every_cell(nb201_net):
    net = nb201_net
    assert net.choice_labels == [f"params.edge_{e}" for e in ("1_0", "2_0", "2_1", "3_0", "3_1", "3_2")]
    assert list(net.keys) == net.choice_labels
    ops = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
    assert all(key.options == ops and not key.zero for key in net.keys.values())  # `none` is an option already
    sites = net.sitemap.sites
    assert len(sites) == 6 * 3  # six edges in each stage's cell (N = 1)
    assert sorted(p for p, s in sites.items() if s.labels == ("params.edge_2_1",)) == [
        "stage1.0.e2_1", "stage2.0.e2_1", "stage3.0.e2_1"]
    assert all(len(s.candidates) == 5 for s in sites.values())
    assert net.options("params.edge_1_0") == list(ops)


def test_state_dict_follows_the_spec_paths_and_parameters_separate(nb201_net):
    net = nb201_net
    keys = net.state_dict().keys()
    assert "body.stage1.0.e1_0.candidates.nor_conv_3x3.conv.weight" in keys
    assert "body.reduce1.conv_a.conv.weight" in keys
    assert "alphas.params_edge_1_0" in keys
    weights = {id(p) for p in net.weight_parameters()}
    arch = {id(p) for p in net.arch_parameters()}
    assert not weights & arch and weights | arch == {id(p) for p in net.parameters()}
    assert [p.numel() for p in net.alphas.values()] == [5] * 6
    assert [p.numel() for p in net.betas.values()] == [2, 2]  # nodes 2 and the first sum of node 3


def test_body_is_a_graph_module_that_calls_mixed_ops(nb201_net):
    code = nb201_net.body.code
    assert "e1_0(" in code and "reduce1_conv_a_conv = self.reduce1.conv_a.conv(" in code
    assert isinstance(nb201_net.body.get_submodule("stage1.0.e1_0"), MixedOp)
    assert isinstance(nb201_net.body.get_submodule("stage1.0.n2"), MixedNode)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_path_computes_the_member_with_inherited_weights(nb201_net, seed):
    net = nb201_net
    x = example_inputs(net.space.graph, batch=3, seed=seed)[0]
    net.eval()
    net.set_mode("single_path")
    assignment = net.sample_path(random.Random(seed))
    with torch.no_grad():
        assert torch.equal(net(x), member_output(net, assignment, x))


def test_mixed_mode_with_saturated_weights_computes_the_member(nb201_net):
    net = nb201_net
    x = example_inputs(net.space.graph, batch=3)[0]
    assignment = {label: net.options(label)[k % 5] for k, label in enumerate(net.choice_labels)}
    saturate(net, assignment)
    net.eval()
    net.set_mode("mixed")
    with torch.no_grad():
        torch.testing.assert_close(net(x), member_output(net, assignment, x))
    assert net.derive() == assignment


def test_a_mixed_op_is_the_softmax_weighted_sum_of_its_candidates(nb201_net):
    net = nb201_net
    net.eval()
    net.set_mode("mixed")
    op = net.body.get_submodule("stage2.0.e1_0")
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        net.control.weights = net.current_weights()
        w = torch.softmax(net.alpha("params.edge_1_0"), 0)
        expected = sum(w[k] * op.candidates[name](x) for k, name in enumerate(op.names))
        torch.testing.assert_close(op(x), expected)


def test_gumbel_mode_runs_one_candidate_per_mixed_op(nb201_net):
    torch.manual_seed(0)  # the samples: not the ones earlier tests happen to leave for it
    net = nb201_net
    with torch.no_grad():  # uniform alphas and no stale gradients: earlier tests on this net saturate them
        for alpha in net.alphas.values():
            alpha.zero_()
            alpha.grad = None
    net.train()
    net.set_mode("gumbel", tau=1.0)
    calls = []
    handles = [m.register_forward_hook(lambda *_, path=path: calls.append(path))
               for path, m in net.body.named_modules() if path.count(".candidates.") == 1 and path.endswith(
                   tuple(f".candidates.{o}" for o in net.keys["params.edge_1_0"].options))]
    net(torch.randn(4, 3, 8, 8)).sum().backward()
    for h in handles:
        h.remove()
    assert len(calls) == len(net.sitemap.sites)  # one candidate at each of the 18 sites
    # the straight-through weights carry gradient to alpha (a sampled `none` cuts off what lies before it)
    assert any(a.grad is not None and a.grad.abs().sum() > 0 for a in net.alphas.values())


def test_partial_mode_sends_a_quarter_of_the_channels_through_the_ops(nb201_net):
    net = nb201_net
    net.set_mode("partial", k=4)
    net.train()
    net(torch.randn(4, 3, 8, 8)).sum().backward()
    assert all(b.grad is not None and b.grad.abs().sum() > 0 for b in net.betas.values())
    conv = net.body.get_submodule("stage2.0.e1_0.candidates.nor_conv_3x3.conv")
    assert isinstance(conv, ElasticConv2d) and conv.weight.shape[:2] == (8, 8)
    assert conv.weight.grad[2:].abs().sum() == 0 and conv.weight.grad[:2, :2].abs().sum() > 0  # 8 / 4 = 2 used


def test_derive_takes_the_strongest_option_including_none(nb201_net):
    net = nb201_net
    with torch.no_grad():
        for k, alpha in enumerate(net.alphas.values()):
            alpha.copy_(torch.arange(5.0) if k % 2 else -torch.arange(5.0))
    assert set(net.derive().values()) == {"avg_pool_3x3", "none"}


def test_paths_and_labels_are_checked(nb201_net):
    with pytest.raises(SpecError, match="not an option"):
        nb201_net.set_path({"params.edge_1_0": "conv_7x7"})
    with pytest.raises(SpecError, match="no choice 'params.edge_1_1'") as err:
        nb201_net.options("params.edge_1_1")
    assert "'params.edge_1_0'" in err.value.hint
    with pytest.raises(SpecError, match="unknown supernet mode"):
        nb201_net.set_mode("mixd")


def test_overrides_and_decided_choices(nb201):
    net = build_supernet(nb201.with_choices({"params.edge_1_0": "skip_connect"}), C=2)
    assert "params.edge_1_0" not in net.choice_labels and len(net.choice_labels) == 5
    assert net.body.get_submodule("stem.conv").out_channels == 2


def test_a_depth_choice_is_refused_with_a_hint():
    spec = nasforge.loads("""
params: {depth: {choice: [1, 2]}}
inputs: {image: [B, 3, 8, 8]}
blocks:
  unit:
    args: [k]
    nodes: [{id: conv, op: conv2d, out: 4, kernel: {choice: [1, 3]}, padding: "${0}"}]
graph:
  - {id: layers, repeat: $depth, as: i, block: unit, k: $i}
  - {id: pool, op: global_avg_pool, keepdim: false}
""")
    with pytest.raises(SpecError, match="changes which choice points exist") as err:
        build_supernet(spec)
    assert "elastic depth" in err.value.hint


def test_a_width_choice_is_refused_with_a_hint():
    spec = nasforge.loads("""
inputs: {image: [B, 3, 8, 8]}
graph:
  - {id: stem, op: conv2d, out: {choice: [4, 8]}, kernel: 1}
  - {id: mid, op: conv2d, out: 4, kernel: 3, padding: 1}
""")
    with pytest.raises(SpecError, match="a choice changes what 'stem' hands on") as err:
        build_supernet(spec)
    assert "[B, 8, 8, 8] with stem.out = 8" in err.value.found and "elastic width" in err.value.hint


def test_a_choice_on_one_op_is_a_site_of_its_own():
    spec = nasforge.loads("""
inputs: {image: [B, 3, 8, 8]}
graph:
  - {id: stem, op: conv2d, out: 4, kernel: 1}
  - {id: mid, op: conv2d, out: 4, kernel: {choice: [1, 3, 5]}, padding: same}
  - {id: pool, op: global_avg_pool, keepdim: false}
""")
    net = build_supernet(spec)
    (site,) = net.sitemap.sites.values()
    assert site.path == "mid" and len(site.candidates) == 3
    assert "body.mid.candidates.5.mid.weight" in net.state_dict()
    net.eval()
    net.set_mode("single_path")
    x = torch.randn(2, 3, 8, 8)
    expected = member_output(net, {"mid.kernel": 5}, x)  # sets the path too
    with torch.no_grad():
        assert torch.equal(net(x), expected)


# -- DARTS: input choices relaxed into edges from every earlier state --------------------------------------

def test_darts_input_choices_become_edges_from_every_earlier_state(darts_net_shared):
    net = darts_net_shared
    assert len(net.keys) == 28  # 14 edges per cell kind, as in DARTS
    for kind in ("normal", "reduce"):
        for node, edges in ((3, 3), (4, 4), (5, 5)):
            choice = net.inputs[f"params.{kind}_in_{node}"]
            assert choice.edges == edges
            assert choice.op_labels == (f"params.{kind}_op_{node}a", f"params.{kind}_op_{node}b")
            assert choice.wiring[0] == ((0, 0), (1, 1))  # [0, 1]: op a on state 0, op b on state 1
    for key in net.keys.values():
        assert key.zero and key.options[-1] == "none" and key.size == 8  # the relaxation's zero op
    node = net.body.get_submodule("cells.0.n5")
    assert isinstance(node, MixedNode) and len(node.edges) == 5


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_darts_single_path_and_saturated_mixed_mode_compute_the_member(darts_net_shared, seed):
    net = darts_net_shared
    saved = {k: v.clone() for k, v in net.alphas.items()}
    x = example_inputs(net.space.graph, batch=2, seed=seed)[0]
    assignment = net.sample_path(random.Random(seed))
    net.eval()
    try:
        expected = member_output(net, assignment, x)
        net.set_mode("single_path")
        net.set_path(assignment)
        with torch.no_grad():
            assert torch.equal(net(x), expected)
        saturate(net, assignment)
        net.set_mode("mixed")
        with torch.no_grad():
            torch.testing.assert_close(net(x), expected)
        assert net.derive() == assignment
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                net.alphas[k].copy_(v)


def test_darts_derive_keeps_the_two_strongest_edges_by_their_strongest_non_zero_op(darts_net_shared):
    net = darts_net_shared
    saved = {k: v.clone() for k, v in net.alphas.items()}
    ops = net.options("params.normal_op_3a")
    try:
        with torch.no_grad():
            for v in net.alphas.values():
                v.zero_()
            net.alpha("params.normal_in_3@0")[-1] = 9.0  # edge from state 0: all weight on `none`: not kept
            net.alpha("params.normal_in_3@1")[ops.index("sep_conv_5x5")] = 2.0
            net.alpha("params.normal_in_3@2")[ops.index("dil_conv_3x3")] = 3.0
        derived = net.derive()
        assert derived["params.normal_in_3"] == [1, 2]
        assert (derived["params.normal_op_3a"], derived["params.normal_op_3b"]) == ("sep_conv_5x5", "dil_conv_3x3")
        net.space.with_choices(derived).graph  # noqa: B018 (a member of the space)
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                net.alphas[k].copy_(v)


@pytest.mark.slow
def test_spos_blocks_become_mixed_ops_whose_paths_are_the_members():
    space = nasforge.load(SPACES / "spos_shufflenetv2.yaml", repeats=[1, 1, 2, 1], widths=[16, 32, 64, 128], stem=8,
                          last=64, num_classes=10)
    net = build_supernet(space)
    assert len(net.keys) == 5 and all(not key.zero for key in net.keys.values())
    site = net.sitemap.sites["features.0.branch_main"]
    assert [c.graph.nodes.keys() for c in site.candidates][3] >= {"dw1.conv", "pw3.bn"}  # the Xception branch
    assert net.sitemap.sites["features.0.branch_proj.dw.conv"].combos == {(0,): 0, (1,): 1, (2,): 2, (3,): 0}
    net.eval()
    net.set_mode("single_path")
    x = torch.randn(2, 3, 224, 224)
    for seed in range(2):
        assignment = net.sample_path(random.Random(seed))
        with torch.no_grad():
            assert torch.equal(net(x), member_output(net, assignment, x))
