"""Constant folding: compute once what does not depend on the input's values, and keep it as a buffer.

Inference recomputes some tensors on every call from parameters and static shapes alone: a weight-norm
kernel ``g * v / ||v||``, an S4D convolution kernel from its discretized state matrices, a Hyena implicit
filter (an MLP over fixed positional features), RoPE's cos/sin tables of a fixed sequence length, scalar
arithmetic on parameters in a traced graph. This pass finds them by constant propagation: a value is
**constant** when it is a ``get_attr`` (a parameter or buffer), a literal, or the result of a pure call
whose arguments are all constant. Random ops, in-place methods and calls with side effects never are.

The maximal constant tensors that non-constant code reads are evaluated once and registered as persistent
buffers (so ``state_dict`` carries them and an artifact reloads them); the code that computed them and the
parameters only it read are removed. Constants that are mere views or casts of one parameter
(``gamma.view(-1, 1, 1)``) are left as they are: folding them would copy a weight and save nothing.

The fx builder hides most of this inside op modules (``call_module`` nodes), so each module that is not a
``torch.nn`` built-in, and is called from one node, is traced with fx for the types of its inputs (from the
fx builder's metadata or ``ShapeProp``'s, see :mod:`~nasforge.compiler.passes.common`): while tracing, an
input's rank, dtype, device and every size its type fixes are plain values (``x.shape[-1]`` of
``[B, 64, 256]`` is 256; the batch stays symbolic), so code over static sizes runs once, at trace time, and
the tensors it makes are constants too. Then

* if the module's whole output is constant, the node becomes a ``get_attr`` of ``<path>.value``, a buffer
  of a :class:`FoldedConstant` at the node's path;
* if part of it is, the module is replaced (at the same path) by its traced ``GraphModule`` with the
  constants as buffers (``folded_<name>``, or fx's ``_tensor_constant<k>`` for those made while tracing).

A module whose code cannot be traced (Python control flow on tensor values, on the batch size, or on the
shape of an intermediate tensor) is kept as it is. Each rewrite is checked before it is kept: the original
module and its replacement run on a random input of the node's types (batch 1, same RNG seed for both) and
must agree to 1e-4 of the output's largest magnitude; a constant must also match on a second input. One
that disagrees is dropped and counted as ``rejected``.

The result is specialized to the input types the graph was built for - dtype, device and fixed sizes, the
batch left free - as the rest of a built network already is: optimize on the device it will run on.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import fx, nn
from torch.fx.node import map_arg

from nasforge.compiler.passes.common import (call_counts, finish, has_side_effect, module_of, node_type,
                                             random_inputs, remove_unused_attributes, replace_node, target_name)
from nasforge.types import TensorType, is_static

_VIEWS = frozenset({
    "view", "reshape", "unsqueeze", "squeeze", "expand", "expand_as", "transpose", "permute", "t", "flatten",
    "unflatten", "movedim", "contiguous", "clone", "detach", "to", "float", "half", "double", "bfloat16", "type",
    "type_as", "view_as", "reshape_as", "narrow", "select", "chunk", "split", "unbind", "getitem", "getattr",
})
"""Calls that move or relabel data without arithmetic: a constant made only of these is not worth a buffer."""

TOLERANCE = 1e-4
"""Relative (and, scaled by 0.1, absolute) tolerance of the check each rewrite passes."""


class FoldedConstant(nn.Module):
    """Holds a folded value as the persistent buffer ``value`` at the path of the node it replaces."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value)

    def extra_repr(self) -> str:
        return f"value={tuple(self.value.shape)} {self.value.dtype}"


@dataclass
class _Propagation:
    """The constant nodes of one graph with their values, and those of them that did arithmetic."""

    values: dict[fx.Node, Any] = field(default_factory=dict)
    work: set[fx.Node] = field(default_factory=set)
    """Constant nodes that did arithmetic (or read a constant that did)."""


