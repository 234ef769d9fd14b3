"""The IR: a small typed DAG of op nodes, named by their spec paths.

A :class:`Graph` is what a spec means once parameters, blocks, repeats and choices are expanded: named
inputs with tensor types, op nodes in topological order, named outputs. Every node keeps the spec
location it came from, so analysis and shape errors still point into the YAML.
Graph algorithms (topological order, hashing) go through networkx via :meth:`Graph.to_networkx`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import networkx as nx

from nasforge.errors import Location
from nasforge.types import TensorType


ALL_OUTPUTS = -1
"""Index of a reference to every output of a node (``in: split``); inference replaces it by the real
outputs, whose number some ops (``split`` by size) only know from the input shape."""


@dataclass(frozen=True)
class Value:
    """One tensor in the graph: output ``index`` of node ``node`` (or a graph input, index 0)."""

    node: str
    index: int = 0

    def __str__(self) -> str:
        return self.node if self.index in (0, ALL_OUTPUTS) else f"{self.node}:{self.index}"


@dataclass(frozen=True)
class ChoicePoint:
    """A decision in a search space, recorded in the IR with the value this graph took.

    ``label`` is stable across samples (node path + attribute, or ``params.NAME``); ``kind`` is one of
    ``choice`` (a value from ``options``), ``int`` / ``float`` (a range ``options = (lo, hi)``),
    ``op_choice`` (an op or block from ``options``) and ``input_choice`` (an input edge).
    """

    label: str
    kind: str
    options: tuple[Any, ...]
    value: Any
    location: Location = field(default_factory=Location)
    log: bool = False
    step: int | float | None = None


@dataclass
class Node:
    """An op applied to input values, with validated attributes and (after inference) output types."""

    path: str
    op: str
    attrs: dict[str, Any]
    inputs: list[Value]
    location: Location = field(default_factory=Location)
    attr_locations: dict[str, Location] = field(default_factory=dict)
    declared_shape: tuple[Any, ...] | None = None
    outputs: list[TensorType] = field(default_factory=list)
    block: str | None = None
    """Path of the outermost block instance the node was expanded from (None at the top level)."""
    ties: dict[str, str] = field(default_factory=dict)
    """Parameters shared with another node: ``{own param: "node.path.param"}`` (weight tying)."""

    def output(self, index: int = 0) -> Value:
        return Value(self.path, index)


@dataclass
class Graph:
    """A concrete network: inputs, nodes in topological order, outputs, plus choices and metadata."""

    name: str
    inputs: dict[str, TensorType]
    nodes: dict[str, Node]
    outputs: dict[str, Value]
    choices: list[ChoicePoint] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    input_locations: dict[str, Location] = field(default_factory=dict)
    outputs_location: Location = field(default_factory=Location)
    warnings: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def type_of(self, value: Value) -> TensorType:
        """The tensor type of a value (inputs and inferred node outputs)."""
        if value.node in self.inputs:
            return self.inputs[value.node]
        return self.nodes[value.node].outputs[value.index]

    def users(self) -> dict[str, list[str]]:
        """For each node path and input name, the paths of the nodes that consume it."""
        users: dict[str, list[str]] = {name: [] for name in [*self.inputs, *self.nodes]}
        for node in self:
            for v in node.inputs:
                users[v.node].append(node.path)
        return users

    def to_networkx(self) -> nx.MultiDiGraph:
        """The DAG as networkx: nodes carry ``op`` and ``attrs``, edges carry output/input indices."""
        g = nx.MultiDiGraph()
        for name in self.inputs:
            g.add_node(name, op="input", attrs={})
        for node in self:
            g.add_node(node.path, op=node.op, attrs=node.attrs)
            for slot, v in enumerate(node.inputs):
                g.add_edge(v.node, node.path, out=v.index, slot=slot)
        return g
