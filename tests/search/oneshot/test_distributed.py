"""Distributed supernet training: N processes on the CPU (gloo) train as one process with the global batch.

The fast tests hold the pieces to their single-process meaning in this process (batch norm over the global
batch on a one-rank group, the shares of a batch, the launcher's environment, the command line); the slow
ones start two processes and compare their search with one process's, strategy by strategy, and resume a
two-process search from rank 0's checkpoint.
"""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import torch.distributed as dist
from torch import nn

import nasforge
from nasforge.cli import main
from nasforge.errors import SpecError
from nasforge.search.data import load_dataset
from nasforge.search.oneshot.checkpoint import CHECKPOINT, LOG
from nasforge.search.oneshot.distributed import SOLO, GlobalBatchNorm, Group, spawn
from nasforge.search.oneshot.mixed import ElasticBatchNorm2d
from nasforge.search.oneshot.runner import OneShotResult, run_oneshot

from .conftest import NB201, NB201_TINY

SPOS_TINY = {"epochs": 1, "batch_size": 16, "lr": 0.05, "max_steps": 3, "population": 4, "generations": 2,
             "parents": 2, "mutations": 1, "crossovers": 1, "calibration_batches": 2, "calibration_batch_size": 16}
GRADIENT_TINY = {"epochs": 1, "batch_size": 16, "max_steps": 3}
"""Global batches of 16: 8 examples per process with two."""


