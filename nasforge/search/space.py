"""A search space: a spec with choice points, seen as the set of its concrete networks.

The spec language already records every choice point an expansion meets (``Spec.choices``), so a space
needs no description of its own: deciding some choices may reveal others (a depth choice creates the
choices of the layers it adds) and hide others. This module samples decisions in discovery order, counts
the space exactly where that is tractable, and finds options that can never type-check.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from nasforge.api import Spec
from nasforge.compiler.ir import ChoicePoint
from nasforge.errors import SpecError

Assignment = dict[str, Any]
MAX_ROUNDS = 64
MAX_SIZE_LEAVES = 4096
"""Structural branches the exact size count may enumerate before it gives up (each is an expansion)."""


def option_count(choice: ChoicePoint) -> int | None:
    """How many values a choice point can take (None for a continuous range)."""
    if choice.kind in ("choice", "op_choice", "input_choice"):
        return len(choice.options)
    if choice.kind == "int":
        lo, hi = choice.options
        step = int(choice.step or 1)
        return (hi - lo) // step + 1
    return None


def options_of(choice: ChoicePoint) -> list[Any]:
    """The values of a discrete choice point, in order."""
    if choice.kind == "int":
        lo, hi = choice.options
        return list(range(lo, hi + 1, int(choice.step or 1)))
    if choice.kind == "float":
        raise ValueError(f"{choice.label} is a continuous range")
    return list(choice.options)


def sample_value(choice: ChoicePoint, rng: random.Random) -> Any:
    """A uniformly random value (log-uniform for ``log: true`` float ranges)."""
    if choice.kind == "float":
        lo, hi = choice.options
        if choice.log:
            return math.exp(rng.uniform(math.log(lo), math.log(hi)))
        return rng.uniform(lo, hi)
    return rng.choice(options_of(choice))


@dataclass(frozen=True)
class OptionProblem:
    """An option of a choice point that fails shape inference (with the other choices at defaults)."""

    label: str
    value: Any
    error: SpecError

    def describe(self) -> str:
        return f"{self.label} = {self.value!r}: {self.error.message}"


@dataclass
class Space:
    """The networks a spec with choice points denotes."""

    spec: Spec
    decided: Assignment = field(default_factory=dict)

    @property
    def choices(self) -> list[ChoicePoint]:
        """Choice points met at the current decisions (defaults for the rest)."""
        return self.spec.with_choices(self.decided, strict=False).choices

    def concrete(self, assignment: Mapping[str, Any]) -> Spec:
        """The network for a full or partial assignment (undecided choices take their defaults)."""
        return self.spec.with_choices({**self.decided, **assignment}, strict=False)

    def complete(self, assignment: Mapping[str, Any], rng: random.Random | None = None,
                 choose: Callable[[ChoicePoint], Any] | None = None) -> Assignment:
        """Decide every choice point the assignment leads to, in discovery order: undecided ones by
        ``choose`` (an Optuna trial's suggestion, say), at random (``rng``), or at their defaults,
        repeating until no new choice point appears; decisions that no longer apply are dropped, so the
        result names exactly the network's choice points."""
        if choose is None:
            choose = (lambda c: sample_value(c, rng)) if rng else (lambda c: c.value)
        current = dict(assignment)
        for _ in range(MAX_ROUNDS):
            met = self.concrete(current).choices
            labels = {c.label for c in met}
            new = {c.label: choose(c) for c in met if c.label not in current}
            current = {k: v for k, v in current.items() if k in labels}
            if not new:
                return current
            current.update(new)
        raise SpecError("choice points keep appearing: the space does not settle",
                        expected=f"a fixed set of choices within {MAX_ROUNDS} rounds", found=str(len(current)))

    def mutate(self, assignment: Mapping[str, Any], rng: random.Random) -> Assignment:
        """Change one decision to a different value, then settle the choices that change creates; the
        mutation respects the space (a depth mutation adds or removes whole layers' decisions)."""
        current = self.complete(assignment)
        met = {c.label: c for c in self.concrete(current).choices}
        movable = [c for c in met.values() if option_count(c) is None or (option_count(c) or 0) > 1]
        if not movable:
            return current
        target = rng.choice(movable)
        value = current.get(target.label)
        for _ in range(16):
            new = sample_value(target, rng)
            if new != value:
                break
        return self.complete({**current, target.label: new}, rng)

    def crossover(self, a: Mapping[str, Any], b: Mapping[str, Any], rng: random.Random) -> Assignment:
        """Uniform crossover over the decisions both parents share; the rest follow the first parent."""
        child = {k: (b[k] if k in b and rng.random() < 0.5 else v) for k, v in a.items()}
        return self.complete(child, rng)

    def sample(self, rng: random.Random) -> Assignment:
        """One network chosen uniformly at each choice point, in discovery order."""
        return self.complete({}, rng)

    def samples(self, n: int, seed: int = 0) -> Iterator[Assignment]:
        rng = random.Random(seed)
        for _ in range(n):
            yield self.sample(rng)

    # -- structure ----------------------------------------------------------------------------------
    def structural(self, choices: list[ChoicePoint] | None = None) -> list[ChoicePoint]:
        """Choice points (of ``choices``, default all) whose value changes which choice points exist
        (depth, block choices), judged against every choice point met at the current decisions."""
        base = {c.label for c in self.choices}
        choices = self.choices if choices is None else choices
        out = []
        for c in choices:
            if option_count(c) is None:
                continue
            for value in options_of(c):
                try:
                    labels = {x.label for x in self.concrete({c.label: value}).choices}
                except SpecError:
                    continue
                if labels != base:
                    out.append(c)
                    break
        return out

    def size(self) -> int | None:
        """The number of distinct decision sets (networks up to isomorphism are not merged here);
        None when a continuous choice makes it infinite or the conditional structure is too large.

        Whether a choice is structural is judged once, where it first appears (a layer's kernel choice
        does not become structural because an earlier depth was decided), which keeps the count to one
        expansion per option of each choice plus one per structural branch."""
        return self._size(dict(self.decided), [0], {})

    def _size(self, fixed: Assignment, leaves: list[int], known: dict[str, bool]) -> int | None:
        sub = Space(self.spec, fixed)
        free = [c for c in sub.choices if c.label not in fixed]
        fresh = [c for c in free if c.label not in known]
        flagged = {c.label for c in sub.structural(fresh)} if fresh else set()
        known.update({c.label: c.label in flagged for c in fresh})
        structural = [c for c in free if known[c.label]]
        if not structural:
            leaves[0] += 1
            counts = [option_count(c) for c in free]
            return None if any(n is None for n in counts) else math.prod(counts)  # type: ignore[arg-type]
        head = structural[0]
        total = 0
        for value in options_of(head):
            if leaves[0] > MAX_SIZE_LEAVES:
                return None
            part = self._size({**fixed, head.label: value}, leaves, known)
            if part is None:
                return None
            total += part
        return total

    def option_problems(self) -> list[OptionProblem]:
        """Every option that fails shape inference when chosen alone (others at their defaults): the
        classic 'a width choice breaks the next layer'."""
        problems = []
        for c in self.choices:
            if option_count(c) is None:
                continue
            for value in options_of(c):
                if value == c.value:
                    continue
                try:
                    self.concrete({c.label: value}).graph  # noqa: B018 (expansion + inference)
                except SpecError as err:
                    problems.append(OptionProblem(c.label, value, err))
        return problems


@dataclass
class SpaceReport:
    """What checking a space finds: its choice points, size, unusable options and failing samples."""

    choices: list[ChoicePoint]
    structural: list[str]
    size: int | None
    problems: list[OptionProblem]
    failed_samples: list[tuple[Assignment, SpecError]]
    samples: int

    @property
    def ok(self) -> bool:
        return not self.problems and not self.failed_samples

    def as_dict(self) -> dict[str, Any]:
        return {
            "choices": [{"label": c.label, "kind": c.kind, "options": list(c.options), "default": c.value}
                        for c in self.choices],
            "structural": self.structural, "size": self.size,
            "problems": [{"label": p.label, "value": p.value, "error": p.error.message} for p in self.problems],
            "samples": self.samples,
            "failed_samples": [{"choices": a, "error": e.message} for a, e in self.failed_samples],
        }


def check_space(spec: Spec, samples: int = 0, seed: int = 0) -> SpaceReport:
    """Validate every option of a space and take ``samples`` random members through shape inference."""
    space = Space(spec)
    failed = []
    for assignment in space.samples(samples, seed):
        try:
            space.concrete(assignment).graph  # noqa: B018 (expansion + inference)
        except SpecError as err:
            failed.append((assignment, err))
    return SpaceReport(space.choices, [c.label for c in space.structural()], space.size(), space.option_problems(),
                       failed, samples)
