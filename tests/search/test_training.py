"""Short training runs: learning on digits, reproducibility, the classifier check, options, schedules and
the spec's ``training:`` section under the command line's options."""

from __future__ import annotations

import math

import pytest
import torch

import nasforge
from nasforge.dsl import training_section
from nasforge.errors import SpecError
from nasforge.search.data import Dataset, load_dataset
from nasforge.search.objectives import Evaluator
from nasforge.search.training import OPTIMIZERS, Trainer, check_classifier, lr_factor

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
                                     {"momentum": 0.0, "weight_decay": 0.0},
                                     {"schedule": "step", "warmup_epochs": 0.5},
                                     {"optimizer": "adamw", "schedule": "onecycle"}])
def test_options_train(digits: Dataset, options: dict) -> None:
    result = Trainer(digits, epochs=1, max_batches_per_epoch=5, **options)(nasforge.loads(MLP))
    assert 0 <= result["accuracy"] <= 1 and math.isfinite(result["train_loss"])


def test_steps_per_epoch(digits: Dataset) -> None:
    assert Trainer(digits).steps_per_epoch == 1438 // 64
    assert Trainer(digits, max_batches_per_epoch=3).steps_per_epoch == 3
    assert Trainer(digits, batch_size=5000).steps_per_epoch == 1  # one batch of everything


@pytest.mark.parametrize("options, message, flag", [
    ({"optimizer": "adamm"}, "unknown optimizer 'adamm'", "--optimizer"),
    ({"schedule": "cosin"}, "unknown schedule 'cosin'", "--schedule"),
    ({"epochs": 0}, "bad epochs 0", "--epochs"),
    ({"max_batches_per_epoch": 0}, "bad max batches per epoch 0", "--max-batches-per-epoch"),
    ({"label_smoothing": 1.0}, "bad label smoothing", "--label-smoothing"),
    ({"lr": 0.0}, "bad lr", "--lr"),
    ({"epochs": 2, "warmup_epochs": 2}, "the warmup takes the whole run", "--warmup-epochs")])
def test_bad_options(digits: Dataset, options: dict, message: str, flag: str) -> None:
    with pytest.raises(SpecError, match=message) as err:
        Trainer(digits, **options)
    assert err.value.location.file == flag  # the command-line option to fix
    if "optimizer" in options:
        assert "'adam'" in (err.value.hint or "")


def test_every_option_is_a_trainer_field_and_every_optimizer_a_torch_class() -> None:
    assert set(training_section.OPTIONS) <= set(Trainer.__dataclass_fields__)
    assert set(OPTIMIZERS) == set(training_section.OPTIMIZERS)


def test_schedules_shape_the_learning_rate() -> None:
    def curve(schedule: str, warmup: int = 0) -> list[float]:
        factor = lr_factor(schedule, 20, warmup)
        return [factor(step) for step in range(20)]

    assert curve("constant") == [1.0] * 20
    assert curve("cosine")[0] == 1.0 and curve("cosine")[10] == pytest.approx(0.5) and curve("cosine")[19] < 0.01
    # tenfold drops at half and three quarters of the run
    assert curve("step") == [1.0] * 10 + [0.1] * 5 + [pytest.approx(0.01)] * 5
    # a linear warmup reaches the full rate on its last step, then the schedule runs over what is left
    assert curve("constant", 4)[:5] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert curve("step", 4)[4 + 8] == pytest.approx(0.1) and curve("step", 4)[4 + 7] == 1.0
    # one cycle: lr/25 up to lr over 30 % of the run (or the warmup), then down to lr/25e4
    onecycle = curve("onecycle")
    assert onecycle[0] == pytest.approx(1 / 25) and onecycle[6] == 1.0 and max(onecycle) == 1.0
    assert onecycle[19] < 0.02 and curve("onecycle", 10)[10] == 1.0 and curve("onecycle", 10)[9] < 1.0


