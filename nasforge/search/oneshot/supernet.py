"""A supernet built from a space file by the same compiler that builds its members.

``build_supernet(space)`` finds where the space's choices act (:mod:`.sites`), builds every candidate of
every site as the concrete subgraph it is in a member (``build_graph_module`` on the candidate's IR), and
emits the default member's graph with each site replaced by a :class:`~.mixed.MixedOp` call: one
``torch.fx.GraphModule`` whose ``state_dict`` keys follow the spec's node paths
(``stage1.0.e1_0.candidates.nor_conv_3x3.conv.weight``).

Architecture parameters (alpha) belong to *keys*. A choice shared by several cells (NAS-Bench-201's
``edge_1_0`` in all 15 cells, DARTS's ``normal_op_2a`` in every normal cell) is one key, so the cells
share one alpha, as in the papers. Two relaxations follow DARTS:

* a node that sums several sites (``n2 = add(op_a, op_b)``) becomes a :class:`~.mixed.MixedNode`, and each
  of its edges also gets the zero op when the space's options have none (DARTS's ``none``, which absorbs
  weight during the search but is never chosen: the discrete space excludes it);
* an input choice (DARTS's ``normal_in_3``: which two earlier states node 3 takes) whose sites are summed by
  one node becomes one mixed edge per candidate predecessor, keyed ``LABEL@j`` for the j-th predecessor
  the choice's options mention, so the node sums mixed ops from all its earlier states. :meth:`Supernet.derive`
  then keeps the strongest edges (by their strongest non-zero op) and picks the option wiring them.

Other choices that act on one site together (SPOS's block index changes a kernel and a block) are
factorized: a candidate's weight is the product of its choices' weights.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from typing import Any, Mapping

import networkx as nx
import torch
from torch import fx, nn

from nasforge.api import Spec
from nasforge.compiler.fx_builder import build_graph_module
from nasforge.compiler.ir import Graph, Node, Value
from nasforge.errors import Location, SpecError, did_you_mean
from nasforge.dsl.expand import BOUNDARY
from nasforge.search.oneshot.mixed import MODES, Control, MixedNode, MixedOp, make_elastic
from nasforge.search.oneshot.sites import Candidate, Site, SiteMap, find_sites, inside, mark_owner, owning_site
from nasforge.types import TensorType

ALPHA_INIT = 1e-3
"""Architecture parameters start as 1e-3 * N(0, 1), as in DARTS, GDAS and PC-DARTS (near-uniform softmax)."""
ZERO = "none"
"""Name of the zero op the relaxation adds to an edge (DARTS's ``none``)."""


@dataclass(frozen=True)
class ArchKey:
    """One vector of architecture parameters: a choice label, or ``LABEL@j`` for the edge from the j-th
    predecessor of a relaxed input choice. ``options`` name its entries; ``zero`` says the last entry is
    the zero op that the relaxation adds (not an option of the space)."""

    name: str
    options: tuple[str, ...]
    zero: bool

    @property
    def size(self) -> int:
        return len(self.options)


@dataclass(frozen=True)
class InputChoice:
    """A relaxed input choice: ``wiring[o]`` lists (site position, edge) pairs option ``o`` connects, and
    ``op_labels[p]`` is the op choice of the group's site at position ``p``."""

    label: str
    op_labels: tuple[str, ...]
    edges: int
    wiring: tuple[tuple[tuple[int, int], ...], ...]


class Supernet(nn.Module):
    """Every member of a space in one module; see the module docstring for how choices become weights.

    >>> net = build_supernet(nasforge.load("specs/spaces/nas_bench_201.yaml", N=1, C=8))  # doctest: +SKIP
    >>> net.set_mode("mixed"); logits = net(images)                                      # doctest: +SKIP
    >>> net.space.with_choices(net.derive()).to_yaml()                                   # doctest: +SKIP
    """

    def __init__(self, space: Spec, sitemap: SiteMap, body: fx.GraphModule, control: Control,
                 keys: dict[str, ArchKey], inputs: dict[str, InputChoice],
                 beta_keys: dict[str, int], ops: dict[str, MixedOp],
                 input_nodes: dict[str, tuple[MixedNode, str]]) -> None:
        super().__init__()
        self.space = space
        self.sitemap = sitemap
        self.body = body
        self.control = control
        self.keys = keys
        self.inputs = inputs
        self.ops = ops
        self.input_nodes = input_nodes
        self.alphas = nn.ParameterDict({slug(k): nn.Parameter(ALPHA_INIT * torch.randn(key.size))
                                        for k, key in keys.items()})
        self.betas = nn.ParameterDict({slug(k): nn.Parameter(ALPHA_INIT * torch.randn(n))
                                       for k, n in beta_keys.items()})
        self.beta_names = list(beta_keys)
        self.tau = 1.0
        self.set_path({})

    # -- the contract -------------------------------------------------------------------------------
    @property
    def choice_labels(self) -> list[str]:
        return [c.label for c in self.sitemap.choices]

    def options(self, label: str) -> list[Any]:
        return list(self.sitemap.options[self.known(label)])

    @property
    def own_keys(self) -> list[str]:
        """The choice labels that are architecture keys themselves (all but relaxed input choices and the
        op choices of their edges, whose weights live on the edges ``LABEL@j``)."""
        return [label for label in self.choice_labels if label in self.keys]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [*self.alphas.values(), *self.betas.values()]

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.body.parameters())

    def state_parts(self) -> dict[str, list[torch.Tensor]]:
        """Its state in the parts that the processes of a distributed search keep identical (and compare)."""
        return {"architecture parameters": self.arch_parameters(), "weights": self.weight_parameters(),
                "buffers": list(self.buffers())}

    def alpha(self, key: str) -> nn.Parameter:
        """The architecture parameters of one key (a choice label, or ``LABEL@j`` for an edge)."""
        return self.alphas[slug(key)]

    def beta(self, key: str) -> nn.Parameter:
        """The edge weights (PC-DARTS) of one kind of summing node (an input choice's label, or its sites'
        choice labels joined by ``+``)."""
        return self.betas[slug(key)]

    def set_mode(self, mode: str, *, tau: float | None = None, k: int | None = None) -> None:
        """``mixed``, ``gumbel`` (``tau``: the Gumbel-softmax temperature), ``partial`` (``k``: 1/k of the
        channels go through the ops) or ``single_path`` (the path of :meth:`set_path`)."""
        if mode not in MODES:
            raise SpecError(f"unknown supernet mode {mode!r}", location=Location("set_mode"),
                            expected=" or ".join(MODES), found=repr(mode), hint=did_you_mean(mode, list(MODES)))
        if tau is not None:
            self.tau = float(tau)
        if k is not None:
            if k < 1:
                raise SpecError("the partial-channel divisor must be positive", location=Location("set_mode"),
                                expected="k >= 1", found=str(k))
            self.control.partial_k = int(k)
        self.control.mode = mode

    def set_path(self, assignment: Mapping[str, Any]) -> None:
        """Choose one member for ``single_path`` mode (undecided choices take their defaults)."""
        index = self.option_indexes(assignment)
        for path, op in self.ops.items():
            site = self.sitemap.sites[path]
            op.selected = [site.combos[tuple(index[label] for label in site.labels)]]
        for path, (node, label) in self.input_nodes.items():
            choice = self.inputs[label]
            chosen: dict[int, list[int]] = {}
            for position, edge in choice.wiring[index[label]]:
                op_label = choice.op_labels[position]
                chosen.setdefault(edge, []).append(index[op_label])
            node.active = sorted(chosen)
            for e, edge_op in enumerate(node.edges):
                edge_op.selected = chosen.get(e, [])

    def sample_path(self, rng: random.Random) -> dict[str, Any]:
        """A uniformly random member (each choice uniform), set as the single path and returned."""
        assignment = {label: rng.choice(self.sitemap.options[label]) for label in self.choice_labels}
        self.set_path(assignment)
        return assignment

    def derive(self) -> dict[str, Any]:
        """The discrete member the architecture weights point at, as an assignment for ``with_choices``:
        each op choice its strongest option; each relaxed input choice the option wiring the strongest
        edges (an edge's strength is its strongest non-zero op, times its node's edge weight), and the
        op choices of those edges their strongest non-zero op (DARTS's rule)."""
        with torch.no_grad():
            weights = {k: torch.softmax(self.alpha(k), 0) for k in self.keys}
            out: dict[str, Any] = {}
            for label in self.own_keys:
                n = len(self.sitemap.options[label])
                out[label] = self.sitemap.options[label][int(weights[label][:n].argmax())]
            for label, choice in self.inputs.items():
                op_options = self.sitemap.options[choice.op_labels[0]]
                n = len(op_options)
                edge = [weights[f"{label}@{j}"][:n] for j in range(choice.edges)]
                beta = torch.softmax(self.beta(label), 0)
                strength = [float(e.max() * beta[j]) for j, e in enumerate(edge)]
                best = best_wiring(choice, strength)
                out[label] = self.sitemap.options[label][best]
                for position, j in choice.wiring[best]:
                    out[choice.op_labels[position]] = op_options[int(edge[j].argmax())]
            return {label: out[label] for label in self.choice_labels}

    def member_state(self, assignment: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The weights of the member ``assignment`` picks, keyed as that member's own module names them
        (``spec.with_choices(assignment).build().load_state_dict(...)`` takes them as they are): what a
        single path inherits from the supernet. Sets the single path to ``assignment``."""
        self.set_path(assignment)
        mixed = [*self.ops, *self.input_nodes, *(g for g, m in self.body.named_modules() if isinstance(m, MixedNode))]
        out = {k: v for k, v in self.body.state_dict().items() if not any(inside(k, p) for p in mixed)}

        def take(op: MixedOp, site: str) -> None:
            prefix = site.rpartition(".")[0] if site in self.sitemap.base.nodes else site
            for c in op.selected:
                if op.names[c] in op.candidates:
                    for k, v in op.candidates[op.names[c]].state_dict().items():
                        out[f"{prefix}.{k}" if prefix else k] = v

        for path, op in self.ops.items():
            take(op, path)
        index = self.option_indexes(assignment)
        for node, label in self.input_nodes.values():
            for position, j in self.inputs[label].wiring[index[label]]:
                take(node.edges[j], node.sites[position])
        return out

    # -- forward --------------------------------------------------------------------------------------
    def forward(self, *inputs: torch.Tensor) -> Any:
        self.control.weights = self.current_weights()
        return self.body(*inputs)

    def current_weights(self) -> dict[str, torch.Tensor]:
        """The weights of this forward per key: softmax (mixed, partial, with the edge weights), a hard
        Gumbel-softmax sample (gumbel; the argmax in eval mode), nothing for single paths."""
        mode = self.control.mode
        if mode == "single_path":
            return {}
        alphas = {k: self.alpha(k) for k in self.keys}
        if mode == "gumbel":
            return {k: gumbel_hard(a, self.tau) if self.training else one_hot_argmax(a) for k, a in alphas.items()}
        weights = {k: torch.softmax(a, 0) for k, a in alphas.items()}
        if mode == "partial":
            weights.update({k: torch.softmax(self.beta(k), 0) for k in self.beta_names})
        return weights

    # -- diagnostics ----------------------------------------------------------------------------------
    def arch_weights(self) -> dict[str, list[float]]:
        """softmax(alpha) per key (for trajectories and logs)."""
        with torch.no_grad():
            return {k: [round(float(v), 6) for v in torch.softmax(self.alpha(k), 0)] for k in self.keys}

    def edge_weights(self) -> dict[str, list[float]]:
        """softmax(beta) per summing node kind (PC-DARTS's edge normalization)."""
        with torch.no_grad():
            return {k: [round(float(v), 6) for v in torch.softmax(self.beta(k), 0)] for k in self.beta_names}

    def known(self, label: str) -> str:
        if label not in self.sitemap.options:
            raise SpecError(f"the supernet has no choice {label!r}", location=Location(self.space.document.file),
                            expected="one of " + ", ".join(self.choice_labels), found=repr(label),
                            hint=did_you_mean(label, self.choice_labels))
        return label

    def option_indexes(self, assignment: Mapping[str, Any]) -> dict[str, int]:
        index = dict(self.sitemap.defaults)
        for label, value in assignment.items():
            options = self.sitemap.options[self.known(label)]
            if value not in options:
                raise SpecError(f"{value!r} is not an option of {label!r}", location=Location(self.space.document.file),
                                expected=f"one of {options!r}", found=repr(value))
            index[label] = options.index(value)
        return index


def best_wiring(choice: InputChoice, strength: list[float]) -> int:
    """The option of an input choice that wires the strongest edges: the one whose edges are exactly the
    top ones when there is such an option, else the one with the largest total strength."""
    k = len(choice.op_labels)
    top = set(sorted(range(len(strength)), key=lambda j: -strength[j])[:k])
    for o, wiring in enumerate(choice.wiring):
        if {j for _, j in wiring} == top:
            return o
    return max(range(len(choice.wiring)), key=lambda o: sum(strength[j] for _, j in choice.wiring[o]))


def gumbel_hard(alpha: torch.Tensor, tau: float) -> torch.Tensor:
    """GDAS's sample: one-hot of argmax((log_softmax(alpha) + Gumbel noise) / tau), with the gradient of
    the soft sample (straight-through); resampled in the rare case the noise overflows."""
    while True:
        gumbels = -torch.empty_like(alpha).exponential_().log()
        probs = torch.softmax((torch.log_softmax(alpha, 0) + gumbels) / tau, 0)
        if torch.isfinite(probs).all():
            hard = torch.zeros_like(probs).scatter_(0, probs.argmax().reshape(1), 1.0)
            return hard - probs.detach() + probs


def one_hot_argmax(alpha: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(alpha).scatter_(0, alpha.argmax().reshape(1), 1.0)


def slug(name: str) -> str:
    """A ``ParameterDict`` key for an architecture key (no dots): ``params.edge_1_0`` -> ``params_edge_1_0``."""
    return re.sub(r"\W", "_", name)


def option_name(value: Any, k: int) -> str:
    """A module name for an option: the op or block name, the number, or ``option{k}``."""
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    return text if re.fullmatch(r"[A-Za-z0-9_]+", text) else f"option{k}"


def build_supernet(space: Spec, **overrides: Any) -> Supernet:
    """The supernet of ``space`` (keyword arguments override its parameters, e.g. ``C=16, layers=8``)."""
    spec = (Spec(space.document, {**space.overrides, **overrides}, space.assignment, space.variant) if overrides
            else space)
    spec.graph  # noqa: B018 (the default member must type-check before anything is built)
    return Builder(spec, find_sites(spec)).build()


class Builder:
    """Turns a :class:`SiteMap` into a :class:`Supernet` (one use)."""

    def __init__(self, spec: Spec, sitemap: SiteMap) -> None:
        self.spec = spec
        self.map = sitemap
        self.control = Control()
        self.base = sitemap.base
        self.order = {path: i for i, path in enumerate(self.base.nodes)}
        self.where = Location(spec.document.file)

    def build(self) -> Supernet:
        nodes, outputs = self.top_nodes()
        groups = self.groups(nodes, outputs)
        relaxed = {g: found for g in groups if (found := self.input_choice(g, nodes)) is not None}
        absorbed = {v.node for g in relaxed for v in nodes[g].inputs}
        in_labels = {c.label for c, _ in relaxed.values()} | {x for c, _ in relaxed.values() for x in c.op_labels}
        for path, site in self.map.sites.items():
            if path not in absorbed and in_labels & set(site.labels):
                raise SpecError("an input choice is relaxed in some places and not in others", location=self.where,
                                node_path=path, expected="every site of an input choice summed by one node",
                                found=f"{path} decided by {', '.join(site.labels)}")
        grouped = {v.node for g in groups for v in nodes[g].inputs}
        keys = self.plain_keys(in_labels, grouped)
        inputs = {c.label: c for c, _ in relaxed.values()}
        for choice in inputs.values():
            keys.update(self.edge_keys(choice))
        ops = {path: self.mixed_op(site, keys) for path, site in self.map.sites.items() if path not in absorbed}
        modules: dict[str, nn.Module] = {path: op for path, op in ops.items() if path not in grouped}
        beta_keys: dict[str, int] = {}
        input_nodes: dict[str, tuple[MixedNode, str]] = {}
        for g in groups:
            members = [v.node for v in nodes[g].inputs]
            if g in relaxed:
                choice, sources = relaxed[g]
                edges = [self.edge_op(members, choice, j, sources[j], keys) for j in range(choice.edges)]
                node = MixedNode(self.control, edges, [[j] for j in range(choice.edges)], choice.label, members)
                input_nodes[g] = (node, choice.label)
                beta_keys[choice.label] = choice.edges
            else:
                sources = unique(v for m in members for v in nodes[m].inputs)
                routes = [[sources.index(v) for v in nodes[m].inputs] for m in members]
                beta = "+".join(self.map.sites[m].labels[0] for m in members)
                node = MixedNode(self.control, [ops[m] for m in members], routes, beta, members)
                beta_keys[beta] = len(members)
            modules[g] = node
            nodes[g] = replace(nodes[g], op="mixed", inputs=list(sources))
            for m in members:
                del nodes[m]
        body = build_graph_module(self.ordered(nodes, outputs), given=modules)
        return Supernet(self.spec, self.map, body, self.control, keys, inputs, beta_keys, ops, input_nodes)

    # -- the graph around the sites ----------------------------------------------------------------------
    def top_nodes(self) -> tuple[dict[str, Node], dict[str, Value]]:
        """The default member's nodes outside every site, marks removed, plus one node per site."""
        nodes: dict[str, Node] = {}
        sites = self.map.sites
        for node in self.base:
            owner = owning_site(node.path, self.map.sites)
            if owner is not None:
                if owner not in nodes:
                    site = sites[owner]
                    if len(site.outputs) != 1:
                        raise SpecError("a choice changes a block with several outputs", location=node.location,
                                        node_path=owner, expected="choices acting on single-output blocks or ops",
                                        found=f"{len(site.outputs)} outputs")
                    sources = unique(s for c in site.candidates for s in c.sources)
                    nodes[owner] = Node(owner, "mixed", {}, sources, node.location, outputs=list(site.outputs))
                continue
            if mark_owner(node.path) is not None:
                continue
            nodes[node.path] = replace(node, inputs=[self.map.top_value(v, self.base) for v in node.inputs])
        return nodes, {k: self.map.top_value(v, self.base) for k, v in self.base.outputs.items()}

    def ordered(self, nodes: dict[str, Node], outputs: dict[str, Value]) -> Graph:
        """The supernet's IR graph in a topological order that keeps the default member's order (a site
        stands where its first output mark stood)."""
        g = nx.DiGraph()
        g.add_nodes_from(nodes)
        for node in nodes.values():
            g.add_edges_from((v.node, node.path) for v in node.inputs if v.node in nodes)
        order = nx.lexicographical_topological_sort(
            g, key=lambda p: self.order.get(p, self.order.get(f"{p}{BOUNDARY}0", 0)))
        return Graph(f"{self.spec.name}_supernet", dict(self.base.inputs), {p: nodes[p] for p in order}, outputs,
                     meta=dict(self.base.meta))

    # -- summing nodes ------------------------------------------------------------------------------------
    def groups(self, nodes: dict[str, Node], outputs: dict[str, Value]) -> list[str]:
        """``add`` nodes whose inputs are all single-output sites used nowhere else: DARTS's intermediate
        nodes, which sum one op per incoming edge."""
        uses: dict[str, int] = {}
        for node in nodes.values():
            for v in node.inputs:
                uses[v.node] = uses.get(v.node, 0) + 1
        for v in outputs.values():
            uses[v.node] = uses.get(v.node, 0) + 1
        found = []
        for node in nodes.values():
            members = [v.node for v in node.inputs]
            if (node.op == "add" and len(members) >= 2 and len(set(members)) == len(members)
                    and all(m in self.map.sites and uses[m] == 1 for m in members)):
                found.append(node.path)
        return found

    def input_choice(self, group: str, nodes: dict[str, Node]) -> tuple[InputChoice, list[Value]] | None:
        """The relaxed input choice of a summing node and its candidate predecessors, or None when its
        sites do not form one: every site decided by one shared choice that wires it to a predecessor and
        one op choice of its own, all op choices with the same options."""
        sites = [self.map.sites[v.node] for v in nodes[group].inputs]
        common = set(sites[0].labels).intersection(*(s.labels for s in sites[1:]))
        if len(common) != 1 or any(len(s.labels) != 2 for s in sites):
            return None
        label = common.pop()
        op_labels = tuple(next(x for x in s.labels if x != label) for s in sites)
        if len(set(op_labels)) != len(op_labels) or any(
                self.map.options[x] != self.map.options[op_labels[0]] for x in op_labels):
            return None
        predecessors: list[Value] = []
        wiring = []
        for o in range(len(self.map.options[label])):
            wired = []
            for position, site in enumerate(sites):
                source = self.wired_source(site, label, o)
                if source is None:
                    return None
                if source not in predecessors:
                    predecessors.append(source)
                wired.append((position, predecessors.index(source)))
            wiring.append(tuple(wired))
        return InputChoice(label, op_labels, len(predecessors), tuple(wiring)), predecessors

    def wired_source(self, site: Site, label: str, option: int) -> Value | None:
        """The one value a site takes when ``label`` is at ``option``, whatever the site's op (None when
        the site takes several values or its op changes which)."""
        pos = site.labels.index(label)
        sources = {site.candidates[c].sources for combo, c in site.combos.items() if combo[pos] == option}
        if len(sources) != 1:
            return None
        (only,) = sources
        return only[0] if len(only) == 1 else None

    # -- architecture keys ---------------------------------------------------------------------------------
    def plain_keys(self, in_labels: set[str], grouped: set[str]) -> dict[str, ArchKey]:
        """One key per choice outside relaxed input choices; the zero op joins a choice whose sites are
        all single-choice, at least one summed by a node, and none already offering a zero op."""
        keys: dict[str, ArchKey] = {}
        for choice in self.map.choices:
            label = choice.label
            if label in in_labels:
                continue
            sites = [s for s in self.map.sites.values() if label in s.labels]
            zero = (bool(sites) and all(len(s.labels) == 1 for s in sites) and any(s.path in grouped for s in sites)
                    and not any(c.is_zero for s in sites for c in s.candidates))
            names = tuple(option_name(v, k) for k, v in enumerate(self.map.options[label]))
            keys[label] = ArchKey(label, names + ((ZERO,) if zero else ()), zero)
        return keys

    def edge_keys(self, choice: InputChoice) -> dict[str, ArchKey]:
        ops = self.map.options[choice.op_labels[0]]
        sites = [s for s in self.map.sites.values() if choice.label in s.labels]
        zero = not any(c.is_zero for s in sites for c in s.candidates)
        names = tuple(option_name(v, k) for k, v in enumerate(ops)) + ((ZERO,) if zero else ())
        return {f"{choice.label}@{j}": ArchKey(f"{choice.label}@{j}", names, zero) for j in range(choice.edges)}

    # -- modules --------------------------------------------------------------------------------------------
    def mixed_op(self, site: Site, keys: dict[str, ArchKey]) -> MixedOp:
        """The mixed op of a site decided by plain choices."""
        sources = unique(s for c in site.candidates for s in c.sources)
        names = candidate_names(site, self.map.options)
        modules: dict[str, nn.Module | None] = {n: self.candidate_module(c) for n, c in zip(names, site.candidates)}
        routes = [[sources.index(s) for s in c.sources] for c in site.candidates]
        combos = [list(combo) for combo in site.combos]
        targets = list(site.combos.values())
        key = keys[site.labels[0]]
        if key.zero:
            modules[ZERO] = None
            routes.append([])
            combos.append([key.size - 1])
            targets.append(len(names))
        return MixedOp(self.control, modules, routes, list(site.labels), combos, targets, site.outputs[0],
                       self.partial_ok(site, sources))

    def edge_op(self, members: list[str], choice: InputChoice, j: int, source: Value,
                keys: dict[str, ArchKey]) -> MixedOp:
        """The mixed op on edge ``j`` of a relaxed input choice: for each op option, the candidate a site
        has when the choice wires it to predecessor ``j``."""
        key = keys[f"{choice.label}@{j}"]
        position, option = next((p, o) for o, wired in enumerate(choice.wiring) for p, e in wired if e == j)
        site = self.map.sites[members[position]]
        in_first = site.labels.index(choice.label) == 0
        modules: dict[str, nn.Module | None] = {}
        for op_index in range(len(self.map.options[choice.op_labels[0]])):
            combo = (option, op_index) if in_first else (op_index, option)
            modules[key.options[op_index]] = self.candidate_module(site.candidates[site.combos[combo]])
        if key.zero:
            modules[ZERO] = None
        size = key.size
        return MixedOp(self.control, modules, [[0]] * size, [key.name], [[k] for k in range(size)], list(range(size)),
                       site.outputs[0], self.partial_ok(site, [source]))

    def candidate_module(self, candidate: Candidate) -> nn.Module:
        """The candidate built by the compiler, its convs and norms able to run narrower (PC-DARTS)."""
        module = build_graph_module(candidate.graph)
        make_elastic(module)
        return module

    def partial_ok(self, site: Site, sources: list[Value]) -> bool:
        """Whether PC-DARTS's partial channels apply: one image input whose channels the site keeps."""
        if len(sources) != 1:
            return False
        x = self.type_of(sources[0])
        y = site.outputs[0]
        return x.rank == 4 and y.rank == 4 and x.shape[1] == y.shape[1]

    def type_of(self, value: Value) -> TensorType:
        if value.node in self.map.sites:
            return self.map.sites[value.node].outputs[value.index]
        return self.base.type_of(value)


def candidate_names(site: Site, options: dict[str, list[Any]]) -> list[str]:
    """Module names of a site's candidates: the options (joined with ``__`` for several choices) of the
    first combination giving each."""
    names: list[str | None] = [None] * len(site.candidates)
    for combo, c in site.combos.items():
        if names[c] is None:
            names[c] = "__".join(option_name(options[label][i], i) for label, i in zip(site.labels, combo))
    return [n or f"candidate{k}" for k, n in enumerate(names)]


def unique(items: Any) -> list[Any]:
    """Items in first-seen order, without repeats."""
    out: list[Any] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out
