"""Op x backend coverage: every op's examples compiled by every backend and compared with eager.

Each registry entry carries small concrete ``examples``; each example becomes one node of a network
(path ``OP.exK``, e.g. ``conv2d.ex3``) with its own inputs and outputs. Many examples share one network,
so a backend compiles once for a whole batch of ops instead of once per op (a TVM compile costs seconds
in a worker process, Inductor's too). A compile that fails names the spec node it failed on
(:class:`~nasforge.errors.SpecError` with ``node_path``): that example is recorded as not supported with
the backend's own message and the rest compile again without it. A failure that names no node of the
network is split in halves until it does, or until one example is left, which is then recorded as a
failure *without a clear error* (a defect of the backend's error reporting, shown as such).

Every example's reference is the eager GraphModule in eval mode, with inputs and weights seeded by the
node path, so an example gives the same numbers whichever network it sits in. Parameters the default
initialization leaves constant (norm affines, layer scales, tokens) and BatchNorm statistics get seeded
noise, which would otherwise hide a dropped bias or a swapped scale. Outputs that are random in eval mode
(``random_masking`` with ``eval_order: random``) are compared by shape and dtype only. Floating inputs
are standard normal, or positive where normal ones give an eager result that is not finite (``log``).

:mod:`nasforge.backends.coverage_report` renders the results (``nasforge coverage -o docs/backend-coverage.md``).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import fx

from nasforge.compiler.fx_builder import build_graph_module
from nasforge.compiler.infer import infer_types
from nasforge.compiler.ir import Graph, Node, Value
from nasforge.errors import Location, SpecError, did_you_mean
from nasforge.ops import all_ops
from nasforge.ops.registry import OpContext
from nasforge.types import TensorType

BACKENDS = ("eager", "inductor", "onnxruntime", "tvm")
"""The columns: every compiling backend (``auto`` only picks one of these)."""

CORE_OPS = ("conv2d", "linear", "batch_norm2d", "relu", "gelu", "layer_norm", "softmax", "max_pool2d", "add",
            "matmul", "attention")
"""The ops the fast default test set runs through every backend (the whole vocabulary runs in the slow set)."""

TOLERANCE: dict[str, tuple[float, float]] = {
    "float64": (1e-7, 1e-7), "float32": (1e-4, 1e-4), "float16": (1e-2, 1e-2), "bfloat16": (3e-2, 3e-2),
}
"""(rtol, atol) per output dtype: ``|got - want| <= atol + rtol * |want|``; integer and bool outputs are exact."""

# per-example outcomes; an op's cell summarizes its examples
OK, RANDOM, UNSUPPORTED, MISMATCH, UNCLEAR = "ok", "random", "unsupported", "mismatch", "unclear"
PASSING = (OK, RANDOM)


@dataclass
class Case:
    """One example of one op, ready to run: inputs, weights and eager outputs fixed by its node path."""

    op: str
    index: int
    attrs: dict[str, Any]
    input_types: list[TensorType]
    output_types: list[TensorType]
    inputs: list[torch.Tensor] = field(default_factory=list)
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    expected: list[np.ndarray] = field(default_factory=list)
    positive_inputs: bool = False
    random: bool = False

    @property
    def path(self) -> str:
        return f"{self.op}.ex{self.index}"


@dataclass
class ExampleResult:
    """How one backend did on one example: ``status`` is one of ok, random, unsupported, mismatch, unclear."""

    op: str
    index: int
    status: str
    max_abs_err: float | None = None
    error: str | None = None


@dataclass
class BackendRun:
    """One backend's column: every example's result, plus what it cost (compiles and seconds)."""

    backend: str
    available: bool
    why_unavailable: str = ""
    results: list[ExampleResult] = field(default_factory=list)
    compiles: int = 0
    seconds: float = 0.0

    def by_op(self) -> dict[str, list[ExampleResult]]:
        grouped: dict[str, list[ExampleResult]] = {}
        for r in sorted(self.results, key=lambda r: (r.op, r.index)):
            grouped.setdefault(r.op, []).append(r)
        return grouped


# -- cases ---------------------------------------------------------------------------------------------

def _seed(path: str) -> int:
    return zlib.crc32(path.encode())


def _random_inputs(case: Case, int_high: int, positive: bool) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(_seed(case.path))
    tensors = []
    for t in case.input_types:
        shape, dtype = t.concrete_shape(), getattr(torch, t.dtype)
        if t.dtype == "bool":
            tensors.append(torch.rand(shape, generator=gen) > 0.5)
        elif t.dtype in ("int64", "int32"):
            tensors.append(torch.randint(0, int_high, shape, generator=gen, dtype=dtype))
        else:
            x = torch.randn(shape, generator=gen, dtype=torch.float64)
            tensors.append((x.abs() + 0.5 if positive else x).to(dtype))
    return tensors


def _perturb(module: torch.nn.Module, path: str) -> None:
    """Seeded noise on constant-initialized parameters and on BatchNorm statistics (see the module doc)."""
    gen = torch.Generator().manual_seed(_seed(path) + 1)
    with torch.no_grad():
        for name, p in [*module.named_parameters(), *module.named_buffers()]:
            if not p.is_floating_point() or p.numel() == 0:
                continue
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            if name.endswith("running_mean"):
                p.copy_(noise * 0.5)
            elif name.endswith("running_var"):
                p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * 1.5 + 0.5)
            elif isinstance(p, torch.nn.Parameter) and bool((p == p.flatten()[0]).all()):
                p.add_(noise * 0.1)


def _outputs(result: Any) -> list[torch.Tensor]:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def make_case(op_name: str, index: int) -> Case:
    """Example ``index`` of op ``op_name`` with its seeded inputs, weights and eager outputs (the caller's
    random state is left as it was)."""
    op = all_ops()[op_name]
    example = op.examples[index]
    attrs = op.validate_attrs(example.attrs)
    types = example.input_types()
    case = Case(op_name, index, attrs, types, op.infer(OpContext(attrs, types)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(case.path))
        gm = _network([case], load_states=False)
        if case.path in dict(gm.named_modules()):
            module = gm.get_submodule(case.path)
            _perturb(module, case.path)
            case.state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        for positive in (False, True):
            case.inputs = _random_inputs(case, example.int_high, positive)
            case.positive_inputs = positive
            with torch.inference_mode():
                torch.manual_seed(0)
                first = [t.clone() for t in _outputs(gm(*case.inputs))]
                torch.manual_seed(1)
                second = _outputs(gm(*case.inputs))
            if all(torch.isfinite(t).all() for t in first if t.is_floating_point()):
                break
    case.random = any(not torch.equal(a, b) for a, b in zip(first, second))
    case.expected = [t.detach().numpy() for t in first]
    return case


def make_cases(ops: Iterable[str] | None = None) -> list[Case]:
    """Every example of the named ops, in that order (every registered op by default)."""
    registry = all_ops()
    names = list(registry) if ops is None else list(ops)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise SpecError(f"unknown op {unknown[0]!r}", location=Location("--ops"), expected="a registered op name",
                        found=repr(unknown[0]), hint=did_you_mean(unknown[0], list(registry)))
    return [make_case(n, i) for n in names for i in range(len(registry[n].examples))]


# -- networks ------------------------------------------------------------------------------------------

def _network(cases: Sequence[Case], load_states: bool = True) -> fx.GraphModule:
    """One GraphModule holding every case as an independent branch (its own inputs and outputs)."""
    graph = Graph(name="coverage", inputs={}, nodes={}, outputs={})
    for case in cases:
        base = case.path.replace(".", "_")
        names = [f"{base}_in{k}" for k in range(len(case.input_types))]
        graph.inputs.update(zip(names, case.input_types))
        graph.nodes[case.path] = Node(case.path, case.op, dict(case.attrs), [Value(n) for n in names])
        graph.outputs.update({f"{base}_out{k}": Value(case.path, k) for k in range(len(case.output_types))})
    gm = build_graph_module(infer_types(graph))
    gm.meta["output_names"] = list(graph.outputs)
    if load_states:
        for case in cases:
            if case.state:
                gm.get_submodule(case.path).load_state_dict(case.state)
    return gm.eval()


def compare(case: Case, got: Sequence[np.ndarray]) -> ExampleResult:
    """One example's backend outputs against eager: shapes and dtypes exactly, values within :data:`TOLERANCE`."""
    result = ExampleResult(case.op, case.index, RANDOM if case.random else OK, max_abs_err=None if case.random else 0.0)
    if len(got) != len(case.expected):
        return ExampleResult(case.op, case.index, MISMATCH, error=f"{len(got)} outputs, eager has {len(case.expected)}")
    for k, (g, want) in enumerate(zip(got, case.expected)):
        g = np.asarray(g)
        if g.shape != want.shape or g.dtype != want.dtype:
            return ExampleResult(case.op, case.index, MISMATCH,
                                 error=f"output {k}: {g.dtype}{list(g.shape)}, eager {want.dtype}{list(want.shape)}")
        if case.random:
            continue
        if want.dtype.kind not in "fc":
            if not np.array_equal(g, want):
                return ExampleResult(case.op, case.index, MISMATCH, error=f"output {k}: integer values differ")
            continue
        rtol, atol = TOLERANCE.get(str(want.dtype), TOLERANCE["float32"])
        exact, wide = np.asarray(want, np.float64), np.asarray(g, np.float64)
        diff = np.abs(wide - exact)
        diff[(wide == exact) | (np.isnan(wide) & np.isnan(exact))] = 0.0  # equal infinities, NaN where eager has NaN
        diff = np.nan_to_num(diff, nan=np.inf)
        err = float(diff.max()) if diff.size else 0.0
        result.max_abs_err = max(result.max_abs_err or 0.0, err)
        if (diff > atol + rtol * np.abs(exact)).any():
            result.status, result.error = MISMATCH, f"output {k}: max abs error {err:.3g} over rtol {rtol:g}, atol {atol:g}"
            return result
    return result


