"""Objectives and constraints: what a search optimizes and what a candidate must satisfy.

``--objective accuracy:max --objective latency_ms:min --constraint "params<=5e6"``. Metrics are computed
by :class:`Evaluator`: the static ones (params, MACs, memory) from nasforge's analysis, latency measured on a
backend and target (eager by default; cached per distinct network in the machine's latency cache) or
estimated from a per-workload lookup table (:mod:`nasforge.search.latency_lut`), accuracy after a short
training run, and zero-cost proxies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from nasforge.api import Spec
from nasforge.errors import Location, SpecError, did_you_mean
from nasforge.search.latency_cache import LatencyCache
from nasforge.search.latency_lut import LatencyLUT, LatencyMeter

STATIC_METRICS = {
    "params": "trainable parameters",
    "macs": "multiply-accumulates per sample",
    "flops": "FLOPs per sample (2 x MACs + element-wise)",
    "memory_mb": "activation memory per sample, all outputs (MB)",
    "peak_memory_mb": "inference peak of live tensors per sample (MB)",
}
MEASURED_METRICS = {
    "latency_ms": "median latency at batch 1 on this machine, on --latency-backend for --latency-target (ms)",
    "latency_lut_ms": "latency estimated as the sum of per-workload latencies from the lookup table (ms)",
    "accuracy": "validation accuracy after a short training run on --dataset",
    "train_loss": "final training loss of that run",
}
PROXY_METRICS = {
    "synflow": "SynFlow zero-cost proxy (higher is better)",
    "naswot": "NASWOT activation-pattern score (higher is better)",
    "snip": "SNIP saliency (higher is better)",
    "grad_norm": "gradient norm at initialization (higher is better)",
}
METRICS = {**STATIC_METRICS, **MEASURED_METRICS, **PROXY_METRICS}
STRICT_TIE = 1e-9
"""Violation of a strict bound met exactly (``params<5e6`` at 5e6): tiny, but not satisfied."""
DIRECTIONS = {"min": "minimize", "minimize": "minimize", "max": "maximize", "maximize": "maximize"}


def _known(metric: str, where: str) -> str:
    if metric not in METRICS:
        raise SpecError(f"unknown metric {metric!r}", location=Location(where),
                        expected="one of " + ", ".join(METRICS), found=repr(metric),
                        hint=did_you_mean(metric, list(METRICS)))
    return metric


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str

    @staticmethod
    def parse(text: str) -> "Objective":
        """``accuracy:max`` / ``latency_ms:min`` (the direction defaults to max for accuracy and proxies)."""
        metric, _, direction = text.partition(":")
        metric = _known(metric.strip(), "--objective")
        if not direction:
            direction = "max" if metric in ("accuracy", *PROXY_METRICS) else "min"
        if direction not in DIRECTIONS:
            raise SpecError("unknown objective direction", location=Location("--objective"),
                            expected="min or max", found=repr(direction))
        return Objective(metric, DIRECTIONS[direction])

    def __str__(self) -> str:
        return f"{self.metric}:{'min' if self.direction == 'minimize' else 'max'}"


_CONSTRAINT = re.compile(r"^\s*([a-z_]+)\s*(<=|>=|<|>)\s*([-+0-9.eE_]+)\s*$")


@dataclass(frozen=True)
class Constraint:
    """``metric OP bound``; :meth:`violation` is 0 when satisfied and the distance to the bound otherwise."""

    metric: str
    op: str
    bound: float

    @staticmethod
    def parse(text: str) -> "Constraint":
        match = _CONSTRAINT.match(text)
        if not match:
            raise SpecError("a constraint looks like METRIC<=VALUE", location=Location("--constraint"),
                            expected="e.g. params<=5e6 or latency_ms<10", found=repr(text))
        metric, op, bound = match.groups()
        try:
            value = float(bound.replace("_", ""))
        except ValueError:
            raise SpecError("a constraint bound must be a number", location=Location("--constraint"),
                            expected="e.g. 5e6", found=repr(bound)) from None
        return Constraint(_known(metric, "--constraint"), op, value)

    def violation(self, value: float) -> float:
        gap = value - self.bound if self.op in ("<=", "<") else self.bound - value
        if gap > 0:
            return gap
        strict_tie = gap == 0 and self.op in ("<", ">")
        return STRICT_TIE if strict_tie else 0.0

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"


@dataclass
class Evaluator:
    """Computes metrics for concrete specs. Training and proxies need a dataset (see ``data.py``)."""

    trainer: Callable[[Spec], Mapping[str, float]] | None = None
    proxies: Callable[[Spec, list[str]], Mapping[str, float]] | None = None
    latency: LatencyMeter = field(default_factory=LatencyMeter)
    """The backend, target and repeats both latency objectives measure with."""
    latency_cache: LatencyCache = field(default_factory=LatencyCache.in_memory)
    """Measured latencies by graph hash (``latency_ms``) and by workload (``latency_lut_ms``); the CLI
    passes the machine's persistent one (shared by workers)."""

    def __post_init__(self) -> None:
        self.lut = LatencyLUT(self.latency, self.latency_cache)

    def settings(self, metrics: list[str]) -> dict[str, Any]:
        """How the measured metrics among ``metrics`` are obtained (a study records it: numbers compare
        only when these agree): the training run's options, the latency backend and target."""
        out: dict[str, Any] = {}
        if set(metrics) & {"accuracy", "train_loss"} and hasattr(self.trainer, "settings"):
            out["training"] = self.trainer.settings()
        if set(metrics) & {"latency_ms", "latency_lut_ms"}:
            out["latency"] = {"backend": self.latency.backend, "target": self.latency.target,
                              "repeats": self.latency.repeats, "warmup": self.latency.warmup}
        return out

    def evaluate(self, spec: Spec, metrics: list[str], key: str) -> dict[str, float]:
        """The requested metrics; ``key`` (the network's graph hash) caches measured latency."""
        out: dict[str, float] = {}
        needed = set(metrics)
        if needed & set(STATIC_METRICS):
            t = spec.check().totals
            static = {"params": t.params, "macs": t.macs, "flops": t.flops,
                      "memory_mb": t.activation_bytes / 1e6, "peak_memory_mb": t.peak_bytes / 1e6}
            out.update({k: float(v) for k, v in static.items() if k in needed})
        if "latency_ms" in needed:
            out["latency_ms"] = self.latency_cache.get_or_measure(
                key, self.latency.backend, self.latency.cache_target, lambda: self.latency.network_ms(spec))
        if "latency_lut_ms" in needed:
            out["latency_lut_ms"] = self.lut.estimate_ms(spec)
        if needed & {"accuracy", "train_loss"}:
            if self.trainer is None:
                raise SpecError("accuracy needs a dataset", location=Location("--objective"),
                                expected="--dataset digits (or synthetic, npz:PATH, folder:PATH, cifar10:PATH)",
                                found="no dataset")
            out.update({k: float(v) for k, v in self.trainer(spec).items() if k in needed})
        wanted_proxies = [m for m in metrics if m in PROXY_METRICS]
        if wanted_proxies:
            if self.proxies is None:
                raise SpecError("zero-cost proxies need a dataset batch", location=Location("--objective"),
                                expected="--dataset ...", found="no dataset")
            out.update({k: float(v) for k, v in self.proxies(spec, wanted_proxies).items()})
        return out

