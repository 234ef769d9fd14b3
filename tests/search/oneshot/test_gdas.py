"""GDAS: the hard Gumbel-softmax sample, the temperature schedule, argmax evaluation, end-to-end searches."""

from __future__ import annotations

import pytest
import torch

import nasforge
from nasforge.search.oneshot.gdas import Gdas
from nasforge.search.oneshot.method import HParams
from nasforge.search.oneshot.runner import run_oneshot
from nasforge.search.oneshot.supernet import gumbel_hard

from .conftest import FAST
from .test_supernet import member_output


def test_the_sample_is_one_hot_with_the_soft_samples_gradient():
    alpha = torch.tensor([0.5, -1.0, 2.0, 0.0], requires_grad=True)
    torch.manual_seed(3)
    hard = gumbel_hard(alpha, tau=0.7)
    assert sorted(hard.tolist()) == [0.0, 0.0, 0.0, 1.0]
    torch.manual_seed(3)  # the same noise, without the straight-through trick
    gumbels = -torch.empty_like(alpha).exponential_().log()
    soft = torch.softmax((torch.log_softmax(alpha, 0) + gumbels) / 0.7, 0)
    assert int(soft.argmax()) == int(hard.argmax())
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0])
    (grad_hard,) = torch.autograd.grad((hard * upstream).sum(), alpha)
    (grad_soft,) = torch.autograd.grad((soft * upstream).sum(), alpha)
    torch.testing.assert_close(grad_hard, grad_soft)


def test_samples_follow_the_softmax_of_alpha():
    torch.manual_seed(0)
    alpha = torch.log(torch.tensor([0.1, 0.2, 0.7]))
    counts = torch.stack([gumbel_hard(alpha, tau=1.0) for _ in range(4000)]).sum(0) / 4000
    torch.testing.assert_close(counts, torch.tensor([0.1, 0.2, 0.7]), atol=0.03, rtol=0)


def test_tau_falls_linearly_from_10_to_0_1(nb201_net):
    gdas = Gdas(nb201_net, HParams.make(Gdas.defaults, {}))
    assert gdas.hp.epochs == 250  # the paper's search
    assert [round(gdas.tau(e), 4) for e in (0, 249)] == [10.0, 0.1]
    assert gdas.tau(125) == pytest.approx(10 - 9.9 * 125 / 249)
    assert gdas.start_epoch(0) == {"tau": 10.0} and nb201_net.control.mode == "gumbel" and nb201_net.tau == 10.0


def test_evaluation_takes_the_argmax_path(nb201_net):
    net = nb201_net
    net.set_mode("gumbel", tau=0.5)
    net.eval()
    x = torch.randn(2, 3, 8, 8)
    derived = net.derive()
    expected = member_output(net, derived, x)
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected)


def test_gdas_on_nas_bench_201_updates_weights_before_the_architecture(nb201, digits_nb201, tmp_path):
    result = run_oneshot(nb201, "gdas", digits_nb201, hparams={**FAST, "epochs": 2}, storage=":memory:",
                         run_dir=tmp_path)
    assert [r["tau"] for r in result.records] == [10.0, 0.1]
    assert all(r["arch_moves"] and r["arch_loss"] is not None for r in result.records)
    assert result.records[0]["alphas"] != result.records[1]["alphas"]
    result.member.build()(torch.randn(2, 3, 8, 8))


@pytest.mark.slow
def test_gdas_on_the_darts_space(darts, digits_darts, tmp_path):
    result = run_oneshot(darts, "gdas", digits_darts, hparams={**FAST, "batch_size": 8}, storage=":memory:",
                         run_dir=tmp_path)
    member = nasforge.loads(result.member.to_yaml())
    assert not member.choices and member.check().totals.params > 0
    member.build()(torch.randn(2, 3, 32, 32))
