"""The Python API: ``nasforge.load(path, **overrides)`` returns a :class:`Spec`.

>>> import nasforge
>>> spec = nasforge.load("specs/models/resnet18.yaml", num_classes=10)   # doctest: +SKIP
>>> spec.check().totals.params                                            # doctest: +SKIP
11181642
>>> gm = spec.build()          # a torch.fx.GraphModule                      # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from torch import fx

from nasforge.compiler.analysis import NodeCost, Totals, node_costs, totals
from nasforge.compiler.fx_builder import build_graph_module
from nasforge.compiler.infer import infer_types
from nasforge.compiler.ir import ChoicePoint, Graph
from nasforge.dsl.document import Document, load_document
from nasforge.dsl.expand import Expander
from nasforge.dsl.serialize import graph_to_document, document_to_yaml, structured_document


@dataclass
class CheckReport:
    """What ``check`` found: the typed graph, warnings (unused nodes...), and totals for one sample."""

    graph: Graph
    totals: Totals
    warnings: list[str] = field(default_factory=list)


@dataclass
class Summary:
    """A layer table: per-node (or per-block, when folded) costs and totals."""

    rows: list[NodeCost]
    totals: Totals
    graph: Graph

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.graph.name,
            "inputs": {k: str(v) for k, v in self.graph.inputs.items()},
            "outputs": {k: str(self.graph.type_of(v)) for k, v in self.graph.outputs.items()},
            "layers": [r.as_dict() for r in self.rows],
            "totals": self.totals.as_dict(),
            "paper": self.graph.meta.get("paper"),
            "choices": [{"label": c.label, "kind": c.kind, "value": c.value} for c in self.graph.choices],
        }


class Spec:
    """A loaded spec with its parameter overrides and choice assignment; everything else is derived."""

    def __init__(self, document: Document, overrides: Mapping[str, Any] | None = None,
                 assignment: Mapping[str, Any] | None = None) -> None:
        self.document = document
        self.overrides = dict(overrides or {})
        self.assignment = dict(assignment or {})

    @property
    def name(self) -> str:
        return self.document.name

    @property
    def paper(self) -> dict[str, Any]:
        return dict(self.graph.meta.get("paper") or {})

    @cached_property
    def graph(self) -> Graph:
        """The expanded, type-checked IR (raises SpecError on the first mistake)."""
        return infer_types(Expander(self.document, self.overrides, self.assignment).expand())

    @property
    def choices(self) -> list[ChoicePoint]:
        return self.graph.choices

    def with_choices(self, assignment: Mapping[str, Any]) -> "Spec":
        """The same space with some choice points decided (labels as in :attr:`choices`)."""
        return Spec(self.document, self.overrides, {**self.assignment, **assignment})

    def check(self, bindings: Mapping[str, int] | None = None) -> CheckReport:
        graph = self.graph
        return CheckReport(graph, totals(graph, bindings), list(graph.warnings))

    def summary(self, depth: int | None = None, bindings: Mapping[str, int] | None = None) -> Summary:
        """Per-node costs; with ``depth`` N, nodes are folded into their path prefix of N parts."""
        costs = node_costs(self.graph, bindings)
        total = totals(self.graph, bindings, costs)
        rows = fold_rows(self.graph, costs, depth) if depth else costs
        return Summary(rows, total, self.graph)

    def build(self) -> fx.GraphModule:
        """A fresh ``torch.fx.GraphModule`` (in eval mode) for the spec."""
        return build_graph_module(self.graph)

    def to_yaml(self) -> str:
        """The spec as YAML that loads back to the same IR.

        A network without choice points keeps its structure (blocks, repeats, expressions) with the
        overrides written into ``params`` and imports inlined; a sampled space is written as the
        concrete, flat network it denotes, with every choice decided.
        """
        if self.graph.choices:
            return document_to_yaml(graph_to_document(self.graph))
        return document_to_yaml(structured_document(self.document, self.graph.meta["params"]))


def fold_rows(graph: Graph, costs: list[NodeCost], depth: int) -> list[NodeCost]:
    """Merge rows sharing the first ``depth`` path components (``stages.2.block.5.dw`` -> ``stages.2``)."""
    folded: dict[str, list[NodeCost]] = {}
    for c in costs:
        key = ".".join(c.path.split(".")[:depth])
        folded.setdefault(key, []).append(c)
    rows = []
    for key, group in folded.items():
        if len(group) == 1 and group[0].path == key:
            rows.append(group[0])
            continue
        rows.append(NodeCost(key, f"({len(group)} nodes)", group[-1].output, sum(g.params for g in group),
                             sum(g.macs for g in group), sum(g.flops for g in group),
                             sum(g.out_bytes for g in group)))
    return rows


def load(path: str | Path, **overrides: Any) -> Spec:
    """Load a spec file; keyword arguments override its declared ``params``."""
    return Spec(load_document(path), overrides)


def loads(text: str, name: str = "<spec>", **overrides: Any) -> Spec:
    """Load a spec from YAML text (imports resolve relative to the current directory)."""
    return Spec(load_document(name, text=text), overrides)
