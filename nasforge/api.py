"""The Python API: ``nasforge.load(path, **overrides)`` returns a :class:`Spec`.

>>> import nasforge
>>> spec = nasforge.load("specs/models/resnet.yaml", num_classes=10)   # doctest: +SKIP
>>> spec.check().totals.params                                            # doctest: +SKIP
11181642
>>> gm = spec.build()          # a torch.fx.GraphModule                      # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import fx

from nasforge.compiler.analysis import NodeCost, Totals, node_costs, totals
from nasforge.compiler.fx_builder import build_graph_module
from nasforge.compiler.infer import infer_types
from nasforge.compiler.ir import ChoicePoint, Graph
from nasforge.dsl.document import Document, load_document
from nasforge.dsl.expand import Expander
from nasforge.dsl.serialize import document_to_yaml, graph_to_document, section_rank, structured_document
from nasforge.dsl.variants import Variant, select_variant, variants


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
                 assignment: Mapping[str, Any] | None = None, variant: Variant | None = None,
                 strict: bool = True) -> None:
        self.document = document
        self.overrides = dict(overrides or {})
        self.assignment = dict(assignment or {})
        self.variant = variant
        self.strict = strict

    @property
    def name(self) -> str:
        return self.variant.name if self.variant else self.document.name

    @property
    def variants(self) -> list[str]:
        """Names of the family members the spec defines (``variants:``), for ``load(..., variant=NAME)``."""
        return list(variants(self.document))

    @property
    def paper(self) -> dict[str, Any]:
        return dict(self.graph.meta.get("paper") or {})

    @cached_property
    def expanded(self) -> Graph:
        """The expanded IR before type inference: structure and choice points, no shapes yet."""
        overrides = {**(self.variant.overrides if self.variant else {}), **self.overrides}
        graph = Expander(self.document, overrides, self.assignment, self.strict).expand()
        if self.variant:
            graph.name = self.variant.name
            graph.meta["paper"] = {**(graph.meta.get("paper") or {}), **self.variant.paper}
            graph.meta["variant"] = self.variant.name
        return graph

    @cached_property
    def graph(self) -> Graph:
        """The expanded, type-checked IR (raises SpecError on the first mistake)."""
        return infer_types(self.expanded)

    @property
    def choices(self) -> list[ChoicePoint]:
        """The choice points expansion met (known even where a decision breaks shape inference)."""
        return self.expanded.choices

    def with_choices(self, assignment: Mapping[str, Any], strict: bool = True) -> "Spec":
        """The same space with some choice points decided (labels as in :attr:`choices`). With
        ``strict=False``, decisions for choice points that other decisions removed are ignored."""
        return Spec(self.document, self.overrides, {**self.assignment, **assignment}, self.variant, strict)

    def check(self, bindings: Mapping[str, int] | None = None) -> CheckReport:
        graph = self.graph
        return CheckReport(graph, totals(graph, bindings), list(graph.warnings))

    def summary(self, depth: int | None = None, bindings: Mapping[str, int] | None = None,
                fold_blocks: bool = False) -> Summary:
        """Per-node costs. ``depth`` N folds nodes into their path prefix of N parts; ``fold_blocks``
        folds each top-level block instance (``layer1.0``, ``stem``) into one row."""
        costs = node_costs(self.graph, bindings)
        total = totals(self.graph, bindings, costs)
        if depth:
            rows = fold_rows(costs, lambda path: ".".join(path.split(".")[:depth]))
        elif fold_blocks:
            blocks = {node.path: node.block or node.path for node in self.graph}
            rows = fold_rows(costs, blocks.__getitem__)
        else:
            rows = costs
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
        data = structured_document(self.document, self.graph.meta["params"])
        if self.variant:  # the chosen family member, standing alone
            data.pop("variants", None)
            data["name"] = self.graph.name
            data["paper"] = self.graph.meta["paper"]
            data = {k: data[k] for k in sorted(data, key=section_rank)}
        return document_to_yaml(data)


def fold_rows(costs: list[NodeCost], key_of: Callable[[str], str]) -> list[NodeCost]:
    """Merge rows whose node paths map to the same key (``stages.2.block.5.dw`` -> ``stages.2``)."""
    folded: dict[str, list[NodeCost]] = {}
    for c in costs:
        folded.setdefault(key_of(c.path), []).append(c)
    rows = []
    for key, group in folded.items():
        if len(group) == 1 and group[0].path == key:
            rows.append(group[0])
            continue
        rows.append(NodeCost(key, f"({len(group)} nodes)", group[-1].output, sum(g.params for g in group),
                             sum(g.macs for g in group), sum(g.flops for g in group),
                             sum(g.out_bytes for g in group)))
    return rows


def load(path: str | Path, variant: str | None = None, **overrides: Any) -> Spec:
    """Load a spec file; ``variant`` picks a family member, keyword arguments override ``params``."""
    return _spec(load_document(path), variant, overrides)


def loads(text: str, name: str = "<spec>", variant: str | None = None, **overrides: Any) -> Spec:
    """Load a spec from YAML text (imports resolve relative to the current directory)."""
    return _spec(load_document(name, text=text), variant, overrides)


def _spec(document: Document, variant: str | None, overrides: Mapping[str, Any]) -> Spec:
    return Spec(document, overrides, variant=select_variant(document, variant) if variant else None)