def _sizes(ttype: TensorType) -> tuple[int | None, ...]:
    return tuple(int(d) if is_static(d) else None for d in ttype.shape)


class _StaticProxy(fx.Proxy):
    """A traced input whose fixed sizes, rank, dtype and device are plain Python values while tracing, so
    code like ``table[:, :x.shape[-1]]`` or ``torch.arange(x.shape[1], device=x.device)`` traces, and what
    it computes from them is constant. A free size (the batch) stays a proxy: ``x.size(0)`` in the graph."""

    def __init__(self, node: fx.Node, tracer: fx.proxy.TracerBase, ttype: TensorType, device: torch.device) -> None:
        super().__init__(node, tracer)
        self.static_sizes = _sizes(ttype)
        self.static_dtype = getattr(torch, ttype.dtype)
        self.static_device = device

    def size(self, dim: int | None = None) -> Any:
        sizes = self.static_sizes
        if dim is not None:
            known = sizes[dim]
            return known if known is not None else self.tracer.create_proxy("call_method", "size", (self, dim), {})
        if None not in sizes:
            return torch.Size(sizes)
        return tuple(self.size(i) for i in range(len(sizes)))

    @property
    def shape(self) -> Any:
        return self.size()

    def dim(self) -> int:
        return len(self.static_sizes)

    @property
    def ndim(self) -> int:
        return len(self.static_sizes)

    @property
    def dtype(self) -> torch.dtype:
        return self.static_dtype

    @property
    def device(self) -> torch.device:
        return self.static_device


class _StaticTracer(fx.Tracer):
    """fx's tracer with parameter shapes constant and the first inputs as :class:`_StaticProxy`."""

    def __init__(self, types: list[TensorType], device: torch.device) -> None:
        super().__init__(param_shapes_constant=True)
        self.types = list(types)
        self.device = device

    def proxy(self, node: fx.Node) -> fx.Proxy:
        if node.op == "placeholder" and self.types:
            return _StaticProxy(node, self, self.types.pop(0), self.device)
        return super().proxy(node)


def _never_constant(node: fx.Node) -> bool:
    """Side effects and randomness (a functional dropout is random unless its flag says otherwise)."""
    return has_side_effect(node) or (node.op == "call_function" and "dropout" in target_name(node))


def _evaluate(gm: fx.GraphModule, node: fx.Node, prop: _Propagation) -> tuple[bool, Any]:
    """``(True, value)`` for a constant node (evaluating it), ``(False, None)`` otherwise."""
    if node.op == "get_attr":
        return True, _fetch(gm, str(node.target))
    if node.op not in ("call_function", "call_method", "call_module") or _never_constant(node):
        return False, None
    inputs = node.all_input_nodes
    if any(n not in prop.values for n in inputs):
        return False, None
    args = map_arg(node.args, lambda n: prop.values[n])
    kwargs = map_arg(node.kwargs, lambda n: prop.values[n])
    try:
        with torch.no_grad():
            if node.op == "call_function":
                value = node.target(*args, **kwargs)
            elif node.op == "call_method":
                value = getattr(args[0], node.target)(*args[1:], **kwargs)
            else:
                value = gm.get_submodule(str(node.target))(*args, **kwargs)
    except Exception:          # a call that fails on its constants is left to fail (or not) at run time
        return False, None
    if node.op == "call_module" or target_name(node) not in _VIEWS or any(n in prop.work for n in inputs):
        prop.work.add(node)
    return True, value


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    owner, _, leaf = target.rpartition(".")
    return getattr(gm.get_submodule(owner), leaf)


def _device(module: nn.Module) -> torch.device:
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _propagate(gm: fx.GraphModule) -> _Propagation:
    prop = _Propagation()
    for node in gm.graph.nodes:
        known, value = _evaluate(gm, node, prop)
        if known:
            prop.values[node] = value
    return prop


