"""The ``training:`` section of a spec: how a search trains the candidates of this space.

A space's author knows how its networks should be trained (a ViT space wants AdamW with warmup, a
NAS-Bench-201 cell SGD with a cosine schedule), so a spec may say so once::

    training: {optimizer: adamw, lr: 1.0e-3, weight_decay: 0.05, schedule: cosine, warmup_epochs: 1}

``nasforge search`` trains with these settings; its command-line options (``--optimizer``, ``--lr``...)
win over them. The section is checked when the spec loads, so a typo fails ``nasforge check`` with the
key's file position, not minutes later in a search. This module is torch-free (the spec language loads
without torch); :class:`nasforge.search.training.Trainer` applies the options and checks them again with
the same table, whatever their source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from nasforge.dsl.yaml_loader import LocDict, kind_of
from nasforge.errors import Location, SpecError, did_you_mean

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "constant", "onecycle")


@dataclass(frozen=True)
class Option:
    """One training option: its value type, the range it must lie in, and how an error says so."""

    kind: type
    expected: str
    valid: Callable[[Any], bool]
    choices: tuple[str, ...] = ()


def _positive(v: Any) -> bool:
    return v >= 1


OPTIONS: dict[str, Option] = {
    "epochs": Option(int, "an integer >= 1", _positive),
    "batch_size": Option(int, "an integer >= 1", _positive),
    "max_batches_per_epoch": Option(int, "an integer >= 1", _positive),
    "optimizer": Option(str, " or ".join(OPTIMIZERS), OPTIMIZERS.__contains__, OPTIMIZERS),
    "lr": Option(float, "a number > 0", lambda v: v > 0),
    "momentum": Option(float, "0 <= value < 1", lambda v: 0 <= v < 1),
    "weight_decay": Option(float, "a number >= 0", lambda v: v >= 0),
    "schedule": Option(str, " or ".join(SCHEDULES), SCHEDULES.__contains__, SCHEDULES),
    "warmup_epochs": Option(float, "a number >= 0 (may be fractional)", lambda v: v >= 0),
    "label_smoothing": Option(float, "a probability, 0 <= value < 1", lambda v: 0 <= v < 1),
}
"""Every option the section and the trainer take. ``lr`` has no fixed default (it depends on the
optimizer); ``max_batches_per_epoch`` caps an epoch on a large dataset."""


def check_option(name: str, value: Any, where: Location) -> Any:
    """``value`` for option ``name`` if it has the right type and range (ints are taken for floats);
    a located SpecError otherwise."""
    if name not in OPTIONS:
        raise SpecError(f"unknown training option {name!r}", location=where, expected="one of " + ", ".join(OPTIONS),
                        found=repr(name), hint=did_you_mean(name, list(OPTIONS)))
    option = OPTIONS[name]
    numeric = option.kind in (int, float)
    right_type = (isinstance(value, option.kind) or (option.kind is float and isinstance(value, int))) and not (
        numeric and isinstance(value, bool))
    if not right_type or not option.valid(value):
        named = bool(option.choices) and isinstance(value, str)
        raise SpecError(f"{'unknown' if named else 'bad'} {name.replace('_', ' ')} {value!r}", location=where,
                        key=name, expected=option.expected, found=repr(value),
                        hint=did_you_mean(value, list(option.choices)) if named else number_hint(value))
    return float(value) if option.kind is float else value


def number_hint(value: Any) -> str | None:
    """YAML 1.1 reads ``1e-3`` (no dot) as text: say how to write it as a number."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return f"YAML reads {value} as text; write {number!r} (a dot before the exponent: 1.0e-3)"
    return None


def check_options(options: Mapping[str, Any], locate: Callable[[str], Location]) -> None:
    """Check every option and how they combine (warmup must leave steps to train: ``warmup_epochs <
    epochs``); ``locate(name)`` says where each value came from (a file position or a command-line flag)."""
    for name, value in options.items():
        if value is not None:
            check_option(name, value, locate(name))
    warmup, epochs = options.get("warmup_epochs") or 0, options.get("epochs")
    if epochs is not None and warmup >= epochs:
        raise SpecError("the warmup takes the whole run", location=locate("warmup_epochs"), key="warmup_epochs",
                        expected=f"warmup_epochs < epochs ({epochs})", found=repr(warmup))


def training_section(raw: LocDict) -> tuple[dict[str, Any], dict[str, Location]]:
    """The top-level ``training:`` mapping of a loaded spec (``raw``: the located document), checked:
    its options as plain values and where each is written."""
    section = raw.get("training")
    if section is None:
        return {}, {}
    here = raw.loc_of("training")
    if not isinstance(section, dict):
        raise SpecError("section 'training' has the wrong form", location=here, node_path="training",
                        expected="a mapping such as {optimizer: adamw, lr: 1.0e-3}", found=kind_of(section))
    key_locs = getattr(section, "key_locs", {})
    value_locs = getattr(section, "value_locs", {})
    options: dict[str, Any] = {}
    for name, value in section.items():
        where = value_locs.get(name, here) if name in OPTIONS else key_locs.get(name, here)
        try:
            options[str(name)] = check_option(str(name), value, where)
        except SpecError as err:
            raise err.with_context(node_path=f"training.{name}") from None
    locations = {name: value_locs.get(name, here) for name in options}
    try:
        check_options(options, lambda name: locations.get(name, here))
    except SpecError as err:
        raise err.with_context(node_path="training") from None
    return options, locations
