"""Short training runs: learning on digits, reproducibility, the classifier check, options."""

from __future__ import annotations

import math

import pytest
import torch

import nasforge
from nasforge.errors import SpecError
from nasforge.search.data import Dataset, load_dataset
from nasforge.search.objectives import Evaluator
from nasforge.search.training import Trainer, check_classifier

SMALL_CNN = """
name: small_cnn
params: {width: 8, num_classes: 10}
inputs: {image: [B, 1, 8, 8]}
graph:
  - {id: conv1, op: conv2d, out: $width, kernel: 3, padding: 1}
  - {id: bn1, op: batch_norm2d}
  - {id: act1, op: relu}
  - {id: conv2, op: conv2d, out: ${2 * width}, kernel: 3, padding: 1, stride: 2}
  - {id: bn2, op: batch_norm2d}
  - {id: act2, op: relu}
  - {id: flat, op: flatten}
  - {id: head, op: linear, out: $num_classes}
"""
MLP = """
name: mlp
inputs: {image: [B, 1, 8, 8]}
graph:
  - {id: flat, op: flatten}
  - {id: fc, op: linear, out: 32}
  - {id: head, op: linear, out: 10}
"""


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits", nasforge.loads(SMALL_CNN).graph.inputs["image"])


def test_small_cnn_learns_digits(digits: Dataset) -> None:
    result = Trainer(digits)(nasforge.loads(SMALL_CNN))
    assert set(result) == {"accuracy", "train_loss"}
    assert result["accuracy"] > 0.8 and 0 <= result["train_loss"] < 1


def test_same_seed_same_result_and_global_rng_untouched(digits: Dataset) -> None:
    spec = nasforge.loads(SMALL_CNN)
    trainer = Trainer(digits, epochs=1, seed=3)
    state = torch.get_rng_state()
    first = trainer(spec)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)  # the caller's RNG does not leak into the run
    assert trainer(spec) == first
    assert Trainer(digits, epochs=1, seed=4)(spec) != first


def test_wrong_class_count_names_the_parameter(digits: Dataset) -> None:
    with pytest.raises(SpecError, match="not class logits") as err:
        Trainer(digits)(nasforge.loads(SMALL_CNN, num_classes=7))
    assert err.value.expected == "one floating output [B, 10]"
    assert "num_classes parameter is 7" in (err.value.found or "") and "num_classes=10" in (err.value.hint or "")
    assert err.value.location.line is not None  # points at the spec's outputs
    no_param = MLP.replace("out: 10", "out: 3")
    with pytest.raises(SpecError, match="not class logits") as err:
        Trainer(digits)(nasforge.loads(no_param))
    assert err.value.hint is None and err.value.found == "[B, 3]"


def test_input_must_take_the_samples(digits: Dataset) -> None:
    with pytest.raises(SpecError, match="does not take the dataset's samples") as err:
        Trainer(digits)(nasforge.loads(SMALL_CNN.replace("[B, 1, 8, 8]", "[B, 3, 8, 8]")))
    assert err.value.expected == "one input [B, 1, 8, 8]" and err.value.found == "image: [B, 3, 8, 8]"
    assert check_classifier(nasforge.loads(MLP), (1, 8, 8), None) == 10


@pytest.mark.parametrize("options", [{"optimizer": "adam", "schedule": "constant"},
                                     {"optimizer": "adamw", "label_smoothing": 0.1, "lr": 3e-3},
                                     {"momentum": 0.0, "weight_decay": 0.0}])
def test_options_train(digits: Dataset, options: dict) -> None:
    result = Trainer(digits, epochs=1, max_batches_per_epoch=5, **options)(nasforge.loads(MLP))
    assert 0 <= result["accuracy"] <= 1 and math.isfinite(result["train_loss"])


def test_steps_per_epoch(digits: Dataset) -> None:
    assert Trainer(digits).steps_per_epoch == 1438 // 64
    assert Trainer(digits, max_batches_per_epoch=3).steps_per_epoch == 3
    assert Trainer(digits, batch_size=5000).steps_per_epoch == 1  # one batch of everything


@pytest.mark.parametrize("options, message", [({"optimizer": "adamm"}, "unknown optimizer"),
                                              ({"schedule": "step"}, "unknown schedule"),
                                              ({"epochs": 0}, "epochs must be positive"),
                                              ({"max_batches_per_epoch": 0}, "must be positive"),
                                              ({"label_smoothing": 1.0}, "probability")])
def test_bad_options(digits: Dataset, options: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message) as err:
        Trainer(digits, **options)
    if "optimizer" in options:
        assert "'adam'" in (err.value.hint or "")


def test_divergence_reports_infinite_loss(digits: Dataset) -> None:
    result = Trainer(digits, lr=1e20, epochs=2, max_batches_per_epoch=3)(nasforge.loads(MLP))
    assert result["train_loss"] == math.inf and 0 <= result["accuracy"] <= 1


def test_progress_bar(digits: Dataset) -> None:
    result = Trainer(digits, epochs=1, max_batches_per_epoch=2, progress=True)(nasforge.loads(MLP))
    assert 0 <= result["accuracy"] <= 1


def test_nas_bench_201_member_trains_through_the_evaluator() -> None:
    """The README's space: digits resized to its 3x32x32 input, a sampled cell, one short epoch."""
    space = nasforge.load("specs/spaces/nas_bench_201.yaml", C=4, N=1)
    spec = space.with_choices({"params.edge_1_0": "nor_conv_1x1", "params.edge_3_2": "avg_pool_3x3"})
    data = load_dataset("digits", spec.graph.inputs["image"], limit=160)
    evaluator = Evaluator(trainer=Trainer(data, epochs=1, max_batches_per_epoch=2))
    out = evaluator.evaluate(spec, ["accuracy", "train_loss", "params"], key="nb201")
    assert 0 <= out["accuracy"] <= 1 and math.isfinite(out["train_loss"]) and out["params"] > 0
