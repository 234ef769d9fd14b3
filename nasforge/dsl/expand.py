"""Expansion: a spec document plus parameter overrides and choice decisions becomes an IR graph.

This is where the language's meaning lives:

* parameters (with caller overrides) and ``${...}`` expressions are evaluated,
* ``block`` nodes are inlined under their node path, ``repeat`` stacks instances ``id.0``, ``id.1``...,
  with the index variable (``as:``, default ``i``) visible to expressions,
* a node without ``in`` takes the previous node; ``$name`` names a block input; ``id:N`` picks output N,
* ``if:`` skips a node (its output is then its first input),
* choice points (``{choice: ...}``, ``{int: ...}``, ``{float: ...}``, ``{op_choice: ...}``) take the value
  assigned to their label, or their default, and are recorded in the IR.

Every error is located (file, line, column) and names the node path it arose at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import networkx as nx
from torch import fx

from nasforge.compiler.ir import ALL_OUTPUTS, ChoicePoint, Graph, Node, Value
from nasforge.dsl.document import NAME_RE, REQUIRED_ARG, BlockDef, Document, check_name
from nasforge.dsl.expr import ExprError, is_expression, parse_expression
from nasforge.dsl.yaml_loader import LocDict, LocList, shown
from nasforge.errors import Location, SpecError, did_you_mean
from nasforge.ops.registry import all_ops, get_op
from nasforge.types import DTYPES, Sym, TensorType

NODE_KEYS = ("id", "op", "block", "in", "repeat", "as", "if", "shape", "tie", "doc")
CHOICE_KINDS = ("choice", "int", "float", "op_choice")
CHOICE_OPTIONS = ("log", "step", "default")
ID_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
INDEX_RE = re.compile(r"[0-9]{1,9}")
"""An output index in ``id:N`` (ASCII digits: ``str.isdigit`` also accepts other scripts' digits)."""
MAX_BLOCK_DEPTH = 64
MAX_NODES = 200_000
BOUNDARY = "/out"
"""Infix of the marks a boundary-marking expansion puts after a block instance: ``PATH/out0`` (no valid id
contains ``/``, so a mark never clashes with a node)."""
RESERVED_IDS = frozenset(n for n in dir(fx.GraphModule) if not n.startswith("__")) | {"code", "graph", "training", "meta"}


def is_choice(value: Any) -> bool:
    """A mapping with exactly one choice-kind key (plus options like ``log``) is a choice point."""
    return (isinstance(value, dict) and sum(k in CHOICE_KINDS for k in value) == 1
            and all(k in CHOICE_KINDS or k in CHOICE_OPTIONS for k in value))


@dataclass
class Scope:
    """Name resolution inside one node list: the graph body or one block instance."""

    prefix: str
    env: dict[str, Any]
    inputs: dict[str, list[Value]]
    names: dict[str, list[Value]] = field(default_factory=dict)
    blocks: tuple[str, ...] = ()
    block_root: str | None = None
    """Path of the outermost block instance this scope lies in (what ``show`` folds a node into)."""

    def path(self, node_id: str) -> str:
        return f"{self.prefix}.{node_id}" if self.prefix else node_id


class Expander:
    """Turns one :class:`Document` into a :class:`Graph` (types not yet inferred)."""

    def __init__(self, doc: Document, overrides: Mapping[str, Any] | None = None,
                 assignment: Mapping[str, Any] | None = None, strict: bool = True,
                 boundaries: bool = False) -> None:
        self.doc = doc
        self.overrides = dict(overrides or {})
        self.assignment = dict(assignment or {})
        self.strict = strict
        """Whether a decision for a label that no choice point has is an error (a sampler deciding a
        conditional space may hold decisions for choices that the other decisions removed)."""
        self.boundaries = boundaries
        """Whether each block instance hands its outputs on through ``identity`` nodes at ``PATH/outK``
        (:data:`BOUNDARY`). The network is the same; the marks let the one-shot supernet builder see where
        a block instance begins and ends, even one whose output is its own input (a skip connection), by
        comparing the expansions of a space's members (``nasforge.search.oneshot.sites``)."""
        self.nodes: dict[str, Node] = {}
        self.choices: list[ChoicePoint] = []
        self.params_env: dict[str, Any] = {}
        """The evaluated spec parameters: what every block body sees besides its own arguments."""

    # -- entry point --------------------------------------------------------------------------------
    def expand(self) -> Graph:
        params = self.evaluate_params()
        self.params_env = self.evaluate_let(self.doc.raw.get("let"), self.doc.raw.loc_of("let"), params, "let")
        inputs, input_locs = self.evaluate_inputs(self.params_env)
        graph_entries = self.doc.section("graph", list, None)
        if not graph_entries:
            raise SpecError("the spec has no graph", location=self.doc.raw.loc,
                            expected="a non-empty 'graph:' list of nodes", found="nothing")
        scope = Scope("", self.params_env, {name: [Value(name)] for name in inputs})
        last = self.expand_nodes(graph_entries, scope)
        self.check_paths_do_not_nest()
        outputs = self.evaluate_outputs(scope, last)
        self.check_assignment_used()
        meta = {k: self.doc.raw[k] for k in ("paper", "doc") if k in self.doc.raw}
        meta["params"] = params
        graph = Graph(self.doc.name, inputs, self.nodes, outputs, self.choices, meta, input_locs,
                      self.doc.raw.loc_of("outputs"))
        graph.warnings.extend(unused_warnings(graph))
        return graph

    def check_paths_do_not_nest(self) -> None:
        """The built module keeps each op's submodule at its path: ``a`` and ``a.b`` cannot both be ops."""
        for path, node in self.nodes.items():
            parts = path.split(".")
            for k in range(1, len(parts)):
                outer = ".".join(parts[:k])
                if outer in self.nodes:
                    raise SpecError(f"node path {path!r} lies inside node {outer!r}", location=node.location,
                                    node_path=path, expected="op nodes whose paths do not nest",
                                    found=f"{outer!r} (line {self.nodes[outer].location.line}) and {path!r}",
                                    hint="rename one of them; dots in ids spell paths")

    # -- parameters, inputs, outputs ------------------------------------------------------------------
    def evaluate_params(self) -> dict[str, Any]:
        raw = self.doc.section("params", dict, {})
        for key in self.overrides:
            if key not in raw:
                where = self.doc.raw.key_locs.get("params", self.doc.raw.loc)
                raise SpecError(f"cannot override unknown parameter {key!r}", location=where,
                                node_path="params",
                                expected="one of " + (", ".join(map(str, raw)) or "(no parameters)"),
                                found=shown(key), hint=did_you_mean(key, [str(k) for k in raw]))
        env: dict[str, Any] = {}
        for key, value in raw.items():
            check_name(key, "parameter", raw.key_locs[key])
            source = self.overrides.get(key, value)
            loc = raw.loc_of(key) if key not in self.overrides else Location("--set " + key)
            env[key] = self.value(source, env, f"params.{key}", loc, f"params.{key}")
        return env

    def evaluate_let(self, raw: Any, loc: Location, env: dict[str, Any], label: str) -> dict[str, Any]:
        """``let:`` names derived values (in order, each seeing the earlier ones); unlike ``params``
        they cannot be overridden, and they may not shadow a parameter or argument."""
        if raw is None:
            return env
        if not isinstance(raw, dict):
            raise SpecError("'let' must be a mapping of names to values", location=loc,
                            expected="{name: value or ${expression}}", found=shown(raw))
        env = dict(env)
        for key, value in raw.items():
            check_name(key, "let", raw.key_locs[key])
            if key in env:
                raise SpecError(f"let {key!r} shadows a parameter or argument of the same name",
                                location=raw.key_locs[key], node_path=label, expected="a new name",
                                found=shown(key))
            env[key] = self.value(value, env, f"{label}.{key}", raw.loc_of(key), label)
        return env

    def evaluate_inputs(self, env: dict[str, Any]) -> tuple[dict[str, TensorType], dict[str, Location]]:
        raw = self.doc.section("inputs", dict, None)
        if not raw:
            raise SpecError("the spec declares no inputs", location=self.doc.raw.loc,
                            expected="an 'inputs:' mapping such as {image: [B, 3, 224, 224]}", found="nothing")
        types, locs = {}, {}
        for name, decl in raw.items():
            loc = raw.loc_of(name)
            check_name(name, "input", raw.key_locs[name])
            dtype = "float32"
            shape = decl
            if isinstance(decl, dict):
                extra = set(decl) - {"shape", "dtype"}
                if extra or "shape" not in decl:
                    raise SpecError(f"input {name!r} has the wrong form", location=loc, node_path=f"inputs.{name}",
                                    expected="a shape list or {shape: [...], dtype: NAME}", found=shown(dict(decl)))
                shape, dtype = decl["shape"], decl.get("dtype", "float32")
                if not isinstance(dtype, str) or dtype not in DTYPES:
                    raise SpecError(f"input {name!r} has an unknown dtype", location=decl.loc_of("dtype"),
                                    node_path=f"inputs.{name}",
                                    expected="one of " + ", ".join(DTYPES), found=shown(dtype),
                                    hint=did_you_mean(str(dtype), DTYPES))
            if not isinstance(shape, list):
                raise SpecError(f"input {name!r} needs a shape", location=loc, node_path=f"inputs.{name}",
                                expected="a list of dimensions, e.g. [B, 3, 224, 224]", found=shown(shape))
            dims = []
            for i, dim in enumerate(shape):
                dim_loc = shape.loc_of(i) if isinstance(shape, LocList) else loc
                if isinstance(dim, str) and NAME_RE.match(dim) and not is_expression(dim):
                    dims.append(Sym.of(dim))
                    continue
                value = self.value(dim, env, f"inputs.{name}.{i}", dim_loc, f"inputs.{name}")
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise SpecError(f"dimension {i} of input {name!r} is not a positive integer",
                                    location=dim_loc, node_path=f"inputs.{name}",
                                    expected="a positive integer or a symbol such as B", found=shown(value))
                dims.append(value)
            types[name] = TensorType(tuple(dims), dtype)
            locs[name] = loc
        return types, locs

    def evaluate_outputs(self, scope: Scope, last: list[Value]) -> dict[str, Value]:
        """The ``outputs`` section (default: the last node's outputs); a network must have one."""
        raw = self.doc.raw.get("outputs")
        loc = self.doc.raw.loc_of("outputs")
        outputs: dict[str, Value] = {}
        if raw is None:
            outputs = {("output" if len(last) == 1 else f"output{i}"): v for i, v in enumerate(last)}
            loc = self.doc.raw.loc_of("graph")
        else:
            for name, ref, ref_loc in self.output_refs(raw, loc):
                if isinstance(ref, str) and is_expression(ref):  # a conditional output: null leaves it out
                    ref = self.value(ref, scope.env, f"outputs.{name}", ref_loc, "outputs")
                    if ref is None:
                        continue
                values = self.resolve_ref(ref, scope, ref_loc, "outputs")
                for k, v in enumerate(values):
                    outputs[name if len(values) == 1 else f"{name}_{k}"] = v
        if not outputs:
            raise SpecError("the network has no outputs", location=loc, node_path="outputs",
                            expected="at least one output",
                            found="nothing (an empty list, or a last node that is skipped without inputs)")
        return outputs

    @staticmethod
    def output_refs(raw: Any, loc: Location) -> list[tuple[str, Any, Location]]:
        """``outputs`` as (name, reference, location): an id, a list of ids, or a mapping name: id."""
        if isinstance(raw, str):
            return [(raw.replace(".", "_").replace(":", "_"), raw, loc)]
        if isinstance(raw, dict):
            return [(check_name(k, "output", raw.key_locs[k] if isinstance(raw, LocDict) else loc), v,
                     raw.loc_of(k) if isinstance(raw, LocDict) else loc) for k, v in raw.items()]
        if isinstance(raw, list):
            return [(str(ref).replace(".", "_").replace(":", "_"), ref,
                     raw.loc_of(i) if isinstance(raw, LocList) else loc) for i, ref in enumerate(raw)]
        raise SpecError("'outputs' has the wrong form", location=loc, node_path="outputs",
                        expected="a node id, a list of ids or a mapping name: id", found=shown(raw))

    # -- values ---------------------------------------------------------------------------------------
    def value(self, raw: Any, env: Mapping[str, Any], label: str, loc: Location, path: str) -> Any:
        """Evaluate a spec value: choice points, expressions, lists of them, literals."""
        if is_choice(raw):
            return self.value(self.choose(raw, label, loc, path), env, label, loc, path)
        if isinstance(raw, dict) and any(k in CHOICE_KINDS for k in raw):
            raise SpecError("malformed choice point", location=loc, node_path=path,
                            expected="one of {choice: [...]}, {int: [lo, hi]}, {float: [lo, hi], log: true}, "
                                     "{op_choice: [...]}",
                            found=shown(dict(raw)))
        if isinstance(raw, str) and is_expression(raw):
            try:
                return parse_expression(raw).evaluate(env)
            except ExprError as err:
                column = (loc.column or 1) + err.offset if loc.column else None
                err.location = Location(loc.file, loc.line, column)
                err.node_path = err.node_path or path
                raise
        if isinstance(raw, list):
            locs = raw.item_locs if isinstance(raw, LocList) else []
            return [self.value(item, env, f"{label}.{i}", locs[i] if i < len(locs) else loc, path)
                    for i, item in enumerate(raw)]
        if isinstance(raw, dict):
            return {k: self.value(v, env, f"{label}.{k}", raw.loc_of(k) if isinstance(raw, LocDict) else loc,
                                  path) for k, v in raw.items()}
        return raw

    def choose(self, raw: LocDict, label: str, loc: Location, path: str) -> Any:
        """Record a choice point and return the raw option assigned to ``label`` (or the default)."""
        kind = next(k for k in raw if k in CHOICE_KINDS)
        options = raw[kind]
        if not isinstance(options, list) or not options:
            raise SpecError(f"{kind} needs a non-empty list", location=loc, node_path=path,
                            expected=f"{{{kind}: [...]}}", found=shown(options))
        if kind in ("int", "float"):
            if len(options) != 2 or not all(isinstance(o, (int, float)) and not isinstance(o, bool)
                                            for o in options) or options[0] > options[1]:
                raise SpecError(f"{kind} range must be [lo, hi] with lo <= hi", location=loc, node_path=path,
                                expected=f"{{{kind}: [lo, hi]}}", found=shown(list(options)))
            if kind == "int" and not all(isinstance(o, int) for o in options):
                raise SpecError("int range bounds must be integers", location=loc, node_path=path,
                                expected="{int: [lo, hi]}", found=shown(list(options)))
            if raw.get("log") is True and options[0] <= 0:
                raise SpecError("a log-scale range needs a positive lower bound", location=loc, node_path=path,
                                expected=f"{{{kind}: [lo, hi], log: true}} with lo > 0", found=shown(list(options)))
        elif any(is_choice(o) for o in options):
            raise SpecError("a choice option cannot itself be a choice point", location=loc, node_path=path,
                            expected="plain options (values, ops or node fragments)", found=shown(list(options)))
        if "log" in raw and not isinstance(raw["log"], bool):
            raise SpecError("'log' of a choice point must be true or false", location=loc, node_path=path,
                            expected="log: true or log: false", found=shown(raw["log"]))
        step = raw.get("step")
        if "step" in raw and not (kind in ("int", "float") and isinstance(step, (int, float))
                                  and not isinstance(step, bool) and step > 0):
            raise SpecError("'step' of a choice point must be a positive number", location=loc, node_path=path,
                            expected="step: N > 0 on an {int: ...} or {float: ...} range", found=shown(step))
        default = raw.get("default", options[0])
        value = self.assignment.pop(label, default) if label in self.assignment else default
        valid = (value in options) if kind in ("choice", "op_choice") else (
            isinstance(value, (int, float)) and not isinstance(value, bool) and options[0] <= value <= options[1]
            and (kind == "float" or isinstance(value, int)))
        if not valid:
            raise SpecError(f"value for choice {label!r} is not an option", location=loc, node_path=path,
                            expected=(f"one of {list(options)!r}" if kind in ("choice", "op_choice")
                                      else f"a{'n integer' if kind == 'int' else ' number'} in "
                                           f"[{options[0]}, {options[1]}]"),
                            found=shown(value))
        self.choices.append(ChoicePoint(label, kind, tuple(_plain(o) for o in options), _plain(value), loc,
                                        bool(raw.get("log", False)), raw.get("step")))
        return value

    def check_assignment_used(self) -> None:
        if self.assignment and self.strict:
            known = [c.label for c in self.choices]
            label = next(iter(self.assignment))
            raise SpecError(f"no choice point is labelled {label!r}", location=self.doc.raw.loc,
                            expected="a label from the space's choice points", found=shown(label),
                            hint=did_you_mean(label, known))

    # -- nodes ----------------------------------------------------------------------------------------
    def expand_nodes(self, entries: list[Any], scope: Scope) -> list[Value]:
        """Expand a node list in dependency order; return the outputs of its last entry."""
        parsed: list[tuple[str, LocDict, list[tuple[Any, Location]]]] = []
        for i, entry in enumerate(entries):
            parsed.append(self.parse_entry(entry, i, entries, scope, parsed[-1][0] if parsed else None))
        ids: dict[str, int] = {}
        for i, (node_id, entry, _) in enumerate(parsed):
            if node_id in ids or node_id in scope.inputs:
                first = parsed[ids[node_id]][1].loc if node_id in ids else None
                raise SpecError(f"duplicate id {node_id!r}", location=entry.loc_of("id"),
                                node_path=scope.path(node_id), expected="unique ids within a node list",
                                found=f"{node_id!r} again" + (f" (first at line {first.line})" if first else
                                                              " (also an input name)"))
            ids[node_id] = i
        order = self.dependency_order(parsed, ids, scope)
        for i in order:
            node_id, entry, refs = parsed[i]
            scope.names[node_id] = self.expand_entry(node_id, entry, refs, scope)
        return scope.names[parsed[-1][0]]

    def parse_entry(self, entry: Any, index: int, entries: list[Any], scope: Scope, previous: str | None
                    ) -> tuple[str, LocDict, list[tuple[Any, Location]]]:
        """Check a node entry's keys; return its id, the entry and its raw input references.

        Without ``in``, a node takes the previous entry (``previous``), or the scope's first input.
        """
        loc = entries.loc_of(index) if isinstance(entries, LocList) else Location()
        if not isinstance(entry, dict):
            raise SpecError("a node must be a mapping", location=loc, node_path=scope.prefix or None,
                            expected="{id: NAME, op: OP, ...}", found=shown(entry))
        has_op, has_block = "op" in entry, "block" in entry
        if has_op == has_block:
            raise SpecError("a node needs exactly one of 'op' or 'block'", location=entry.loc,
                            node_path=scope.path(str(entry.get("id", f"#{index}"))),
                            expected="op: NAME or block: NAME",
                            found="both" if has_op else "neither (keys: " + ", ".join(map(str, entry)) + ")")
        kind = entry["op"] if has_op else entry["block"]
        node_id = entry.get("id")
        if node_id is None:
            base = kind if isinstance(kind, str) and NAME_RE.match(kind) else "node"
            node_id = f"{base}{index}"
        elif is_template(node_id):
            pass  # an id template (``layer${s + 1}``): each instance's id is evaluated in expand_entry
        elif not isinstance(node_id, str) or not ID_RE.match(node_id):
            raise SpecError("invalid node id", location=entry.loc_of("id"), node_path=scope.prefix or None,
                            expected="a name such as conv1 (dots only to spell a full path)", found=shown(node_id))
        if set(node_id.split(".")) & RESERVED_IDS:
            raise SpecError("node id clashes with a name the built torch module uses",
                            location=entry.loc_of("id"), node_path=scope.path(node_id),
                            expected="an id that is not a torch.nn.Module or GraphModule attribute",
                            found=shown(node_id), hint=f"rename it, e.g. {node_id.replace('.', '_')}_")
        if "in" in entry:
            raw_in = entry["in"]
            in_loc = entry.loc_of("in")
            if is_choice(raw_in) or (isinstance(raw_in, str) and raw_in.startswith("${")):
                value = self.value(raw_in, scope.env, scope.path(node_id) + ".in", in_loc, scope.path(node_id))
                raw_in = value
            items = raw_in if isinstance(raw_in, list) else [raw_in]
            item_locs = [raw_in.loc_of(k) if isinstance(raw_in, LocList) else in_loc for k in range(len(items))]
            refs = list(zip(items, item_locs))
        elif previous is not None:
            refs = [(previous, entry.loc)]
        else:
            refs = [(_SCOPE_INPUT, entry.loc)]
        return node_id, entry, refs

    def dependency_order(self, parsed: list, ids: dict[str, int], scope: Scope) -> list[int]:
        """Topological order of a node list, preferring written order; a cycle is a located error."""
        g = nx.DiGraph()
        g.add_nodes_from(range(len(parsed)))
        for i, (_, _, refs) in enumerate(parsed):
            for ref, ref_loc in refs:
                name = self.ref_name(ref)
                if name in ids and not (isinstance(ref, str) and ref.startswith("$")):
                    g.add_edge(ids[name], i, loc=ref_loc)
        if all(a < b for a, b in g.edges):  # written in dependency order already: the common case, and cheap
            return list(range(len(parsed)))
        try:
            return list(nx.lexicographical_topological_sort(g))
        except nx.NetworkXUnfeasible:
            cycle = nx.find_cycle(g)
            # blame the reference to a later node: the one edge of the cycle that points forward
            start = next((k for k, (a, b) in enumerate(cycle) if a > b), 0)
            cycle = cycle[start:] + cycle[:start]
            src, dst = cycle[0]
            names = [parsed[a][0] for a, _ in cycle] + [parsed[src][0]]
            raise SpecError("the graph has a cycle", location=g.edges[src, dst]["loc"],
                            node_path=scope.path(parsed[dst][0]),
                            expected="inputs that refer only to earlier results (a DAG)",
                            found=" -> ".join(names),
                            hint=f"{parsed[dst][0]!r} takes its own output" if src == dst else
                            f"{parsed[dst][0]!r} takes {parsed[src][0]!r}, which depends on {parsed[dst][0]!r}"
                            ) from None

    @staticmethod
    def ref_name(ref: Any) -> str | None:
        if not isinstance(ref, str):
            return None
        name = ref[1:] if ref.startswith("$") else ref
        return name.split(":", 1)[0]

    def resolve_ref(self, ref: Any, scope: Scope, loc: Location, path: str) -> list[Value]:
        """An input reference (``id``, ``id:N``, ``$input``, a graph input name) to its values."""
        if ref is _SCOPE_INPUT:
            if not scope.inputs:
                raise SpecError("the first node has no input", location=loc, node_path=path)
            return next(iter(scope.inputs.values()))
        if not isinstance(ref, str) or not ref:
            raise SpecError("an input reference must be a node id", location=loc, node_path=path,
                            expected="a node id, id:N, or $input", found=shown(ref))
        name, _, index = (ref[1:] if ref.startswith("$") else ref).partition(":")
        if ref.startswith("$"):
            values = scope.inputs.get(name)
        else:
            values = scope.names.get(name, scope.inputs.get(name))
        if values is None:
            known = [*scope.inputs] if ref.startswith("$") else [*scope.names, *scope.inputs]
            what = "block input" if ref.startswith("$") else "node or input"
            raise SpecError(f"reference to undefined {what} {name!r}", location=loc, node_path=path,
                            expected="one of " + (", ".join(known) or "(nothing defined yet)"),
                            found=shown(ref), hint=did_you_mean(name, known))
        if index:
            valid = INDEX_RE.fullmatch(index) is not None
            if len(values) == 1 and values[0].index == ALL_OUTPUTS and valid:
                return [Value(values[0].node, int(index))]  # checked against the real count by inference
            if not valid or int(index) >= len(values):
                raise SpecError(f"{name!r} has no output {index!r}", location=loc, node_path=path,
                                expected=f"an output index in 0..{len(values) - 1}", found=shown(ref))
            return [values[int(index)]]
        return values

    def expand_entry(self, node_id: str, entry: LocDict, refs: list, scope: Scope) -> list[Value]:
        path = scope.path(node_id)
        for key in entry:
            if key not in NODE_KEYS and not isinstance(key, str):
                raise SpecError("attribute names must be strings", location=_key_loc(entry, key), node_path=path,
                                expected="a name", found=shown(key))
        inputs = [v for ref, loc in refs for v in self.resolve_ref(ref, scope, loc, path)]
        if "if" in entry:
            cond = self.value(entry["if"], scope.env, path + ".if", entry.loc_of("if"), path)
            if not isinstance(cond, bool):
                raise SpecError("'if' must be true or false", location=entry.loc_of("if"), node_path=path,
                                expected="a boolean expression", found=shown(cond))
            if not cond:
                return inputs[:1]
        if "repeat" not in entry:
            return self.expand_instance(entry, path, inputs, scope.env, scope)
        if "as" in entry:
            check_name(entry["as"], "repeat index", entry.loc_of("as"))
        count = self.value(entry["repeat"], scope.env, path + ".repeat", entry.loc_of("repeat"), path)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise SpecError("repeat count must be a positive integer", location=entry.loc_of("repeat"),
                            node_path=path, expected="an integer >= 1", found=shown(count))
        if count > MAX_NODES:
            raise SpecError("repeat count is too large", location=entry.loc_of("repeat"), node_path=path,
                            expected=f"at most {MAX_NODES:,}", found=shown(count))
        var = entry.get("as", "i")
        values = inputs
        for k in range(count):
            values = self.expand_instance(entry, f"{path}.{k}", values, {**scope.env, var: k}, scope)
        return values

    def expand_instance(self, entry: LocDict, path: str, inputs: list[Value], env: dict[str, Any],
                        scope: Scope) -> list[Value]:
        """Expand one instance at ``path``, or, for an id template (``id: layer${s + 1}``), at the
        evaluated id: instances then are siblings (layer1, layer2, ...) that later nodes can name."""
        raw = entry.get("id")
        if not is_template(raw):
            return self.expand_one(entry, path, inputs, env, scope)
        node_id = self.instance_id(raw, entry, env, scope, path)
        scope.names[node_id] = values = self.expand_one(entry, scope.path(node_id), inputs, env, scope)
        return values

    def instance_id(self, raw: str, entry: LocDict, env: dict[str, Any], scope: Scope, path: str) -> str:
        """Evaluate an id template (each ``${...}`` in it); the result must be a fresh, valid id."""
        loc = entry.loc_of("id")
        parts = []
        for piece in re.split(r"(\$\{[^}]*\})", raw):
            if piece.startswith("${"):
                value = self.value(piece, env, path + ".id", loc, scope.prefix or path)
                parts.append(str(value) if isinstance(value, (int, str)) and not isinstance(value, bool)
                             else "\0")
            else:
                parts.append(piece)
        node_id = "".join(parts)
        if not isinstance(node_id, (str, int)) or isinstance(node_id, bool) or not ID_RE.match(str(node_id)):
            raise SpecError("an id template must give a name", location=entry.loc_of("id"),
                            node_path=scope.prefix or None, expected="a name such as layer1",
                            found=shown(node_id))
        node_id = str(node_id)
        if node_id in scope.names or node_id in scope.inputs or set(node_id.split(".")) & RESERVED_IDS:
            raise SpecError(f"id template gives {node_id!r}, which is taken", location=entry.loc_of("id"),
                            node_path=scope.path(node_id), expected="a new id for every instance",
                            found=shown(node_id))
        return node_id

    def expand_one(self, entry: LocDict, path: str, inputs: list[Value], env: dict[str, Any],
                   scope: Scope) -> list[Value]:
        """One instance of a node entry: an op node, or an inlined block."""
        if len(self.nodes) > MAX_NODES:
            raise SpecError("the expanded graph is too large", location=entry.loc, node_path=path,
                            expected=f"at most {MAX_NODES} nodes", found="more")
        key = "op" if "op" in entry else "block"
        target = self.value(entry[key], env, path + "." + key, entry.loc_of(key), path)
        if isinstance(target, dict):  # an op_choice option written as a node fragment
            fragment = target
            target = fragment.get("op") or fragment.get("block")
            attrs_raw = {**{k: v for k, v in entry.items() if k not in NODE_KEYS},
                         **{k: v for k, v in fragment.items() if k not in ("op", "block")}}
        else:
            attrs_raw = {k: v for k, v in entry.items() if k not in NODE_KEYS}
        if not isinstance(target, str):
            raise SpecError(f"'{key}' must name an op or block", location=entry.loc_of(key), node_path=path,
                            expected="a name", found=shown(target))
        if target in self.doc.blocks and (key == "block" or target not in all_ops()):
            outputs = self.expand_block(self.doc.blocks[target], entry, attrs_raw, path, inputs, env, scope)
            return self.boundary(path, outputs, entry.loc) if self.boundaries else outputs
        if key == "block":
            raise SpecError(f"unknown block {target!r}", location=entry.loc_of("block"), node_path=path,
                            expected="one of " + (", ".join(self.doc.blocks) or "(no blocks defined)"),
                            found=shown(target), hint=did_you_mean(target, list(self.doc.blocks)))
        try:
            op = get_op(target)
        except SpecError as err:
            if target not in self.doc.blocks:
                err.hint = did_you_mean(target, [*all_ops(), *self.doc.blocks])
            raise err.with_context(entry.loc_of(key), path) from None
        attrs = {k: self.value(v, env, f"{path}.{k}", _loc(entry, k), path) for k, v in attrs_raw.items()}
        try:
            attrs = op.validate_attrs(attrs)
        except SpecError as err:
            # an unknown attribute is a wrong key; a badly typed one is a wrong value
            where = entry.loc if not err.key else (
                _loc(entry, err.key) if err.key in op.attr_map() else _key_loc(entry, err.key))
            raise err.with_context(where, path) from None
        declared = None
        if "shape" in entry:
            declared = self.declared_shape(entry, env, path)
        ties = self.ties(entry, env, path) if "tie" in entry else {}
        node = Node(path, target, attrs, list(inputs), entry.loc,
                    {k: _loc(entry, k) for k in (*entry, *attrs_raw)}, declared, block=scope.block_root, ties=ties)
        if path in self.nodes or path in self.doc.raw.get("inputs", {}):
            raise SpecError(f"two nodes expand to the same path {path!r}", location=entry.loc, node_path=path,
                            expected="unique node paths", found=f"{path!r} again")
        self.nodes[path] = node
        return [Value(path, ALL_OUTPUTS)]

    def boundary(self, path: str, outputs: list[Value], loc: Location) -> list[Value]:
        """Pass a block instance's outputs through ``identity`` nodes ``PATH/out0``, ``PATH/out1``... (see
        :attr:`boundaries`). An output that stands for every output of a sequence op (``split``) is
        handed on unmarked: its number of tensors is known only after inference."""
        marked = []
        for k, value in enumerate(outputs):
            source = self.nodes.get(value.node)
            if value.index == ALL_OUTPUTS and source is not None and get_op(source.op).returns_sequence:
                marked.append(value)
                continue
            mark = f"{path}{BOUNDARY}{k}"
            self.nodes[mark] = Node(mark, "identity", {}, [value], loc)
            marked.append(Value(mark))
        return marked

    def ties(self, entry: LocDict, env: dict[str, Any], path: str) -> dict[str, str]:
        """``tie: {weight: wte.weight}``: this node's parameter is the same tensor as another node's
        (given by full node path and parameter name); checked once every node is typed."""
        raw = self.value(entry["tie"], env, path + ".tie", entry.loc_of("tie"), path)
        if isinstance(raw, dict):  # a target that evaluates to null leaves that parameter untied
            raw = {k: v for k, v in raw.items() if v is not None}
        if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) and "." in v
                                                for k, v in raw.items()):
            raise SpecError("'tie' maps this node's parameters to other nodes' parameters",
                            location=entry.loc_of("tie"), node_path=path,
                            expected="{PARAM: NODE_PATH.PARAM}, e.g. {weight: wte.weight}", found=shown(raw))
        return dict(raw)

    def declared_shape(self, entry: LocDict, env: dict[str, Any], path: str) -> tuple[Any, ...]:
        raw = entry["shape"]
        if not isinstance(raw, list):
            raise SpecError("'shape' must be a list of dimensions", location=entry.loc_of("shape"),
                            node_path=path, expected="e.g. [B, 64, 56, 56]", found=shown(raw))
        dims = []
        for i, dim in enumerate(raw):
            if isinstance(dim, str) and NAME_RE.match(dim):
                dims.append(Sym.of(dim))
            else:
                dims.append(self.value(dim, env, f"{path}.shape.{i}", raw.loc_of(i), path))
        return tuple(dims)

    def expand_block(self, block: BlockDef, entry: LocDict, attrs_raw: dict[str, Any], path: str,
                     inputs: list[Value], env: dict[str, Any], scope: Scope) -> list[Value]:
        """Inline a block under ``path``: bind arguments and inputs, expand its nodes, return its outputs."""
        use_loc = _loc(entry, "block" if "block" in entry else "op")
        if block.name in scope.blocks:
            chain = " -> ".join((*scope.blocks[scope.blocks.index(block.name):], block.name))
            raise SpecError(f"block {block.name!r} uses itself", location=use_loc, node_path=path,
                            expected="blocks that do not recurse", found=chain)
        if len(scope.blocks) >= MAX_BLOCK_DEPTH:
            raise SpecError("blocks are nested too deeply", location=use_loc, node_path=path,
                            expected=f"at most {MAX_BLOCK_DEPTH} levels of blocks inside blocks",
                            found=" -> ".join((*scope.blocks[:3], "...", block.name)))
        args: dict[str, Any] = {}
        for key, raw in attrs_raw.items():
            if key not in block.args:
                raise SpecError(f"block {block.name!r} has no argument {key!r}", location=_key_loc(entry, key),
                                node_path=path, expected="one of " + (", ".join(block.args) or "(no arguments)"),
                                found=shown(key), hint=did_you_mean(str(key), list(block.args)))
            args[key] = self.value(raw, env, f"{path}.{key}", _loc(entry, key), path)
        for name, default in block.args.items():
            if name not in args:
                if default is REQUIRED_ARG:
                    raise SpecError(f"block {block.name!r} needs argument {name!r}", location=entry.loc,
                                    node_path=path, expected=f"{name}: VALUE", found="nothing")
                args[name] = self.value(default, {**self.params_env, **args},
                                        f"{path}.{name}", block.arg_locs.get(name, block.loc), path)
        if len(inputs) != len(block.inputs):
            raise SpecError(f"block {block.name!r} takes {len(block.inputs)} input(s)",
                            location=_loc(entry, "in") if "in" in entry else entry.loc,
                            node_path=path, expected=f"{len(block.inputs)} input(s): " + ", ".join(block.inputs),
                            found=f"{len(inputs)}", hint=next((
                                f"a reference to every output of {v.node!r} counts as one block input; "
                                f"name them: {v.node}:0, {v.node}:1, ..." for v in inputs if v.index == ALL_OUTPUTS
                                and v.node in self.nodes), None))
        env = self.evaluate_let(block.raw.get("let"), block.raw.loc_of("let"), {**self.params_env, **args},
                                f"{path}.let")
        inner = Scope(path, env,
                      {name: [v] for name, v in zip(block.inputs, inputs)}, blocks=(*scope.blocks, block.name),
                      block_root=scope.block_root or path)
        last = self.expand_nodes(block.nodes, inner)
        if block.outputs is None:
            return last
        refs = block.outputs if isinstance(block.outputs, list) else [block.outputs]
        out_loc = block.raw.loc_of("outputs")
        return [v for ref in refs for v in self.resolve_ref(ref, inner, out_loc, path)]


_SCOPE_INPUT = object()
"""Input reference of a scope's first node without ``in``: the scope's first input."""


def is_template(value: Any) -> bool:
    """An id with ``${...}`` in it (``layer${s + 1}``), evaluated per instance."""
    return isinstance(value, str) and "${" in value


def _loc(entry: LocDict, key: str) -> Location:
    return entry.loc_of(key) if isinstance(entry, LocDict) else Location()


def _key_loc(entry: LocDict, key: str) -> Location:
    return entry.key_locs.get(key, entry.loc) if isinstance(entry, LocDict) else Location()


def _plain(value: Any) -> Any:
    """Loc containers to plain lists/dicts (for records that outlive the document)."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def unused_warnings(graph: Graph) -> list[str]:
    """Nodes and inputs whose results nothing uses: not an error, but almost always a mistake."""
    used = {v.node for node in graph for v in node.inputs} | {v.node for v in graph.outputs.values()}
    out = []
    for name, loc in graph.input_locations.items():
        if name not in used:
            out.append(f"{loc}: input {name!r} is never used")
    for node in graph:
        if node.path not in used:
            out.append(f"{node.location}: {node.path}: the result of this node is never used")
    return out