SECTION = SMALL_CNN.replace("name: small_cnn", "name: small_cnn\ntraining: {optimizer: adamw, lr: 2.0e-3, "
                                                 "schedule: step, epochs: 2, warmup_epochs: 1}")


def test_the_spec_section_trains_and_the_command_line_wins(digits: Dataset) -> None:
    spec = nasforge.loads(SECTION)
    from_file = Trainer.for_spec(digits, spec)
    assert (from_file.optimizer, from_file.lr, from_file.schedule, from_file.epochs) == ("adamw", 2e-3, "step", 2)
    mixed = Trainer.for_spec(digits, spec, {"lr": 0.05, "schedule": None, "momentum": 0.5}, seed=3)
    assert (mixed.optimizer, mixed.lr, mixed.schedule, mixed.momentum, mixed.seed) == ("adamw", 0.05, "step", 0.5, 3)
    settings = Trainer.for_spec(digits, spec, {"optimizer": "sgd", "lr": None}).settings()
    assert settings["optimizer"] == "sgd" and settings["lr"] == 2e-3  # each option on its own: the file's lr
    assert Trainer(digits, optimizer="adam").settings()["lr"] == 1e-3  # the effective rate is recorded
    assert settings["dataset"] == "digits" and settings["warmup_epochs"] == 1.0
    # a combination that fails points at where each value came from
    with pytest.raises(SpecError, match="warmup takes the whole run") as err:
        Trainer.for_spec(digits, spec, {"epochs": 1})
    assert err.value.location.line == 3  # warmup_epochs, in the spec's training: section


@pytest.mark.parametrize("section, message, column", [
    ("{optimzer: adam}", "unknown training option 'optimzer'", 12),
    ("{schedule: cosin}", "unknown schedule 'cosin'", 22),
    ("{lr: 1e-3}", "bad lr '1e-3'", 16),
    ("{epochs: 2.5}", "bad epochs 2.5", 20),
    ("[adam]", "section 'training' has the wrong form", 11),
])
def test_the_section_is_checked_on_load(section: str, message: str, column: int) -> None:
    with pytest.raises(SpecError, match=message) as err:
        nasforge.loads(f"training: {section}\n" + MLP, "t.yaml")
    assert (err.value.location.file, err.value.location.line, err.value.location.column) == ("t.yaml", 1, column)
    if "optimzer" in section:
        assert "'optimizer'" in (err.value.hint or "")
    if "1e-3" in section:
        assert "1.0e-3" in (err.value.hint or "")


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


def test_search_trains_with_the_section_and_the_flags_and_records_them(tmp_path, capsys) -> None:
    """`nasforge search`: the space's training: section, the command line on top, recorded per trial and
    per study; resuming with other training options is refused (their accuracies would not compare)."""
    import optuna

    from nasforge.cli import main

    space = tmp_path / "space.yaml"
    space.write_text(SECTION.replace("out: $num_classes}", "out: $num_classes}\n  - {id: act3, op: {op_choice: "
                                                           "[identity, relu]}}"))
    storage = f"sqlite:///{tmp_path / 's.db'}"
    common = ["search", str(space), "--dataset", "synthetic:256", "--objective", "accuracy", "--strategy", "random",
              "--storage", storage, "--study", "trained"]
    assert main([*common, "--budget", "2", "--optimizer", "adam", "--warmup-epochs", "0.5", "--epochs", "1",
                 "--json"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    study = optuna.load_study(study_name="trained", storage=storage)
    training = study.user_attrs["evaluation"]["training"]
    assert (training["optimizer"], training["lr"], training["schedule"]) == ("adam", 2e-3, "step")  # flag; file; file
    assert (training["epochs"], training["warmup_epochs"]) == (1, 0.5)  # flags
    assert all(t.user_attrs["training"] == training for t in study.trials)
    assert main([*common, "--budget", "3", "--optimizer", "adam", "--warmup-epochs", "0.5", "--epochs", "1",
                 "--schedule", "onecycle"]) == 1
    err = capsys.readouterr().err
    assert "measured its trials differently" in err and "training.schedule='step'" in err
