"""From architecture weights to a network: genotype, assignment, concrete spec.

:meth:`~.supernet.Supernet.derive` applies the papers' rules and returns an *assignment* (choice label ->
option), which is all a genotype is in nasforge: ``space.with_choices(assignment)`` is the discrete member,
and :func:`evaluation_spec` re-reads the space with other parameters first, so that a cell searched at
``C=16, layers=8`` is written as DARTS's evaluation network at ``C=36, layers=20`` (or any other size the
space's parameters allow) as one flat concrete YAML spec that ``nasforge check`` and ``build`` take.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from nasforge.api import Spec


def evaluation_spec(space: Spec, assignment: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> Spec:
    """The member ``assignment`` picks, with the space's parameters updated by ``overrides`` (the
    evaluation network's size: ``{"C": 36, "layers": 20}``); the member is checked (shape inference)."""
    spec = Spec(space.document, {**space.overrides, **(overrides or {})}, space.assignment, space.variant)
    member = spec.with_choices(assignment)
    member.graph  # noqa: B018 (a member that does not type-check is an error here, not in the written file)
    return member


def genotype_text(assignment: Mapping[str, Any]) -> str:
    """A one-line genotype: ``edge_1_0=nor_conv_3x3 edge_2_0=skip_connect ...`` (``params.`` dropped)."""
    return " ".join(f"{label.removeprefix('params.')}={json.dumps(value) if not isinstance(value, str) else value}"
                    for label, value in assignment.items())