def failure(case: Case, err: BaseException, backend: str) -> ExampleResult:
    """An example the backend refused: unsupported when the SpecError names the op and this node, unclear otherwise."""
    if isinstance(err, SpecError):
        text = err.message + (f" (found: {err.found})" if err.found else "")
        clear = err.node_path == case.path and repr(case.op) in err.message
        return ExampleResult(case.op, case.index, UNSUPPORTED if clear else UNCLEAR,
                             error=text if clear else f"the {backend} error does not name the op and its node: {text}")
    return ExampleResult(case.op, case.index, UNCLEAR, error=f"{type(err).__name__} escaped, not a SpecError: {err}"[:600])


# -- running -------------------------------------------------------------------------------------------

def chunks(cases: Sequence[Case], size: int) -> list[list[Case]]:
    """Consecutive cases in groups of about ``size`` examples, never splitting an op's examples.

    Why not one network for everything: a refused example costs one more export of its whole group (about
    40 s for all 353 examples with ``torch.export``, a second for a group of 30), and a failure that names no
    node is bisected within its group only.
    """
    groups: list[list[Case]] = []
    for case in cases:
        if groups and (len(groups[-1]) < size or groups[-1][-1].op == case.op):
            groups[-1].append(case)
        else:
            groups.append([case])
    return groups