@pytest.fixture()
def one_rank(tmp_path: Path):
    """A real gloo group of one process (this one), for the collectives' single-rank meaning."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


# -- the pieces, in this process ----------------------------------------------------------------------------

@pytest.mark.parametrize("make, shape", [
    (lambda: nn.BatchNorm2d(6), (5, 6, 3, 4)),
    (lambda: nn.BatchNorm2d(6, momentum=None), (5, 6, 3, 4)),  # the cumulative average SPOS recalibrates with
    (lambda: nn.BatchNorm1d(6, affine=False), (7, 6)),
    (lambda: ElasticBatchNorm2d(8), (5, 2, 3, 3)),  # PC-DARTS's norm on its first 2 channels
])
def test_global_batch_norm_on_one_rank_is_batch_norm(one_rank, make, shape):
    generator = torch.Generator().manual_seed(0)
    plain = make().train()
    if plain.affine:
        with torch.no_grad():
            plain.weight.uniform_(0.5, 1.5, generator=generator)
            plain.bias.uniform_(-0.5, 0.5, generator=generator)
    synced = copy.deepcopy(plain)
    x = (torch.randn(shape, generator=generator) * 3 + 1).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    grad = torch.randn(shape, generator=generator)
    for _ in range(2):  # twice: the running statistics' update (cumulative and exponential) as well
        plain(x).backward(grad)
        with GlobalBatchNorm():
            synced(x2).backward(grad)
    torch.testing.assert_close(synced(x2), plain(x))
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-5)
    for name, buffer in plain.named_buffers():
        torch.testing.assert_close(dict(synced.named_buffers())[name], buffer, msg=name)
    for name, param in plain.named_parameters():
        torch.testing.assert_close(dict(synced.named_parameters())[name].grad, param.grad, rtol=1e-4, atol=1e-5)
    plain.eval()
    synced.eval()
    with GlobalBatchNorm():  # evaluation uses the running statistics: nothing to share
        torch.testing.assert_close(synced(x2), plain(x))


def test_each_rank_takes_a_consecutive_share_of_every_batch():
    items = torch.arange(10)
    shares = [Group(rank, 3).part(items) for rank in range(3)]
    assert torch.equal(torch.cat(shares), items) and [len(s) for s in shares] == [3, 3, 4]
    assert torch.equal(Group(1, 2).part(items), items[5:]) and torch.equal(SOLO.part(items), items)
    images, labels = torch.randn(10, 3), torch.arange(10) * 2
    x, y = Group(1, 2).batch((images, labels), torch.tensor([9, 0, 4, 7]))
    assert torch.equal(x, images[[4, 7]]) and torch.equal(y, labels[[4, 7]])


def test_the_global_batch_must_split_evenly(nb201, digits_nb201):
    with pytest.raises(SpecError, match="does not split evenly") as err:
        run_oneshot(nb201, "darts", digits_nb201, hparams={**GRADIENT_TINY, "batch_size": 16}, storage=":memory:",
                    group=Group(0, 3))
    assert err.value.expected == "a multiple of --nproc 3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_under_a_launcher_the_search_joins_its_group(tmp_path, capsys, monkeypatch):
    """What torchrun sets up: RANK, WORLD_SIZE and a rendezvous address (here a group of one)."""
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    base = ["search", str(NB201), *(a for k, v in NB201_TINY.items() for a in ("--set", f"{k}={v}")),
            "--strategy", "darts", "--dataset", "synthetic:64", "--epochs", "1", "--batch-size", "16",
            "--hparam", "max_steps=1", "--storage", ":memory:", "--run-dir", str(tmp_path / "run"), "--json"]
    assert main(base) == 0
    assert json.loads(capsys.readouterr().out)["processes"] == 1 and not dist.is_initialized()
    assert main([*base, "--nproc", "2"]) == 1
    assert "--nproc disagrees with the launcher" in capsys.readouterr().err


def test_command_line_mistakes(tmp_path, capsys):
    base = ["search", str(NB201), "--storage", ":memory:", "--run-dir", str(tmp_path), "--dataset", "digits"]
    with pytest.raises(SystemExit) as stop:
        main([*base, "--strategy", "darts", "--nproc", "0"])
    assert stop.value.code == 2
    assert main([*base, "--strategy", "evolution", "--nproc", "2"]) == 1
    assert "--nproc trains one supernet" in capsys.readouterr().err
    assert main([*base, "--strategy", "darts", "--workers", "2"]) == 1
    assert "--nproc N trains it in N processes" in capsys.readouterr().err


# -- two processes ----------------------------------------------------------------------------------------

class Killed(Exception):
    """Stands for the processes dying after a checkpoint."""


def die(record: dict) -> None:
    raise Killed


def search(group: Group, strategy: str, hparams: dict, run_dir: Path, storage: str = ":memory:",
           kill: bool = False) -> OneShotResult:
    """One process's part of a search of the tiny NAS-Bench-201 space on 240 digits (module level: the
    spawned processes import it by name)."""
    torch.set_num_threads(1)
    spec = nasforge.load(NB201, **NB201_TINY)
    data = load_dataset("digits", spec.graph.inputs["image"], limit=240)
    return run_oneshot(spec, strategy, data, hparams=hparams, storage=storage, run_dir=run_dir, group=group,
                       on_epoch=die if kill else None)


def saved(run_dir: Path) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Rank 0's files: the checkpoint's supernet state and the log's records."""
    state = torch.load(run_dir / CHECKPOINT, weights_only=True)["supernet"]
    return state, json.loads((run_dir / LOG).read_text())["records"]


