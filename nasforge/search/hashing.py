"""Graph hashes: two candidates that are the same network get the same hash, whatever their encoding.

A search space often names one network several ways (DARTS edges in another order, a zero-op edge whose
other choices do not matter, a skipped block's unused choices). The Weisfeiler-Lehman hash of the typed
IR (ops, attributes, tensor types, which input slot an edge feeds) ignores node names and decision
labels, so a study evaluates each distinct network once.
"""

from __future__ import annotations

import hashlib
import json
import warnings

import networkx as nx

from nasforge.compiler.ir import Graph

WL_ITERATIONS = 4


def _node_label(op: str, attrs: dict, types: str) -> str:
    return f"{op}|{json.dumps(attrs, sort_keys=True, default=str)}|{types}"


def graph_hash(graph: Graph) -> str:
    """A hex digest equal for isomorphic typed graphs (node paths and choice labels do not count)."""
    g = nx.DiGraph()
    for name, t in graph.inputs.items():
        g.add_node(name, label=f"input|{t}")
    for node in graph:
        g.add_node(node.path, label=_node_label(node.op, node.attrs, ",".join(map(str, node.outputs))))
        for slot, v in enumerate(node.inputs):
            # the slot matters for non-commutative ops (sub, concat order); parallel edges merge by slot list
            previous = g.get_edge_data(v.node, node.path, {}).get("label", "")
            g.add_edge(v.node, node.path, label=f"{previous}{slot}:{v.index};")
    for k, (name, v) in enumerate(graph.outputs.items()):
        g.add_node(f"__output{k}", label=f"output|{k}")
        g.add_edge(v.node, f"__output{k}", label=f"{v.index};")
    with warnings.catch_warnings():  # networkx 3.5 notes that directed hashes changed; ours are new
        warnings.simplefilter("ignore", UserWarning)
        digest = nx.weisfeiler_lehman_graph_hash(g, node_attr="label", edge_attr="label",
                                                 iterations=WL_ITERATIONS, digest_size=16)
    return hashlib.sha256(f"{digest}|{len(g)}|{g.number_of_edges()}".encode()).hexdigest()[:32]
