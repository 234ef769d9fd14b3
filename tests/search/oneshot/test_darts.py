"""DARTS first and second order, and the one-shot runner: studies, checkpoints, resume, the command line."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import nasforge
from nasforge.cli import main
from nasforge.errors import SpecError
from nasforge.search.oneshot.checkpoint import CHECKPOINT, LOG
from nasforge.search.oneshot.darts import DartsSecondOrder
from nasforge.search.oneshot.method import HParams
from nasforge.search.oneshot.runner import run_oneshot
from nasforge.search.oneshot.supernet import build_supernet

from .conftest import DARTS, DARTS_TINY, FAST, NB201, NB201_TINY


def settings(flags: dict) -> list[str]:
    return [arg for name, value in flags.items() for arg in ("--set", f"{name}={value}")]


def test_second_order_gradient_matches_the_exact_unrolled_gradient(nb201):
    """The finite-difference Hessian-vector product against double backpropagation through the virtual step
    w' = w - eta (momentum + grad + wd w), in float64 with a small difference step (at DARTS's 0.01 / ||v||
    the ReLUs' kinks make the central difference itself inexact: the approximation is the paper's)."""
    torch.manual_seed(0)
    net = build_supernet(nb201).double()
    net.train()
    hp = HParams.make({}, {"momentum": 0.9, "weight_decay": 3e-4, "unrolled_r": 1e-6})
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.05, momentum=hp.momentum, weight_decay=hp.weight_decay)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=0.0)  # keeps alpha where it is: only its gradient counts
    batches = [(torch.randn(8, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (8,))) for _ in range(3)]
    F.cross_entropy(net(batches[0][0]), batches[0][1]).backward()
    w_opt.step()  # momentum buffers now exist and enter the virtual step
    train, val = batches[1], batches[2]
    names = [n for n, _ in net.named_parameters() if not n.startswith(("alphas.", "betas."))]
    weights = net.weight_parameters()
    grads = torch.autograd.grad(F.cross_entropy(net(train[0]), train[1]), weights, create_graph=True, allow_unused=True)
    ahead = {n: w - 0.05 * (g + hp.weight_decay * w + hp.momentum * w_opt.state[w]["momentum_buffer"])
             for n, w, g in zip(names, weights, grads) if g is not None}
    exact = torch.autograd.grad(F.cross_entropy(functional_call(net, ahead, (val[0],)), val[1]),
                                list(net.alphas.values()))
    DartsSecondOrder(net, hp).arch_step(train, val, w_opt, a_opt)
    for alpha, expected in zip(net.alphas.values(), exact):
        torch.testing.assert_close(alpha.grad, expected, rtol=1e-4, atol=1e-8)
    first_order = torch.autograd.grad(F.cross_entropy(net(val[0]), val[1]), list(net.alphas.values()))
    assert any((a.grad - f).abs().max() > 1e-6 for a, f in zip(net.alphas.values(), first_order))


def test_hyperparameters_are_checked():
    assert HParams.make({}, {}).lr == 0.025 and HParams.make({"epochs": 250}, {"epochs": 3}).epochs == 3
    with pytest.raises(SpecError, match="unknown hyperparameter 'arch_l'") as err:
        HParams.make({}, {"arch_l": 1e-3})
    assert "'arch_lr'" in (err.value.hint or "")
    with pytest.raises(SpecError, match="takes a number"):
        HParams.make({}, {"epochs": 1.5})
    with pytest.raises(SpecError, match="out of range"):
        HParams.make({}, {"train_portion": 1.0})


def test_darts_on_nas_bench_201_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "best.yaml"
    code = main(["search", str(NB201), *settings(NB201_TINY), "--strategy", "darts", "--dataset", "synthetic:200",
                 "--epochs", "1", "--batch-size", "16", "--hparam", "max_steps=2", "--storage", ":memory:",
                 "--run-dir", str(tmp_path / "run"), "--json", "-o", str(out)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["strategy"] == "darts" and result["epochs"] == 1 and set(result["choices"]) == {
        f"params.edge_{e}" for e in ("1_0", "2_0", "2_1", "3_0", "3_1", "3_2")}
    assert main(["check", str(out)]) == 0
    member = nasforge.load(out)
    assert not member.choices and member.check().totals.params == result["params"]
    member.build()(torch.randn(2, 3, 8, 8))
    assert {p.name for p in (tmp_path / "run").iterdir()} == {CHECKPOINT, LOG, "alphas.png"}


def test_darts2_on_nas_bench_201_records_an_epoch_per_trial(nb201, digits_nb201, tmp_path):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    result = run_oneshot(nb201, "darts2", digits_nb201, hparams={**FAST, "epochs": 2}, storage=storage,
                         study_name="nb-darts2", run_dir=tmp_path / "run")
    study = optuna.load_study(study_name="nb-darts2", storage=storage)
    trials = study.get_trials()
    assert [t.user_attrs["epoch"] for t in trials] == [0, 1]
    assert study.user_attrs["final_trial"] == trials[1].number and study.user_attrs["strategy"] == "darts2"
    last = trials[1]
    assert json.loads(last.user_attrs["assignment"]) == result.assignment
    assert last.value == result.records[-1]["val_accuracy"] and last.params == result.assignment
    assert nasforge.loads(last.user_attrs["spec"]).check().totals.params == last.user_attrs["metrics"]["params"]
    assert main(["study", "export", "nb-darts2", "--storage", storage, "--top", "1", "-o", str(tmp_path / "top")]) == 0


def test_a_killed_search_resumes_from_its_last_epoch_and_ends_as_an_uninterrupted_one(nb201, digits_nb201, tmp_path):
    hparams = {**FAST, "epochs": 2}
    whole = run_oneshot(nb201, "darts", digits_nb201, hparams=hparams, storage=":memory:", run_dir=tmp_path / "a")

    def die_after_one(record: dict) -> None:
        raise KeyboardInterrupt  # the process is killed once the first epoch's checkpoint is on disk

    storage = f"sqlite:///{tmp_path / 'b.db'}"
    with pytest.raises(KeyboardInterrupt):
        run_oneshot(nb201, "darts", digits_nb201, hparams=hparams, storage=storage, study_name="b",
                    run_dir=tmp_path / "b", on_epoch=die_after_one)
    state = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    assert state["epochs_done"] == 1 and set(state) >= {"supernet", "w_opt", "a_opt", "schedule", "rng", "data_rng"}
    resumed = run_oneshot(nb201, "darts", digits_nb201, hparams=hparams, storage=storage, study_name="b",
                          run_dir=tmp_path / "b")
    assert resumed.resumed_epochs == 1 and len(resumed.records) == 2
    strip = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in resumed.records] == [
        {k: v for k, v in r.items() if k not in strip} for r in whole.records]
    trials = optuna.load_study(study_name="b", storage=storage).get_trials()
    assert [t.user_attrs["epoch"] for t in trials] == [0, 1]
    with pytest.raises(SpecError, match="another search's checkpoint"):
        run_oneshot(nb201, "darts", digits_nb201, hparams={**hparams, "lr": 0.1}, storage=":memory:",
                    run_dir=tmp_path / "b")


def test_command_line_mistakes_are_spec_errors(tmp_path, capsys):
    base = ["search", str(NB201), *settings(NB201_TINY), "--storage", ":memory:", "--run-dir", str(tmp_path)]
    assert main([*base, "--strategy", "darts"]) == 1
    assert "needs data" in capsys.readouterr().err
    assert main([*base, "--strategy", "gdas", "--dataset", "digits", "--constraint", "params<=1e5"]) == 1
    assert "take no constraints" in capsys.readouterr().err
    assert main([*base, "--strategy", "pcdarts", "--dataset", "digits", "--optimizer", "adam"]) == 1
    assert "paper's optimizer" in capsys.readouterr().err
    assert main([*base, "--strategy", "darts", "--dataset", "digits", "--hparam", "tau=1"]) == 1
    assert "did you mean 'tau_min' or 'tau_max'" in capsys.readouterr().err
    assert main([*base, "--strategy", "darts", "--dataset", "digits", "--objective", "params:min"]) == 1
    assert "maximizes the supernet's accuracy" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["darts", "darts2"])
def test_darts_on_the_darts_space_writes_the_evaluation_network(strategy, tmp_path, capsys):
    out = tmp_path / "cell.yaml"
    code = main(["search", str(DARTS), *settings(DARTS_TINY), "--strategy", strategy, "--dataset", "synthetic:100",
                 "--epochs", "1", "--batch-size", "8", "--hparam", "max_steps=1", "--storage", ":memory:",
                 "--run-dir", str(tmp_path / "run"), "--eval-set", "C=8", "--eval-set", "layers=5", "--json",
                 "-o", str(out)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["choices"]) == 22
    member = nasforge.load(out)
    assert main(["check", str(out)]) == 0
    space_member = nasforge.load(DARTS, C=8, layers=5).with_choices(result["choices"])
    assert member.check().totals.params == space_member.check().totals.params == result["params"]
    assert len([n for n in member.graph.nodes if n.endswith(".concat")]) == 5  # the evaluation network's 5 cells
    member.build()(torch.randn(2, 3, 32, 32))