def suspects(err: BaseException, group: list[Case]) -> list[Case]:
    """The examples an error names as "one of a, b, c" (several nodes run the op the backend refused)."""
    path = err.node_path if isinstance(err, SpecError) else None
    if not path or not path.startswith("one of "):
        return []
    named = set(path[len("one of "):].split(", "))
    return [c for c in group if c.path in named]


def retry_groups(group: list[Case], culprit: Case | None, suspected: list[Case] | None = None) -> list[list[Case]]:
    """The groups to compile again after ``group`` failed.

    A failure pinned to one example removes it, and its op's other examples go on alone: they often fail
    the same way, and then cost a tiny network each instead of the whole group again. A failure that names
    several suspects compiles each suspect alone and the rest together. A failure pinned to nothing is
    bisected, by whole ops first.
    """
    if suspected:
        parts = [[c] for c in suspected] + [[c for c in group if c not in suspected]]
    elif culprit is not None:
        rest = [c for c in group if c is not culprit]
        parts = [[c for c in rest if c.op == culprit.op], [c for c in rest if c.op != culprit.op]]
    else:
        ops = list(dict.fromkeys(c.op for c in group))
        first = set(ops[:len(ops) // 2])
        parts = ([[c for c in group if c.op in first], [c for c in group if c.op not in first]] if len(ops) > 1
                 else [group[:len(group) // 2], group[len(group) // 2:]])
    return [part for part in parts if part]


def run_backend(backend: str, cases: Sequence[Case], target: str = "x86", chunk: int = 32,
                progress: Callable[[str], None] | None = None) -> BackendRun:
    """Every case through ``backend`` for ``target``, ``chunk`` examples to a network (see :func:`chunks`).

    A backend that compiles in a child process (TVM) gets two groups at a time: one thread exports a group
    while the other's child generates code (:mod:`nasforge.backends.turns`; all else takes turns).
    """
    from nasforge import backends
    from nasforge.backends.targets import resolve

    ok, why = backends.available_backends(target, [backend])[backend]
    runs, why_not = resolve(target).runs_here()
    if ok and not runs:  # compiling alone would prove little, and every run would fail without naming a node
        ok, why = False, f"target {target!r} does not run here, so outputs cannot be compared ({why_not})"
    run = BackendRun(backend, ok, why)
    if not ok:
        return run
    started = time.perf_counter()
    say = progress or (lambda _msg: None)

    def attempt(group: list[Case]) -> None:
        run.compiles += 1
        say(f"{backend}: compiling {len(group)} examples ({len({c.op for c in group})} ops)")
        gm = _network(group)
        inputs = [t for c in group for t in c.inputs]
        try:
            flat = backends.compile(gm, inputs, backend, target).run_numpy(*[t.numpy() for t in inputs])
        except Exception as err:  # every failure is judged (clear or not) by the example it is pinned to
            named = next((c for c in group if isinstance(err, SpecError) and err.node_path == c.path), None)
            if named is None and len(group) == 1:
                named = group[0]
            if named is not None:
                run.results.append(failure(named, err, backend))
            for part in retry_groups(group, named, suspects(err, group) if named is None else []):
                attempt(part)
            return
        position = 0
        for case in group:
            count = len(case.expected)
            run.results.append(compare(case, flat[position:position + count]))
            position += count

    if backends.get_backend(backend).compiles_in_child:
        two_at_a_time(attempt, chunks(cases, chunk))
    else:
        for group in chunks(cases, chunk):
            attempt(group)
    run.results.sort(key=lambda r: (r.op, r.index))  # in the cases' order, however the groups interleaved
    run.seconds = time.perf_counter() - started
    return run


def two_at_a_time(attempt: Callable[[list[Case]], None], groups: Sequence[list[Case]]) -> None:
    """``attempt`` every group on two threads that take turns at all but waiting for compile children
    (:data:`nasforge.backends.turns.PARENT`). A failure or Ctrl-C cancels the groups not started; those
    under way finish their compile first."""
    from concurrent.futures import ThreadPoolExecutor

    from nasforge.backends.turns import PARENT

    def take_turns(group: list[Case]) -> None:
        with PARENT.turn():
            attempt(group)

    pool = ThreadPoolExecutor(2, thread_name_prefix="coverage")
    try:
        for future in [pool.submit(take_turns, group) for group in groups]:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_matrix(ops: Iterable[str] | None = None, backends: Sequence[str] = BACKENDS, target: str = "x86",
               chunk: int = 32, progress: Callable[[str], None] | None = None) -> list[BackendRun]:
    """The coverage matrix: the named ops (all by default) through each backend."""
    cases = make_cases(ops)
    return [run_backend(b, cases, target, chunk, progress) for b in backends]

