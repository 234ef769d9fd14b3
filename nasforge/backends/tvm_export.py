"""The torch side of the TVM backend: a GraphModule to a Relax IRModule, or a SpecError naming the spec node.

``torch.export`` captures the network, a decomposition table rewrites the aten ops that TVM's Relax importer
(``from_exported_program``) has no converter for, or converts wrongly, into ops it handles (a few converters
are replaced outright), and the importer builds the Relax module with the weights as runtime inputs
(``keep_params_as_input``), so the weights are saved beside the compiled library instead of being baked in. Any failure is reported in the spec's words: every exported aten node
remembers the fx node it came from (``meta["from_node"]``), and the fx builder put the nasforge op and the
node path on every fx node.

This module imports torch and tvm; nothing that loads a compiled artifact imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import fx

from nasforge.errors import SpecError
from nasforge.ops.fft import computed_directly


@dataclass
class RelaxProgram:
    """What the compile worker needs (the Relax module as JSON) and what the artifact keeps (the weights)."""

    module_json: str
    param_names: list[str]
    params: list[Any]  # numpy arrays, in the order the Relax ``main`` takes them after the inputs


# -- decompositions -------------------------------------------------------------------------------------
#
# Each rewrite below answers a failure measured by running every op example of the vocabulary through this
# backend (torch 2.13, TVM 0.27): an aten op the importer has no converter for, or one it converts wrongly.
# A rewrite returns NotImplemented where the op is fine as it is; torch then keeps the op unchanged.

aten = torch.ops.aten


def _is_int(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _amax(x: torch.Tensor, dim: Sequence[int] = (), keepdim: bool = False) -> torch.Tensor:
    """No converter for ``amax``: a chain of ``max.dim``, which has one (no dims means every dim)."""
    dims = sorted({d % max(x.dim(), 1) for d in (dim or range(x.dim()))}, reverse=True)
    out = x
    for d in dims:
        out = aten.max.dim(out, d, True)[0]
    if not keepdim:
        for d in dims:
            out = out.squeeze(d)
    return out


def _amin(x: torch.Tensor, dim: Sequence[int] = (), keepdim: bool = False) -> torch.Tensor:
    return -_amax(-x, dim, keepdim)


def _adaptive_max_pool2d(x: torch.Tensor, output_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """No converter for ``adaptive_max_pool2d``: a max pool where the bins tile the input evenly, else
    one ``max.dim`` per output bin (PyTorch's bins: ``[floor(i*H/OH), ceil((i+1)*H/OH))``)."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    oh, ow = int(output_size[0]), int(output_size[1])
    if h % oh == 0 and w % ow == 0:
        return aten.max_pool2d_with_indices.default(x, [h // oh, w // ow], [h // oh, w // ow])
    rows_v, rows_i = [], []
    for i in range(oh):
        h0, h1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        vals, idxs = [], []
        for j in range(ow):
            w0, w1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            value, arg = aten.max.dim(x[..., h0:h1, w0:w1].flatten(-2), -1, True)
            vals.append(value)
            idxs.append((arg // (w1 - w0) + h0) * w + arg % (w1 - w0) + w0)
        rows_v.append(torch.cat(vals, -1))
        rows_i.append(torch.cat(idxs, -1))
    return torch.stack(rows_v, -2), torch.stack(rows_i, -2)


def _div(a: Any, b: Any) -> Any:
    """Integer / integer is a float division in torch; the importer emits an integer one."""
    if _is_int(a) and (_is_int(b) or isinstance(b, int)):
        real = torch.get_default_dtype()
        return aten.div.Tensor(a.to(real), b.to(real) if isinstance(b, torch.Tensor) else float(b))
    return NotImplemented


def _div_mode(a: Any, b: Any, rounding_mode: str | None = None) -> Any:
    """An integer tensor // a Python int: the importer makes the int an int32 constant beside an int64 tensor."""
    if _is_int(a) and isinstance(b, int):
        return aten.div.Tensor_mode(a, torch.full((), b, dtype=a.dtype), rounding_mode=rounding_mode)
    return NotImplemented


def _select(x: torch.Tensor, dim: int, index: int) -> Any:
    """A negative index: the importer's ``take(mode="fast")`` reads out of bounds instead of from the end."""
    if index < 0:
        return aten.select.int(x, dim, index + int(x.shape[dim]))
    return NotImplemented


def _group_norm(x: torch.Tensor, weight: Any, bias: Any, n: int, c: int, hw: int, group: int, eps: float) -> Any:
    """No affine parameters: the importer's converter fails on the absent weight; pass ones and zeros."""
    if weight is None or bias is None:
        weight = torch.ones(c, dtype=x.dtype) if weight is None else weight
        bias = torch.zeros(c, dtype=x.dtype) if bias is None else bias
        return aten.native_group_norm.default(x, weight, bias, n, c, hw, group, eps)
    return NotImplemented


def _clamp(x: torch.Tensor, lo: Any = None, hi: Any = None) -> Any:
    """An integer clamp with one bound: the importer turns the missing bound into an infinite integer."""
    if _is_int(x) and (lo is None) != (hi is None):
        info = torch.iinfo(x.dtype)
        return aten.clamp.default(x, info.min if lo is None else lo, info.max if hi is None else hi)
    return NotImplemented


def _index(x: torch.Tensor, indices: Sequence[Any]) -> Any:
    """Index tensors the importer mis-broadcasts (different shapes, or several dims after leading full
    slices, as trilinear interpolation makes): make every index explicit and of one shape."""
    lead = next((k for k, i in enumerate(indices) if i is not None), len(indices))
    rest = list(indices[lead:])
    shapes = {tuple(i.shape) for i in rest if i is not None}
    if any(i is None for i in rest) or (len(shapes) <= 1 and (lead == 0 or all(len(s) <= 1 for s in shapes))):
        return NotImplemented
    shape = tuple(int(d) for d in x.shape[:lead]) + tuple(torch.broadcast_shapes(*shapes))
    explicit = []
    for d in range(lead):
        view = [1] * len(shape)
        view[d] = shape[d]
        explicit.append(torch.arange(shape[d]).view(view).expand(shape))
    return aten.index.Tensor(x, explicit + [i.expand(shape) for i in rest])


def _bool_compare(op: Any) -> Callable[..., Any]:
    """Comparing booleans: TVM's LLVM codegen emits a float compare on i1 and fails; compare as int32."""
    def rewrite(a: Any, b: Any) -> Any:
        if isinstance(a, torch.Tensor) and a.dtype == torch.bool:
            other = b.to(torch.int32) if isinstance(b, torch.Tensor) else int(b)
            return op(a.to(torch.int32), other)
        return NotImplemented
    return rewrite


def decomposition_table() -> dict[Any, Callable[..., Any]]:
    """torch's default (core ATen) table plus the rewrites above."""
    table = torch.export.default_decompositions()
    table.update({
        aten.amax.default: _amax, aten.amin.default: _amin,
        aten.adaptive_max_pool2d.default: _adaptive_max_pool2d,
        aten.div.Tensor: _div, aten.div.Tensor_mode: _div_mode, aten.select.int: _select,
        aten.native_group_norm.default: _group_norm, aten.clamp.default: _clamp, aten.index.Tensor: _index,
    })
    for op in (aten.eq.Scalar, aten.ne.Scalar, aten.eq.Tensor, aten.ne.Tensor):
        table[op] = _bool_compare(op)
    return table


# -- converters -----------------------------------------------------------------------------------------

def _matmul_in_input_dtype(node: fx.Node, importer: Any) -> Any:
    """``mm``/``bmm``/``matmul`` keeping the operands' dtype: TVM 0.27's converters fix ``out_dtype`` to
    float32, so a float64 (or float16) product came back float32."""
    from tvm import relax

    a, b = importer.env[node.args[0]], importer.env[node.args[1]]
    return importer.block_builder.emit(relax.op.linear_algebra.matmul(a, b, out_dtype=a.ty.dtype.dtype))


def _addmm_in_input_dtype(node: fx.Node, importer: Any) -> Any:
    """``beta * x + alpha * (y @ z)`` in the operands' dtype (the stock converter computes y @ z in float32)."""
    from tvm import relax

    x, y, z = (importer.env[a] for a in node.args[:3])
    alpha, beta = node.kwargs.get("alpha", 1), node.kwargs.get("beta", 1)
    dtype = y.ty.dtype.dtype
    emit = importer.block_builder.emit
    out = emit(relax.op.linear_algebra.matmul(y, z, out_dtype=dtype))
    if alpha != 1:
        out = emit(relax.op.multiply(out, relax.const(alpha, dtype)))
    if beta == 0:
        return out
    return emit(relax.op.add(x if beta == 1 else emit(relax.op.multiply(x, relax.const(beta, dtype))), out))


CONVERTERS: dict[str, Callable[[fx.Node, Any], Any]] = {
    "mm.default": _matmul_in_input_dtype, "bmm.default": _matmul_in_input_dtype,
    "matmul.default": _matmul_in_input_dtype, "addmm.default": _addmm_in_input_dtype,
}
"""Converters that replace TVM's own for these aten ops (passed as the importer's ``custom_convert_map``)."""


# -- export ---------------------------------------------------------------------------------------------

def export(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor],
           dynamic_batch: bool = False) -> torch.export.ExportedProgram:
    """``torch.export`` the module (batch axis symbolic if asked) and decompose it for TVM's importer."""
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=65536)
        first = example_inputs[0].shape[0] if example_inputs and example_inputs[0].dim() else None
        dynamic_shapes = tuple({0: batch} if t.dim() and t.shape[0] == first else None for t in example_inputs)
    try:
        with computed_directly():  # TVM 0.27 imports no aten._fft_* (and has no complex tensors)
            program = torch.export.export(gm, tuple(example_inputs), dynamic_shapes=dynamic_shapes, strict=False)
        return program.run_decompositions(decomposition_table())
    except SpecError:
        raise
    except Exception as err:  # torch.export raises many types; each is the user's network failing to export
        from nasforge.backends.torchio import lowering_error

        raise lowering_error("tvm", gm, example_inputs, err) from err


def node_origin(node: fx.Node, gm: fx.GraphModule) -> tuple[str, str]:
    """The (nasforge op, spec node path) an exported aten node came from.

    ``meta["from_node"]`` is a chain of the nodes each export stage rewrote; its last link lies in the
    caller's GraphModule, whose nodes carry the spec's op and path. A module built elsewhere falls back to
    the innermost ``nn_module_stack`` entry or the fx node's name.
    """
    by_name = {n.name: n for n in gm.graph.nodes}
    source = node.meta.get("from_node")
    origin: fx.Node | None = None
    while source:
        link = source[-1] if isinstance(source, list) else source
        if link.graph_id == id(gm.graph) and link.name in by_name:
            origin = by_name[link.name]
        source = link.from_node
    if origin is not None and "nasforge_path" in origin.meta:
        return str(origin.meta["nasforge_op"]), str(origin.meta["nasforge_path"])
    stack = node.meta.get("nn_module_stack") or {}
    path = next((p for p, _ in reversed(list(stack.values())) if p), None)
    name = origin.name if origin is not None else node.name
    return str(getattr(node.target, "__name__", node.target)), path or name


def _unsupported(node: fx.Node, gm: fx.GraphModule, why: str) -> SpecError:
    from nasforge.ops import all_ops

    op, path = node_origin(node, gm)
    limits = getattr(all_ops().get(op), "backend_limits", {}) or {}
    aten_name = getattr(node.target, "__name__", str(node.target))
    return SpecError(f"the tvm backend cannot lower op {op!r}", node_path=path,
                     expected="aten ops TVM's Relax importer converts", found=f"aten {aten_name}: {why}",
                     hint=limits.get("tvm") or "compile this network with another backend (inductor, onnxruntime)")


# -- import ---------------------------------------------------------------------------------------------

def to_relax(program: torch.export.ExportedProgram, gm: fx.GraphModule) -> RelaxProgram:
    """Import the exported program into Relax with the weights detached as runtime inputs.

    Ops without a converter are refused before import (the importer would assert on the whole set at
    once); a converter that raises is attributed to the first node the importer had not finished.
    """
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    importer = ExportedProgramImporter()
    calls = [n for n in program.graph.nodes if n.op == "call_function"]
    for node in calls:
        if node.target.__name__ not in importer.convert_map:
            raise _unsupported(node, gm, "TVM 0.27 has no converter for it")
    try:
        module = importer.from_exported_program(program, True, False, False, dict(CONVERTERS))
    except Exception as err:  # a converter's assertion or TVM's shape check: attribute it, never show it raw
        failed = next((n for n in calls if n not in importer.env), calls[-1] if calls else None)
        if failed is None:
            raise SpecError("TVM's Relax importer failed on this network",
                            found=f"{type(err).__name__}: {_first_line(err)}") from err
        raise _unsupported(failed, gm, f"{type(err).__name__}: {_first_line(err)}") from err
    module, detached = relax.frontend.detach_params(module)
    names = [name for name, _ in program.named_parameters()]
    params = [p.detach().cpu().numpy() for _, p in program.named_parameters()]
    if len(detached.get("main", [])) != len(names):
        raise SpecError("TVM's importer and torch.export disagree on the network's parameters",
                        expected=f"{len(names)} parameters", found=str(len(detached.get("main", []))))
    return RelaxProgram(tvm.ir.save_json(module), names, params)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return next((line for line in text.splitlines() if line.strip()), type(err).__name__)[:300]


# -- per-node probes (which spec node a target cannot generate code for) ------------------------------

@dataclass
class NodeProbe:
    """One spec node as a network of its own, imported into Relax."""

    op: str
    path: str
    module_json: str


def node_probes(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> list[NodeProbe]:
    """A one-node Relax module per distinct spec node (op, attributes, input shapes), in graph order.

    Code generation fails on TVM's fused TIR functions, whose names no longer say which spec node they came
    from; building each node alone finds it. Only run after a failed build (it exports every distinct node).
    """
    values: dict[fx.Node, Any] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            values[n] = result = super().run_node(n)
            return result

    with torch.no_grad():
        Recorder(gm).run(*example_inputs)
    seen: set[tuple[Any, ...]] = set()
    probes = []
    for node in gm.graph.nodes:
        inputs = node.all_input_nodes
        if "nasforge_path" not in node.meta or not all(isinstance(values[a], torch.Tensor) for a in inputs):
            continue
        what = repr(gm.get_submodule(node.target)) if node.op == "call_module" else str(node.target)
        key = (what, str(fx.node.map_arg((node.args, node.kwargs), lambda _: "*")),
               tuple((tuple(values[a].shape), values[a].dtype) for a in inputs))
        if key in seen:
            continue
        seen.add(key)
        graph = fx.Graph()
        env = {a: graph.placeholder(f"in{k}") for k, a in enumerate(inputs)}
        graph.output(graph.node_copy(node, lambda a: env[a]))
        sub = fx.GraphModule(gm, graph)
        try:
            program = to_relax(export(sub, [values[a] for a in inputs]), sub)
        except SpecError:
            continue  # a node TVM cannot even import is reported before any build
        probes.append(NodeProbe(str(node.meta["nasforge_op"]), str(node.meta["nasforge_path"]), program.module_json))
    return probes
