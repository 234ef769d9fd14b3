"""PC-DARTS: elastic (sliced) candidates, partial channels with shuffle, edge normalization, warm-up."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nasforge
from nasforge.search.oneshot.method import HParams
from nasforge.search.oneshot.mixed import ElasticBatchNorm2d, ElasticConv2d, make_elastic
from nasforge.search.oneshot.pcdarts import PcDarts
from nasforge.search.oneshot.runner import run_oneshot

from .conftest import FAST


def test_elastic_convs_and_norms_run_narrower_on_their_first_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.Conv2d(8, 16, 1),
                          nn.BatchNorm2d(16))
    make_elastic(model)
    assert [type(m) for m in model] == [ElasticConv2d, ElasticConv2d, ElasticBatchNorm2d]
    x = torch.randn(2, 2, 5, 5)
    model.train()
    y = model(x)
    dw, pw, bn = model
    expected = F.conv2d(F.conv2d(x, dw.weight[:2], None, 1, 1, 1, 2), pw.weight[:4, :2], pw.bias[:4])
    expected = F.batch_norm(expected, None, None, bn.weight[:4], bn.bias[:4], True)
    torch.testing.assert_close(y, expected)
    assert bn.running_mean[4:].abs().sum() == 0 and bn.running_mean[:4].abs().sum() > 0  # only those channels
    full = torch.randn(2, 8, 5, 5)
    model.eval()
    with torch.no_grad():
        make_reference = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.Conv2d(8, 16, 1),
                                       nn.BatchNorm2d(16))
        make_reference.load_state_dict(model.state_dict())
        torch.testing.assert_close(model(full), make_reference.eval()(full))  # full width: the plain modules


def test_a_partial_mixed_op_mixes_a_quarter_and_shuffles(nb201_net):
    net = nb201_net
    net.set_mode("partial", k=4)
    net.eval()
    op = net.body.get_submodule("stage3.0.e1_0")  # 16 channels at this stage
    x = torch.randn(2, 16, 2, 2)
    with torch.no_grad():
        net.control.weights = net.current_weights()
        w = torch.softmax(net.alpha("params.edge_1_0"), 0)
        mixed = sum(w[k] * op.candidates[name](x[:, :4]) for k, name in enumerate(op.names))
        expected = F.channel_shuffle(torch.cat([mixed, x[:, 4:]], 1), 4)
        torch.testing.assert_close(op(x), expected)


def test_edge_weights_scale_the_edges_of_a_node_in_partial_mode_only(nb201_net):
    net = nb201_net
    node = net.body.get_submodule("stage1.0.n2")
    x = torch.randn(2, 4, 8, 8)
    net.eval()
    with torch.no_grad():
        net.beta(node.beta_key).copy_(torch.tensor([3.0, -3.0]))
        outputs = {}
        for mode in ("mixed", "partial"):
            net.set_mode(mode, k=1)  # k = 1: every channel goes through the ops, so only beta differs
            net.control.weights = net.current_weights()
            edges = [edge(x) for edge in node.edges]
            outputs[mode] = (node(x, x), edges)
    mixed_out, edges = outputs["mixed"]
    torch.testing.assert_close(mixed_out, edges[0] + edges[1])
    beta = torch.softmax(torch.tensor([3.0, -3.0]), 0)
    torch.testing.assert_close(outputs["partial"][0], beta[0] * edges[0] + beta[1] * edges[1])


def test_derive_weighs_edges_by_their_node_weights(darts_net_shared):
    net = darts_net_shared
    saved = {k: v.clone() for k, v in [*net.alphas.items(), *net.betas.items()]}
    try:
        with torch.no_grad():
            for v in [*net.alphas.values(), *net.betas.values()]:
                v.zero_()
            for j, strength in enumerate((1.0, 2.0, 3.0)):  # ops prefer edges 2 > 1 > 0 ...
                net.alpha(f"params.normal_in_3@{j}")[3] = strength
            net.beta("params.normal_in_3").copy_(torch.tensor([4.0, 4.0, -4.0]))  # ... the node prefers 0 and 1
        assert net.derive()["params.normal_in_3"] == [0, 1]
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                (net.alphas[k] if k in net.alphas else net.betas[k]).copy_(v)


def test_the_architecture_waits_for_the_warm_up(nb201, digits_nb201, tmp_path):
    hp = HParams.make(PcDarts.defaults, {})
    assert (hp.batch_size, hp.lr, hp.lr_min, hp.arch_lr, hp.partial_k) == (256, 0.1, 0.0, 6e-4, 4)
    assert PcDarts(None, hp).arch_moves(14) is False and PcDarts(None, hp).arch_moves(15) is True  # 15 of 50
    result = run_oneshot(nb201, "pcdarts", digits_nb201, hparams={**FAST, "epochs": 2, "warmup": 0.5,
                                                                  "partial_k": 2},
                         storage=":memory:", run_dir=tmp_path)
    first, second = result.records
    assert not first["arch_moves"] and first["arch_loss"] is None and second["arch_moves"]
    assert second["betas"] != first["betas"]
    result.member.build()(torch.randn(2, 3, 8, 8))


@pytest.mark.slow
def test_pcdarts_on_the_darts_space(darts, digits_darts, tmp_path):
    result = run_oneshot(darts, "pcdarts", digits_darts, hparams={**FAST, "batch_size": 8, "warmup": 0.0},
                         storage=":memory:", run_dir=tmp_path)
    assert set(result.records[0]["betas"]) == {"params.normal_in_3", "params.normal_in_4", "params.normal_in_5",
                                              "params.reduce_in_3", "params.reduce_in_4", "params.reduce_in_5",
                                              "params.normal_op_2a+params.normal_op_2b",
                                              "params.reduce_op_2a+params.reduce_op_2b"}
    member = nasforge.loads(result.member.to_yaml())
    member.build()(torch.randn(2, 3, 32, 32))
