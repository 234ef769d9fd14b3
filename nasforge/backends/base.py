"""The one interface every backend implements, and the latency measurement they share.

A backend turns a ``torch.fx.GraphModule`` plus example inputs into a :class:`CompiledModule` for a named
target profile (see :mod:`nasforge.backends.targets`). A compiled module is callable like the torch module,
saves itself into a directory and loads back from one, and measures its own latency the same way for
every backend, so that numbers from different backends can be compared side by side.

This module imports neither torch nor tvm: a deployed artifact loads through it in a torch-free process.
"""

from __future__ import annotations

import os
import statistics
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one input or output (a concrete shape: the batch the module was compiled for)."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, e.g. "float32"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TensorSpec":
        return cls(str(data["name"]), tuple(int(d) for d in data["shape"]), str(data["dtype"]))


@dataclass(frozen=True)
class Latency:
    """Wall-clock latency of repeated calls: the median and the spread (10th/90th percentile, min, max)."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    warmup: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_latency(call: Callable[[], Any], warmup: int = 10, repeats: int = 50,
                    max_seconds: float | None = None) -> Latency:
    """Time ``call`` after ``warmup`` untimed calls; ``max_seconds`` caps the timed loop (at least 3 runs).

    Why the cap: a slow candidate (untuned TVM runs a ConvNeXt in seconds) would otherwise take minutes
    to time 50 times; the median of fewer runs is still reported with how many it took.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    for _ in range(warmup):
        call()
    times: list[float] = []
    started = time.perf_counter()
    for _ in range(repeats):
        times.append(_timed_ms(call))
        if max_seconds is not None and len(times) >= 3 and time.perf_counter() - started > max_seconds:
            break
    return summarize(times, warmup)


def measure_interleaved(calls: Mapping[str, Callable[[], Any]], warmup: int = 10, repeats: int = 50,
                        max_seconds: float | None = None) -> dict[str, Latency]:
    """Time several calls against each other in rounds: each round runs every call twice, the first untimed
    (its thread pool wakes and its working set returns to the caches after the others ran) and the second
    timed, in an order that rotates from round to round; ``max_seconds`` caps the whole (at least 3 rounds).

    Why rounds and not one loop per call: on a shared machine a slow spell lasts seconds, and timed one after
    another the call that happened to run during it looks slower by 10-15%; in rounds the spell falls on all of
    them alike, so their ratios, which is what a side-by-side comparison reports, hold.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    started = time.perf_counter()
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            calls[name]()
            times[name].append(_timed_ms(calls[name]))
        if max_seconds is not None and round_ >= 2 and time.perf_counter() - started > max_seconds:
            break
    return {name: summarize(times[name], warmup) for name in names}


def _timed_ms(call: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    call()
    return (time.perf_counter() - t0) * 1e3


def summarize(times: Sequence[float], warmup: int) -> Latency:
    """The median and spread of timed calls (milliseconds)."""
    ordered = sorted(times)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    return Latency(median_ms=statistics.median(ordered), p10_ms=pct(0.1), p90_ms=pct(0.9),
                   min_ms=ordered[0], max_ms=ordered[-1], repeats=len(ordered), warmup=warmup)


def host_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count): thread pools
    sized by it neither oversubscribe a container nor leave cores idle."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@dataclass
class CompileInfo:
    """What compiling cost and what it did: reported, never hidden (seconds; tuning summary per backend)."""

    compile_s: float = 0.0
    tuning_s: float = 0.0
    tuning: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class CompiledModule(ABC):
    """A network compiled by one backend for one target.

    Call it with numpy arrays (returns a list of numpy arrays) or torch tensors (returns what the torch
    module returns: a tensor, or a tuple for several outputs). ``save(dir)`` writes only the backend's own
    files; :mod:`nasforge.backends.artifact` adds the metadata and makes the write atomic.
    """

    backend: str = ""
    rebuilds_from_spec: bool = False
    """True where :meth:`load` rebuilds the network from the artifact's copy of the spec (eager,
    inductor): such a module can only be written into an artifact together with its spec."""

    def __init__(self, target: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                 info: CompileInfo | None = None) -> None:
        self.target = target
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.info = info or CompileInfo()

    @abstractmethod
    def run_numpy(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Run on numpy inputs (one per input, in order); one numpy array per output."""

    def __call__(self, *inputs: Any) -> Any:
        if inputs and all(isinstance(x, np.ndarray) for x in inputs):
            return self.run_numpy(*inputs)
        import torch  # only torch callers get here

        outs = self.run_numpy(*(x.detach().cpu().numpy() for x in inputs))
        tensors = tuple(torch.from_numpy(np.ascontiguousarray(o)) for o in outs)
        return tensors[0] if len(tensors) == 1 else tensors

    def example_arrays(self, seed: int = 0) -> list[np.ndarray]:
        """Random inputs of the compiled shapes (integer inputs get small non-negative ids)."""
        rng = np.random.default_rng(seed)
        arrays = []
        for spec in self.inputs:
            if np.dtype(spec.dtype).kind in "iu":
                arrays.append(rng.integers(0, 2, size=spec.shape).astype(spec.dtype))
            elif np.dtype(spec.dtype).kind == "b":
                arrays.append(np.ones(spec.shape, dtype=bool))
            else:
                arrays.append(rng.standard_normal(spec.shape).astype(spec.dtype))
        return arrays

    def latency(self, warmup: int = 10, repeats: int = 50, max_seconds: float | None = 30.0,
                inputs: Sequence[np.ndarray] | None = None) -> Latency:
        """Median latency of one call on fixed inputs, measured the same way for every backend."""
        arrays = list(inputs) if inputs is not None else self.example_arrays()
        return measure_latency(lambda: self.run_numpy(*arrays), warmup, repeats, max_seconds)

    @abstractmethod
    def save(self, directory: Path) -> dict[str, Any]:
        """Write the backend's files into ``directory`` (which exists and is empty).

        Returns backend-specific metadata to record (file names, versions); the artifact layer stores it
        under ``metadata["backend_files"]`` and passes it back to :meth:`load`.
        """

    @classmethod
    @abstractmethod
    def load(cls, directory: Path, metadata: dict[str, Any]) -> "CompiledModule":
        """Load what :meth:`save` wrote; ``metadata`` is the whole ``metadata.json`` of the artifact."""


class Backend(ABC):
    """A compiler from a GraphModule to a :class:`CompiledModule`; one module per backend."""

    name: str = ""
    description: str = ""
    compiles_in_child: bool = False
    """Whether the heavy part of a compile runs in a child process, waited for under
    :meth:`nasforge.backends.turns.Turns.waiting`: such compiles overlap when threads run them."""

    @abstractmethod
    def availability(self, target: str) -> tuple[bool, str]:
        """Whether this backend can compile for ``target`` here, and why not (an install hint) if not."""

    @abstractmethod
    def compile(self, graph_module: Any, example_inputs: Sequence[Any], target: str,
                options: dict[str, Any] | None = None) -> CompiledModule:
        """Compile ``graph_module`` (a ``torch.fx.GraphModule`` in eval mode) for ``target``.

        ``example_inputs`` are torch tensors of the shapes to compile for. Raises
        :class:`nasforge.errors.SpecError` (or a subclass) for a user-facing failure: an op the backend
        cannot lower (naming the op and the node path), an unavailable target, a missing extra.
        """
