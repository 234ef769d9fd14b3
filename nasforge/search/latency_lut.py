"""Latency on a backend and target: whole networks measured, and networks estimated from a lookup table.

Measuring every candidate of a search end to end costs a build (a compile, on a compiled backend) and
dozens of timed runs per network, and most of that work repeats: the candidates of one space are made of
the same few layers at the same few shapes. FBNet (Wu et al. 2019) and ProxylessNAS (Cai et al. 2019)
therefore time each distinct layer once and estimate a network's latency as the sum of its layers'. Here a
*workload* is one IR op with its attributes and input types (shapes and dtypes at batch 1), on one backend
and target; :class:`LatencyLUT` times each workload once per machine and sums a network's workloads into
the ``latency_lut_ms`` objective. The table lives in the machine's :class:`LatencyCache` (SQLite, shared by
concurrent workers, ``$NASFORGE_CACHE_DIR``), under the workload's hash.

The estimate ignores what a whole-network run adds or saves (operator fusion on a compiled backend, cache
reuse between layers, the per-call overhead of each timed workload), so it ranks networks rather than
predicting milliseconds; ``benchmarks/latency_lut.py`` measures how well it ranks them
(docs/performance.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import torch

from nasforge.api import Spec
from nasforge.backends.base import measure_latency
from nasforge.backends.torchio import device_for
from nasforge.compiler.fx_builder import build_graph_module, example_inputs
from nasforge.compiler.ir import Graph, Node, Value
from nasforge.errors import Location, SpecError
from nasforge.search.latency_cache import LatencyCache

BATCH = 1
"""Latency is measured at batch 1, the deployment case the papers' lookup tables model."""


@dataclass
class LatencyMeter:
    """Times a module on ``backend`` for ``target``: the median of ``repeats`` calls after ``warmup``.

    The eager backend calls the ``GraphModule`` directly under ``inference_mode`` on the target's device,
    with no conversion to and from numpy per call (which would outweigh a small op's own time); every
    other backend compiles through :func:`nasforge.backends.compile` and times the compiled module with its
    own ``latency()``, the measurement ``nasforge compile`` reports."""

    backend: str = "eager"
    target: str = "x86"
    repeats: int = 20
    warmup: int = 3

    def check(self) -> None:
        """Fail before a search starts, not in its first trial, when the backend cannot time networks for
        the target on this machine (an unknown name, a missing extra, a target this host cannot run)."""
        from nasforge.backends.registry import get_backend

        if self.backend == "auto":
            raise SpecError("latency is measured on one backend", location=Location("--latency-backend"),
                            expected="eager, inductor, onnxruntime or tvm", found="'auto'",
                            hint="`nasforge compile --backend auto` tells which backend is fastest for a network")
        try:
            ok, why = get_backend(self.backend).availability(self.target)
        except SpecError as err:
            flag = "--latency-target" if err.location.file == "--target" else "--latency-backend"
            raise dataclasses.replace(err, location=Location(flag)) from None
        if not ok:
            raise SpecError(f"the {self.backend} backend cannot time networks for target {self.target!r} here",
                            location=Location("--latency-backend"), expected="a backend and target this host runs",
                            found=why)

    def measure(self, graph_module: torch.fx.GraphModule, inputs: Sequence[torch.Tensor]) -> float:
        """Median latency of one call in milliseconds."""
        if self.backend == "eager":
            device = device_for(self.target)
            module, args = graph_module.to(device), [x.to(device) for x in inputs]
            done = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

            def call() -> None:
                module(*args)
                done()

            with torch.inference_mode():
                return measure_latency(call, self.warmup, self.repeats).median_ms
        from nasforge import backends

        compiled = backends.compile(graph_module, list(inputs), backend=self.backend, target=self.target)
        return compiled.latency(warmup=self.warmup, repeats=self.repeats).median_ms

    def network_ms(self, spec: Spec) -> float:
        """A whole network's latency at batch 1."""
        return self.measure(spec.build(), example_inputs(spec.graph, batch=BATCH))

    @property
    def cache_target(self) -> str:
        """The target as the latency cache keys it: with the intra-op thread count the timing ran with."""
        return f"{self.target}/{torch.get_num_threads()}t"


@dataclass(frozen=True)
class Workload:
    """One op at one set of input types: what a lookup-table row is measured for."""

    op: str
    attrs: str
    """The op's attributes as canonical JSON (sorted keys)."""
    inputs: tuple[str, ...]
    """Input types as nasforge writes them (``[B, 16, 32, 32]``, ``[B, 8] int64``); B is bound to 1."""

    @staticmethod
    def of(graph: Graph, node: Node) -> "Workload":
        attrs = json.dumps(node.attrs, sort_keys=True, default=str, separators=(",", ":"))
        return Workload(node.op, attrs, tuple(str(graph.type_of(v)) for v in node.inputs))

    @property
    def key(self) -> str:
        """A stable identifier: a hash of the workload, the batch and the torch version."""
        text = json.dumps([self.op, self.attrs, self.inputs, BATCH, torch.__version__])
        return "workload:" + hashlib.sha256(text.encode()).hexdigest()[:32]


def workload_graph(graph: Graph, node: Node) -> Graph:
    """A one-node typed graph running ``node`` of ``graph`` on inputs of the types it receives there."""
    names = [f"in{i}" for i in range(len(node.inputs))]
    alone = Node(path="op", op=node.op, attrs=dict(node.attrs), inputs=[Value(n) for n in names],
                 location=node.location, outputs=list(node.outputs))
    outputs = {f"out{k}": Value("op", k) for k in range(len(node.outputs))}
    return Graph(f"workload_{node.op}", {n: graph.type_of(v) for n, v in zip(names, node.inputs)},
                 {"op": alone}, outputs)


@dataclass
class LatencyLUT:
    """A network's latency estimated as the sum of its workloads' latencies, each measured once per
    machine (``cache``) on the meter's backend and target. ``measured`` counts the workloads this object
    timed (the rest came from the table)."""

    meter: LatencyMeter = field(default_factory=LatencyMeter)
    cache: LatencyCache = field(default_factory=LatencyCache)
    measured: int = 0

    def estimate_ms(self, spec: Spec) -> float:
        """Sum over the network's nodes of their workload's latency (each distinct workload looked up
        once: a network repeating a block at one width asks the table once per distinct layer)."""
        graph = spec.graph
        counts: Counter[Workload] = Counter()
        example: dict[Workload, Node] = {}
        for node in graph:
            workload = Workload.of(graph, node)
            counts[workload] += 1
            example.setdefault(workload, node)
        return sum(n * self.workload_ms(graph, example[w], w) for w, n in counts.items())

    def workload_ms(self, graph: Graph, node: Node, workload: Workload | None = None) -> float:
        """The table's latency of ``node``'s workload, timed now if the table lacks it."""
        workload = workload or Workload.of(graph, node)
        return self.cache.get_or_measure(workload.key, self.meter.backend, self.meter.cache_target,
                                         lambda: self._time(graph, node))

    def _time(self, graph: Graph, node: Node) -> float:
        alone = workload_graph(graph, node)
        self.measured += 1
        return self.meter.measure(build_graph_module(alone), example_inputs(alone, batch=BATCH))
