"""Graph optimization before a backend: fx passes over a built network, run in eval mode.

:func:`optimize` copies a ``torch.fx.GraphModule`` and runs the passes on the copy, in this order:

1. ``remove_train_only`` (:mod:`.train_only`): dropout, drop-path and identity nodes go;
2. ``fold_branches`` (:mod:`.branches`): RepVGG-style sums of conv / BN / identity branches become one conv;
3. ``fold_batch_norm`` (:mod:`.fold_bn`): a BatchNorm after a conv, transposed conv or linear layer goes
   into its weights;
4. ``fold_constants`` (:mod:`.constant_fold`): what depends on parameters and static shapes only (weight
   norm, SSM kernels, RoPE tables, masks) is computed once and kept as buffers;
5. ``eliminate_dead_code`` (:mod:`.dead_code`): unused nodes, submodules and tensors go.

Every pass keeps the network's function in eval mode (the tests hold outputs to 1e-4 on the model library);
the result is in eval mode and is meant for inference, not for training. A pass is a function that
rewrites a GraphModule in place and returns counts of what it did; :func:`optimize_with_report` collects
them in a :class:`PassReport`.

>>> import nasforge
>>> from nasforge.compiler.passes import optimize_with_report
>>> gm = nasforge.load("specs/models/resnet.yaml", variant="resnet18").build()
>>> fast, report = optimize_with_report(gm)
>>> report.counts("fold_batch_norm")["conv"]
20
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from torch import fx

from nasforge.compiler.passes.branches import fold_branches
from nasforge.compiler.passes.constant_fold import fold_constants
from nasforge.compiler.passes.dead_code import eliminate_dead_code
from nasforge.compiler.passes.fold_bn import fold_batch_norm
from nasforge.compiler.passes.train_only import remove_train_only
from nasforge.errors import SpecError, did_you_mean

Pass = Callable[[fx.GraphModule], dict[str, int]]
"""A pass rewrites a GraphModule in place and returns counts of what it did."""

PASSES: dict[str, Pass] = {
    "remove_train_only": remove_train_only,
    "fold_branches": fold_branches,
    "fold_batch_norm": fold_batch_norm,
    "fold_constants": fold_constants,
    "eliminate_dead_code": eliminate_dead_code,
}
"""The passes by name, in the order :func:`optimize` runs them by default."""


@dataclass(frozen=True)
class PassResult:
    """What one pass did: its counts and the graph's size (fx nodes) before and after."""

    name: str
    counts: dict[str, int]
    nodes_before: int
    nodes_after: int
    seconds: float


@dataclass
class PassReport:
    """The passes one :func:`optimize_with_report` call ran, in order, and the parameter totals around them."""

    results: list[PassResult] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0

    def counts(self, name: str) -> dict[str, int]:
        """The counts of pass ``name`` (empty when it did not run)."""
        return next((r.counts for r in self.results if r.name == name), {})

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (artifact metadata, ``--json`` output)."""
        return {
            "passes": [{"name": r.name, "counts": dict(r.counts), "nodes_before": r.nodes_before,
                        "nodes_after": r.nodes_after, "seconds": round(r.seconds, 4)} for r in self.results],
            "params_before": self.params_before,
            "params_after": self.params_after,
        }

    def __str__(self) -> str:
        lines = []
        for r in self.results:
            done = ", ".join(f"{k} {v}" for k, v in r.counts.items() if v) or "nothing"
            lines.append(f"{r.name}: {done} (nodes {r.nodes_before} -> {r.nodes_after}, {r.seconds:.2f} s)")
        lines.append(f"parameters {self.params_before:,} -> {self.params_after:,}")
        return "\n".join(lines)


def _resolve(passes: Sequence[str | Pass] | None) -> list[tuple[str, Pass]]:
    resolved = []
    for item in PASSES if passes is None else passes:
        if callable(item):
            resolved.append((getattr(item, "__name__", repr(item)), item))
        elif item in PASSES:
            resolved.append((item, PASSES[item]))
        else:
            raise SpecError(f"unknown graph pass {item!r}", expected="one of " + ", ".join(PASSES),
                            found=repr(item), hint=did_you_mean(str(item), list(PASSES)))
    return resolved


def _param_count(gm: fx.GraphModule) -> int:
    return sum(p.numel() for p in gm.parameters())


def optimize_with_report(gm: fx.GraphModule,
                         passes: Sequence[str | Pass] | None = None) -> tuple[fx.GraphModule, PassReport]:
    """Run ``passes`` (names from :data:`PASSES` or pass functions; default: all, in order) on a copy of
    ``gm``; return the optimized copy (in eval mode) and what each pass did. ``gm`` is not changed."""
    chosen = _resolve(passes)
    out = copy.deepcopy(gm)
    out.eval()
    report = PassReport(params_before=_param_count(out))
    for name, run in chosen:
        before, start = len(out.graph.nodes), time.perf_counter()
        counts = run(out)
        report.results.append(PassResult(name, dict(counts), before, len(out.graph.nodes),
                                         time.perf_counter() - start))
    report.params_after = _param_count(out)
    return out, report


def optimize(gm: fx.GraphModule, passes: Sequence[str | Pass] | None = None) -> fx.GraphModule:
    """The optimized copy of ``gm`` (see :func:`optimize_with_report`; this drops the report)."""
    return optimize_with_report(gm, passes)[0]


__all__ = ["PASSES", "Pass", "PassReport", "PassResult", "optimize", "optimize_with_report"]