def _foldable(gm: fx.GraphModule, prop: _Propagation) -> list[fx.Node]:
    """Constant tensors worth a buffer that non-constant code (or the output) reads, in graph order."""
    return [node for node in gm.graph.nodes if node in prop.work and isinstance(prop.values[node], torch.Tensor)
            and any(user not in prop.values for user in node.users)]


def _flat(value: Any) -> list[Any]:
    return [v for item in value for v in _flat(item)] if isinstance(value, (tuple, list)) else [value]


def _close(expected: Any, found: Any) -> bool:
    if not isinstance(expected, torch.Tensor):
        return expected == found
    if not isinstance(found, torch.Tensor) or expected.shape != found.shape or expected.dtype != found.dtype:
        return False
    if not expected.is_floating_point():
        return torch.equal(expected, found)
    error = (expected - found).abs().max() if expected.numel() else 0.0
    scale = expected.abs().max() if expected.numel() else 0.0
    return bool(error <= TOLERANCE * scale + TOLERANCE / 10)


def _agrees(original: nn.Module, replacement: nn.Module | torch.Tensor, types: Sequence[TensorType]) -> bool:
    """Whether the replacement computes what the module does: on one random input of ``types`` (batch 1),
    and on a second one where the replacement is a constant (the output must not depend on the input)."""
    seeds = (0, 1) if isinstance(replacement, torch.Tensor) else (0,)
    try:
        for seed in seeds:
            inputs = tuple(t.to(_device(original)) for t in random_inputs(types, seed))
            outputs = []
            for fn in (original, replacement):
                with torch.random.fork_rng(), torch.no_grad():
                    torch.manual_seed(seed)
                    outputs.append(_flat(fn(*inputs) if isinstance(fn, nn.Module) else fn))
            expected, found = outputs
            if len(expected) != len(found) or not all(map(_close, expected, found)):
                return False
    except Exception:          # a replacement that cannot even run on valid inputs is wrong, not fatal
        return False
    return True


def _forward_defaults(module: nn.Module, given: int) -> dict[str, Any] | None:
    """Defaults of the ``forward`` parameters a call with ``given`` positional arguments leaves out (traced as
    the constants they are, so ``if positions is None`` takes the branch the call takes); None where the
    signature has ``*args`` / ``**kwargs`` or a required parameter is missing."""
    params = list(inspect.signature(module.forward).parameters.values())
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params) or given > len(params):
        return None
    missing = params[given:]
    if any(p.default is inspect.Parameter.empty for p in missing):
        return None
    return {p.name: p.default for p in missing}


def _trace(module: nn.Module, types: list[TensorType]) -> tuple[fx.GraphModule, bool] | None:
    """``module`` traced for inputs of ``types`` (see :class:`_StaticProxy`), and whether tracing itself
    computed tensors (code on static sizes runs while tracing; fx keeps its results as ``_tensor_constant``
    attributes, made persistent buffers here so they move with ``.to()`` and load with ``state_dict``).
    None where fx cannot trace it (Python control flow on values, ``*args``, a required argument missing)."""
    defaults = _forward_defaults(module, len(types))
    if defaults is None:
        return None
    tracer = _StaticTracer(types, _device(module))
    try:
        traced = fx.GraphModule(module, tracer.trace(module, defaults or None), type(module).__name__)
    except Exception:          # untraceable Python: the module stays as it is
        return None
    baked = [n for n in traced.graph.nodes if n.op == "get_attr" and str(n.target).startswith("_tensor_constant")]
    for node in baked:
        value = getattr(traced, str(node.target))
        delattr(traced, str(node.target))
        traced.register_buffer(str(node.target), value)
    return traced, bool(baked)


def _fold_module(module: nn.Module, types: list[TensorType]) -> tuple[str, Any] | None:
    """Fold a custom module called with inputs of ``types``: ``("constant", tensor)`` when its output does
    not depend on its inputs' values, ``("module", traced)`` when part of it folded; None otherwise."""
    found = _trace(module, types)
    if found is None:
        return None
    traced, baked = found
    prop = _propagate(traced)
    result = next(n for n in traced.graph.nodes if n.op == "output").args[0]
    if isinstance(result, fx.Node) and isinstance(prop.values.get(result), torch.Tensor):
        return "constant", prop.values[result].detach().clone()
    nodes = _foldable(traced, prop)
    if not nodes and not baked:
        return None
    for node in nodes:
        _replace_with_buffer(traced, node, f"folded_{node.name}", prop.values[node])
    remove_unused_attributes(traced)
    finish(traced)
    return "module", traced