def assert_same_search(one: Path, two: Path) -> None:
    """Same genotypes and supernet within float tolerance (sums over the global batch in another order)."""
    state_one, records_one = saved(one)
    state_two, records_two = saved(two)
    assert state_one.keys() == state_two.keys()
    for name, value in state_one.items():
        torch.testing.assert_close(state_two[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert len(records_one) == len(records_two)
    for a, b in zip(records_one, records_two):
        assert b.get("assignment") == a.get("assignment")
        for key in ("train_loss", "train_accuracy", "arch_loss", "val_accuracy"):
            assert b.get(key) == pytest.approx(a.get(key), abs=1e-5), key


STRATEGIES = ("darts", "darts2", "gdas", "pcdarts", "spos")


def hparams_of(strategy: str) -> dict:
    return SPOS_TINY if strategy == "spos" else GRADIENT_TINY


def every_strategy(group: Group, folder: Path) -> None:
    """One process's part of the two-process session: the collectives, then a search by every strategy
    (one start of two interpreters for all: starting them is the slow part)."""
    check_collectives(group)
    for strategy in STRATEGIES:
        search(group, strategy, hparams_of(strategy), folder / strategy)


def check_collectives(group: Group) -> None:
    """Gradients averaged (missing ones as zeros), rank 0 decides, shares of an evaluation add up, and a
    difference between the ranks' supernets is caught."""
    like = [torch.zeros(2), torch.zeros(3), torch.zeros(1, dtype=torch.float64)]
    mine = [torch.full((2,), 1.0 + group.rank), torch.ones(3) if group.rank else None, None]
    averaged = group.average(mine, like)
    assert torch.equal(averaged[0], torch.full((2,), 1.5)) and torch.equal(averaged[1], torch.full((3,), 0.5))
    assert averaged[2] is None
    assert group.decide(lambda: group.rank == 0) is True
    assert group.sum([1.0, group.rank]) == [2.0, 1.0]
    model = nn.Linear(1, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model.bias.zero_()
    data = torch.utils.data.TensorDataset(torch.tensor([[1.0], [-1.0], [2.0]]), torch.tensor([0, 1, 1]))
    assert group.accuracy(model, data) == pytest.approx(2 / 3)
    group.check_identical({"weights": [model.weight]})
    with torch.no_grad():
        model.bias[0] += group.rank
    with pytest.raises(RuntimeError, match=f"the buffers of rank {1 - group.rank} differ from rank {group.rank}'s"):
        group.check_identical({"weights": [model.weight], "buffers": [model.bias]})


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("two")
    spawn(2, every_strategy, (folder,))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_processes_search_as_one_with_the_same_global_batch(strategy, two_processes, tmp_path):
    alone = search(SOLO, strategy, hparams_of(strategy), tmp_path / "one")
    assert_same_search(tmp_path / "one", two_processes / strategy)
    log = json.loads((two_processes / strategy / LOG).read_text())
    assert log["processes"] == 2 and log["records"][-1]["assignment"] == alone.assignment


@pytest.mark.slow
def test_a_two_process_search_resumes_from_rank_0s_checkpoint(tmp_path):
    hparams = {**GRADIENT_TINY, "epochs": 2}
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    search(SOLO, "gdas", hparams, tmp_path / "one")
    with pytest.raises(RuntimeError, match="Killed"):
        spawn(2, search, ("gdas", hparams, tmp_path / "two", storage, True))
    assert torch.load(tmp_path / "two" / CHECKPOINT, weights_only=True)["epochs_done"] == 1
    spawn(2, search, ("gdas", hparams, tmp_path / "two", storage))
    assert_same_search(tmp_path / "one", tmp_path / "two")
    (name,) = optuna.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    assert [t.user_attrs["epoch"] for t in trials] == [0, 1]  # rank 0 alone recorded, each epoch once


@pytest.mark.slow
def test_nproc_on_the_command_line(tmp_path, capfd):
    """Rank 0 prints the result (to the terminal the processes share); a user's mistake made in the
    processes is reported once, by the command, and no traceback."""
    base = ["search", str(NB201), *(a for k, v in NB201_TINY.items() for a in ("--set", f"{k}={v}")),
            "--strategy", "darts", "--dataset", "synthetic:64", "--epochs", "1", "--hparam", "max_steps=1",
            "--storage", ":memory:", "--run-dir", str(tmp_path / "run"), "--json", "--nproc", "2"]
    assert main([*base, "--batch-size", "16"]) == 0
    assert json.loads(capfd.readouterr().out)["processes"] == 2
    assert main([*base, "--batch-size", "15"]) == 1
    err = capfd.readouterr().err
    assert err.count("the global batch does not split evenly") == 1 and "Traceback" not in err
