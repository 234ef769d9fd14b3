"""Where a space's choices act, found by expanding the space once per option and comparing the results.

A supernet holds every alternative of every choice point side by side. The spec language does not say
where a choice acts: a choice is a parameter, and expressions may carry it anywhere (DARTS's input pairs
index a list of states, SPOS's block index picks a kernel size and a block name). So the builder asks the
compiler instead. It expands the space at the defaults and once per other option of each choice, with
every block instance's outputs marked (``Expander(boundaries=True)``: identity nodes at ``PATH/outK``),
and compares the graphs node by node. The nodes that change with a choice lie inside *sites*: the
innermost block instance (or single op node) present in every one of those expansions that contains the
change. A site's *candidates* are the concrete subgraphs it holds in the members, one per combination of
the options of the choices that change it, deduplicated, each with the supernet values that feed it. The
marks make a skip connection (a block whose output is its input) a site like any other.

Choices that change which choice points exist (a depth choice) or the type of what a site hands on (a
width) are refused: a supernet over them needs elastic depth or width, which this builder does not do yet.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from nasforge.api import Spec
from nasforge.compiler.infer import infer_types
from nasforge.compiler.ir import ChoicePoint, Graph, Node, Value
from nasforge.dsl.expand import BOUNDARY, Expander
from nasforge.errors import Location, SpecError
from nasforge.search.space import options_of
from nasforge.types import TensorType

MAX_EXPANSIONS = 4096
"""Member expansions one supernet may take (one per option combination of the choices at one site)."""
Combo = tuple[int, ...]
"""Option indexes of a site's labels, in the site's label order."""


def mark_owner(path: str) -> tuple[str, int] | None:
    """``("a.b", 1)`` for the output mark ``a.b/out1`` of block instance ``a.b``; None for other nodes."""
    head, sep, index = path.rpartition(BOUNDARY)
    return (head, int(index)) if sep and index.isdigit() else None


def inside(path: str, site: str) -> bool:
    """Whether node ``path`` belongs to the site at ``site`` (the site's own node, nodes under it, its marks)."""
    return path == site or path.startswith(site + ".") or path.startswith(site + BOUNDARY)


@dataclass(frozen=True)
class Candidate:
    """One alternative at a site: a small typed graph with inputs ``$0, $1, ...`` and the supernet values
    (:attr:`sources`) that feed them. Node paths are relative to the site (``conv`` for ``stage1.0.e1_0.conv``)."""

    graph: Graph
    sources: tuple[Value, ...]
    signature: str

    @property
    def is_zero(self) -> bool:
        """The ``none`` op: only ``zero`` nodes (its output never depends on its input)."""
        return bool(self.graph.nodes) and all(n.op == "zero" for n in self.graph)

    @property
    def is_identity(self) -> bool:
        """A skip connection: the output is an input, at most through ``identity`` nodes."""
        return all(n.op == "identity" for n in self.graph)


@dataclass
class Site:
    """A place in the network that the choices in :attr:`labels` change."""

    path: str
    labels: tuple[str, ...]
    outputs: list[TensorType] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    combos: dict[Combo, int] = field(default_factory=dict)
    """Each combination of option indexes (one per label) -> the candidate it gives."""

    def candidate_for(self, combo: Combo) -> int:
        return self.combos[combo]


@dataclass
class SiteMap:
    """The result of :func:`find_sites`: the space's free choices, the marked default member and its sites."""

    choices: list[ChoicePoint]
    options: dict[str, list[Any]]
    defaults: dict[str, int]
    base: Graph
    sites: dict[str, Site]

    def top_value(self, value: Value, graph: Graph) -> Value:
        """What ``value`` of a member's marked graph is in the supernet: a site's output mark becomes the
        site's output, any other mark the value it marks."""
        while True:
            owner = mark_owner(value.node)
            if owner is None:
                return value
            if owner[0] in self.sites:
                return Value(owner[0], owner[1])
            value = graph.nodes[value.node].inputs[0]


class Prober:
    """Expands members of one space with marked block boundaries, caching each expansion."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.overrides = {**(spec.variant.overrides if spec.variant else {}), **spec.overrides}
        self.count = 0
        self.cache: dict[str, Graph] = {}

    def expand(self, assignment: Mapping[str, Any], infer: bool = False) -> Graph:
        key = json.dumps([sorted(assignment.items(), key=lambda kv: kv[0]), infer], default=str)
        if key not in self.cache:
            self.count += 1
            if self.count > MAX_EXPANSIONS:
                raise SpecError("the space is too large to build a supernet from", location=self.where,
                                expected=f"at most {MAX_EXPANSIONS} member expansions",
                                found="more (many choices acting on one site multiply)")
            graph = Expander(self.spec.document, self.overrides, {**self.spec.assignment, **assignment},
                             boundaries=True).expand()
            self.cache[key] = infer_types(graph) if infer else graph
        return self.cache[key]

    @property
    def where(self) -> Location:
        return Location(self.spec.document.file)


def find_sites(spec: Spec) -> SiteMap:
    """Analyse ``spec``'s free choice points (those its assignment leaves open) into sites and candidates."""
    prober = Prober(spec)
    choices = [c for c in spec.choices if c.label not in spec.assignment]
    for c in choices:
        if c.kind == "float":
            raise SpecError(f"choice {c.label!r} is a continuous range", location=c.location,
                            expected="discrete choices (a supernet holds every option)", found=f"{c.kind} {c.options}")
    options = {c.label: options_of(c) for c in choices}
    defaults = {c.label: options[c.label].index(c.value) for c in choices}
    base_raw = prober.expand({})
    labels_of = {c.label for c in choices}
    site_labels: dict[str, set[str]] = {}
    for choice in choices:
        members = [base_raw]
        for k, value in enumerate(options[choice.label]):
            if k == defaults[choice.label]:
                continue
            graph = prober.expand({choice.label: value})
            if {c.label for c in graph.choices} - set(spec.assignment) != labels_of:
                raise SpecError(f"choice {choice.label!r} changes which choice points exist", location=choice.location,
                                expected="choices that do not add or remove other choices",
                                found=f"{choice.label} = {value!r} gives another set of choice points",
                                hint="one-shot supernets do not do elastic depth yet: search this space with a "
                                     "multi-trial strategy (evolution, tpe, ...)")
            members.append(graph)
        for path in changed_paths(members):
            site = enclosing_site(path, members)
            if site is None:
                raise SpecError(f"choice {choice.label!r} changes the network outside any block",
                                location=choice.location, node_path=path,
                                expected="choices that act inside a block instance or on one op node",
                                found=f"{path} changes with it")
            site_labels.setdefault(site, set()).add(choice.label)
    site_labels = merge_nested(site_labels)
    order = [c.label for c in choices]
    base = prober.expand({}, infer=True)
    sites = {path: Site(path, tuple(sorted(labels, key=order.index)), site_outputs(path, base))
             for path, labels in sorted(site_labels.items(), key=lambda kv: position(kv[0], base))}
    result = SiteMap(choices, options, defaults, base, sites)
    for assignment, wanted in pack_combos(sites, options):
        graph = prober.expand(assignment, infer=True)
        check_outside_sites(graph, base, sites, prober.where)
        for path, combo in wanted:
            add_candidate(result, sites[path], combo, graph)
    return result


def changed_paths(members: list[Graph]) -> set[str]:
    """Node paths that are absent from some member or differ (op, attributes, inputs) from the first."""
    first = members[0]
    changed: set[str] = set()
    for graph in members[1:]:
        changed |= set(first.nodes) ^ set(graph.nodes)
        for path in first.nodes.keys() & graph.nodes.keys():
            a, b = first.nodes[path], graph.nodes[path]
            if a.op != b.op or a.attrs != b.attrs or a.inputs != b.inputs:
                changed.add(path)
    return changed


def enclosing_site(path: str, members: list[Graph]) -> str | None:
    """The innermost site holding ``path`` that every member has: the node itself when it is an op node
    in all of them, else the nearest enclosing block instance marked in all of them."""
    owner = mark_owner(path)
    if owner is None and all(path in g.nodes for g in members):
        return path
    parts = (owner[0] if owner else path).split(".")
    for k in range(len(parts), 0, -1):
        prefix = ".".join(parts[:k])
        if all(f"{prefix}{BOUNDARY}0" in g.nodes for g in members):
            return prefix
    return None


def merge_nested(site_labels: dict[str, set[str]]) -> dict[str, set[str]]:
    """A site inside another site joins it (the outer one's candidates hold every variant of the inner)."""
    merged: dict[str, set[str]] = {}
    for path in sorted(site_labels, key=len):
        outer = next((s for s in merged if inside(path, s) and path != s), None)
        merged.setdefault(outer or path, set()).update(site_labels[path])
    return merged


def position(site: str, base: Graph) -> int:
    """Where a site ends in the default member's node order (its last node or mark)."""
    return max(i for i, path in enumerate(base.nodes) if inside(path, site))


def site_outputs(site: str, base: Graph) -> list[TensorType]:
    """The types a site gives the rest of the network (equal in every member, or they would not type-check)."""
    if site in base.nodes:
        return list(base.nodes[site].outputs)
    marks = sorted((mark_owner(p)[1], n) for p, n in base.nodes.items()  # type: ignore[index]
                   if mark_owner(p) is not None and mark_owner(p)[0] == site)  # type: ignore[index]
    return [node.outputs[0] for _, node in marks]


def pack_combos(sites: dict[str, Site], options: dict[str, list[Any]]
                ) -> list[tuple[dict[str, Any], list[tuple[str, Combo]]]]:
    """Member assignments that together realize every option combination of every site: sites with
    other labels share a member, so the count is the largest site's combinations, not their sum."""
    packs: list[dict[str, int]] = []
    wanted: list[list[tuple[str, Combo]]] = []
    for path, site in sites.items():
        for combo in itertools.product(*(range(len(options[label])) for label in site.labels)):
            decided = dict(zip(site.labels, combo))
            k = next((i for i, pack in enumerate(packs)
                      if all(pack.get(label, idx) == idx for label, idx in decided.items())), None)
            if k is None:
                packs.append({})
                wanted.append([])
                k = len(packs) - 1
            packs[k].update(decided)
            wanted[k].append((path, combo))
    return [({label: options[label][idx] for label, idx in pack.items()}, w) for pack, w in zip(packs, wanted)]


def owning_site(path: str, sites: Mapping[str, Any]) -> str | None:
    """The site among ``sites`` that node ``path`` belongs to (found by walking up the path), or None."""
    owner = mark_owner(path)
    parts = (owner[0] if owner else path).split(".")
    for k in range(len(parts), 0, -1):
        prefix = ".".join(parts[:k])
        if prefix in sites and inside(path, prefix):
            return prefix
    return None


def check_outside_sites(graph: Graph, base: Graph, sites: dict[str, Site], where: Location) -> None:
    """Choices that each act inside their sites must not, together, change anything outside them."""
    for path, node in graph.nodes.items():
        if owning_site(path, sites) is not None:
            continue
        other = base.nodes.get(path)
        if other is None or (other.op, other.attrs, other.inputs) != (node.op, node.attrs, node.inputs):
            raise SpecError("choices interact outside the places they change one at a time", location=where,
                            node_path=path, expected="choices whose effects stay inside their block instances",
                            found=f"{path} differs when several choices change together")


def add_candidate(sites: SiteMap, site: Site, combo: Combo, graph: Graph) -> None:
    """Cut ``site`` out of a member's typed graph as a candidate; an identical one is shared. Every
    candidate must give the rest of the network what the default does: a choice that changes a width
    changes the inputs of layers outside the site, which one supernet cannot hold without elastic width."""
    found = site_outputs(site.path, graph)
    if found != site.outputs:
        decided = ", ".join(f"{label} = {sites.options[label][i]!r}" for label, i in zip(site.labels, combo))
        raise SpecError(f"a choice changes what {site.path!r} hands on", location=graph.nodes[
                        next(p for p in graph.nodes if inside(p, site.path))].location, node_path=site.path,
                        expected=f"outputs {', '.join(map(str, site.outputs))} for every option",
                        found=f"{', '.join(map(str, found))} with {decided}",
                        hint="one-shot supernets do not do elastic width yet: search width choices with a "
                             "multi-trial strategy")
    candidate = extract(sites, site.path, graph)
    for k, known in enumerate(site.candidates):
        if known.signature == candidate.signature:
            site.combos[combo] = k
            return
    site.candidates.append(candidate)
    site.combos[combo] = len(site.candidates) - 1


def extract(sites: SiteMap, site: str, graph: Graph) -> Candidate:
    """The subgraph of ``graph`` at ``site``: its nodes renamed relative to the site, marks removed, values
    from outside turned into inputs ``$0, $1, ...``."""
    sources: list[Value] = []
    types: list[TensorType] = []

    def local(value: Value) -> Value:
        while inside(value.node, site):
            if mark_owner(value.node) is None:
                return Value(relative(value.node, site), value.index)
            value = graph.nodes[value.node].inputs[0]
        source = sites.top_value(value, graph)
        if source not in sources:
            sources.append(source)
            types.append(graph.type_of(value))
        return Value(f"${sources.index(source)}")

    nodes: dict[str, Node] = {}
    for node in graph:
        if not inside(node.path, site) or mark_owner(node.path) is not None:
            continue
        if node.ties:
            raise SpecError("a choice changes a block with tied weights", location=node.location, node_path=node.path,
                            expected="candidates without 'tie:'", found=f"ties {node.ties}")
        rel = relative(node.path, site)
        nodes[rel] = replace(node, path=rel, inputs=[local(v) for v in node.inputs], ties={})
    if site in graph.nodes:
        outs = [local(Value(site, k)) for k in range(len(graph.nodes[site].outputs))]
    else:
        outs = [local(Value(f"{site}{BOUNDARY}{k}")) for k in range(len(sites.sites[site].outputs))]
    inputs = {f"${k}": t for k, t in enumerate(types)}
    mini = Graph(site, inputs, nodes, {f"out{k}": v for k, v in enumerate(outs)})
    signature = json.dumps([[n.path, n.op, sorted(n.attrs.items()), [str(v) for v in n.inputs]] for n in nodes.values()]
                           + [[str(s) for s in sources], [str(v) for v in outs]], default=str)
    return Candidate(mini, tuple(sources), signature)


def relative(path: str, site: str) -> str:
    """A node path relative to its site; a site that is one op node keeps its last id (``conv``)."""
    return path[len(site) + 1:] if path != site else site.rsplit(".", 1)[-1]