def _replace_with_buffer(gm: fx.GraphModule, node: fx.Node, target: str, value: torch.Tensor) -> None:
    """Keep ``value`` in a new persistent buffer ``target`` and read it where ``node`` computed it."""
    owner, _, leaf = target.rpartition(".")
    gm.get_submodule(owner).register_buffer(leaf, value.detach().clone())
    _read_instead(gm, node, target)


def _read_instead(gm: fx.GraphModule, node: fx.Node, target: str) -> None:
    """Replace ``node`` by a ``get_attr`` of ``target``; erase the code that only computed it and the
    attributes only that code read."""
    with gm.graph.inserting_before(node):
        attr = gm.graph.get_attr(target)
    attr.meta.update(node.meta)
    inputs = node.all_input_nodes
    replace_node(node, attr)
    _erase_dead(gm, inputs)


def _erase_dead(gm: fx.GraphModule, nodes: list[fx.Node]) -> None:
    """Erase those of ``nodes`` nothing uses any more, then what only they used, upwards; delete the
    attributes only the erased ``get_attr`` nodes read. (Only what a fold left behind: the dead-code pass
    reports the rest.)"""
    work, erased, attrs = list(nodes), set(), set()
    while work:
        node = work.pop()
        if node in erased or node.users or _never_constant(node):
            continue
        work.extend(node.all_input_nodes)
        if node.op == "get_attr":
            attrs.add(str(node.target))
        gm.graph.erase_node(node)
        erased.add(node)
    still_read = {str(n.target) for n in gm.graph.nodes if n.op in ("get_attr", "call_module")}
    for target in attrs:
        if not any(target == r or target.startswith(r + ".") for r in still_read):
            owner, _, leaf = target.rpartition(".")
            delattr(gm.get_submodule(owner), leaf)


def _is_builtin(module: nn.Module) -> bool:
    """``torch.nn``'s own modules (fx's leaf modules): nothing inside them to fold."""
    return type(module).__module__.startswith(("torch.nn", "torch.ao.nn")) and not isinstance(module, nn.Sequential)


def _fold_modules(gm: fx.GraphModule, counts: dict[str, int]) -> None:
    """Trace and fold each op module called once with inputs of known types (see the module docstring)."""
    calls = call_counts(gm)
    for node in list(gm.graph.nodes):
        module = module_of(gm, node)
        types = [node_type(arg) for arg in node.args]
        if (module is None or _is_builtin(module) or calls[id(module)] != 1 or node.kwargs or not types
                or None in types):
            continue
        folded = _fold_module(module, types)
        if folded is None:
            continue
        kind, replacement = folded
        if not _agrees(module, replacement, types):
            counts["rejected"] += 1
            continue
        path = str(node.target)
        if kind == "constant":
            gm.add_submodule(path, FoldedConstant(replacement))
            _read_instead(gm, node, f"{path}.value")
            counts["nodes"] += 1
        else:
            gm.add_submodule(path, replacement)
            counts["modules"] += 1


def fold_constants(gm: fx.GraphModule) -> dict[str, int]:
    """Fold constants in ``gm`` and in its op modules, in place (see the module docstring); counts."""
    gm.eval()
    counts = {"nodes": 0, "modules": 0, "rejected": 0}
    prop = _propagate(gm)
    for node in _foldable(gm, prop):
        _replace_with_buffer(gm, node, f"_folded_{node.name}", prop.values[node])
        counts["nodes"] += 1
    _fold_modules(gm, counts)
    finish(gm)
    return counts
