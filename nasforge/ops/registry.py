"""The op registry: one entry per primitive op, holding everything about that op.

An entry is a subclass of :class:`OpDef` decorated with :func:`register`. It declares

* ``name``, ``category`` and a docstring (what ``nasforge ops`` prints),
* ``attrs``: the typed attribute schema with defaults that the spec language validates against,
* ``arity``: how many inputs it takes,
* ``infer``: the shape/dtype rule, raising :class:`~nasforge.errors.ShapeError` with expected/found,
* ``params``: parameter names and shapes (counted by analysis, checked against the built module),
* ``macs`` / ``flops``: the cost model (FLOPs default to 2 x MACs),
* ``lower``: the torch lowering the fx builder emits, an ``nn.Module`` or a :class:`Call`,
* ``examples``: small concrete uses the test-suite runs through torch to hold the entry honest.

Adding an op is one entry plus (usually) nothing else: the DSL, analysis, fx builder, CLI and the
generic op tests all read the registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
from torch import nn

from nasforge.errors import ShapeError, SpecError, did_you_mean
from nasforge.types import FLOAT_DTYPES, Dim, TensorType

REQUIRED = object()
"""Sentinel default: the attribute must be given."""


@dataclass(frozen=True)
class Attr:
    """One typed attribute of an op.

    ``type`` is a ``|``-separated union of: ``int``, ``float``, ``bool``, ``str``, ``ints`` (list of
    int), ``floats`` (list of numbers), ``shape`` (list of int or symbol names), ``none``, ``any``.
    ``choices`` restricts a ``str`` (or any scalar) to an enumeration.
    """

    name: str
    type: str
    default: Any = REQUIRED
    doc: str = ""
    choices: tuple[Any, ...] | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe(self) -> str:
        text = f"{self.name}: {self.type}"
        if self.choices:
            text += " in {" + ", ".join(map(str, self.choices)) + "}"
        if not self.required:
            text += f" = {self.default!r}"
        return text


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float))) and not isinstance(v, bool)


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": _is_int,
    "float": _is_number,
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "ints": lambda v: isinstance(v, (list, tuple)) and all(_is_int(x) for x in v),
    "floats": lambda v: isinstance(v, (list, tuple)) and all(_is_number(x) for x in v),
    "shape": lambda v: isinstance(v, (list, tuple)) and all(_is_int(x) or isinstance(x, str) for x in v),
    "none": lambda v: v is None,
    "any": lambda v: True,
}


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return f"bool {v!r}"
    if isinstance(v, (list, tuple)):
        return f"list {list(v)!r}"
    return f"{type(v).__name__} {v!r}"


def check_attr_value(attr: Attr, value: Any) -> Any:
    """Validate (and normalize) one attribute value; raise SpecError naming expected and found."""
    kinds = attr.type.split("|")
    if not any(_TYPE_CHECKS[k](value) for k in kinds):
        raise SpecError(
            f"attribute {attr.name!r} has the wrong type",
            expected=attr.type,
            found=_type_name(value),
        )
    if attr.choices is not None and isinstance(value, (str, int, float)) and value not in attr.choices:
        raise SpecError(
            f"attribute {attr.name!r} has an unsupported value",
            expected="one of " + ", ".join(repr(c) for c in attr.choices),
            found=repr(value),
            hint=did_you_mean(str(value), [str(c) for c in attr.choices]),
        )
    if isinstance(value, tuple):
        value = list(value)
    if "float" in kinds and _is_int(value) and "int" not in kinds:
        value = float(value)
    return value


@dataclass(frozen=True)
class Call:
    """A stateless lowering: ``fn(*inputs, *args, **kwargs)``, or ``fn([inputs...], *args, **kwargs)``
    with ``pack_inputs`` (for ``torch.cat``-like functions)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    pack_inputs: bool = False


@dataclass(frozen=True)
class Example:
    """A concrete use of an op for the generic op tests: attributes and input types.

    ``int_high`` bounds random integer inputs (token ids); ``train`` runs the module in training mode.
    """

    attrs: Mapping[str, Any]
    inputs: Sequence[tuple[tuple[int, ...], str] | tuple[int, ...]]
    int_high: int = 10
    train: bool = False
    symbolic_batch: bool = True
    """Whether axis 0 of the first input may be the symbolic batch ``B`` in this example."""

    def input_types(self) -> list[TensorType]:
        types = []
        for spec in self.inputs:
            if len(spec) == 2 and isinstance(spec[1], str):
                types.append(TensorType(tuple(spec[0]), spec[1]))
            else:
                types.append(TensorType(tuple(spec)))  # type: ignore[arg-type]
        return types


@dataclass
class OpContext:
    """What an op's rules see: validated attributes, input types and (after inference) output types."""

    attrs: dict[str, Any]
    inputs: list[TensorType]
    outputs: list[TensorType] = field(default_factory=list)
    path: str = ""

    def __getitem__(self, key: str) -> Any:
        return self.attrs[key]

    @property
    def x(self) -> TensorType:
        """The first input, the usual operand."""
        return self.inputs[0]

    def fail(self, message: str, expected: str | None = None, found: str | None = None,
             hint: str | None = None) -> "ShapeError":
        """Build the error a shape rule raises: ``raise ctx.fail(...)``."""
        return ShapeError(message, expected=expected, found=found, hint=hint)


class OpDef:
    """Base class of registry entries. Override what differs; defaults fit a parameter-free op."""

    name: ClassVar[str] = ""
    category: ClassVar[str] = "misc"
    attrs: ClassVar[tuple[Attr, ...]] = ()
    arity: ClassVar[tuple[int, int | None]] = (1, 1)
    train_only: ClassVar[bool] = False
    """True for ops that are the identity at inference (dropout, drop-path): passes may remove them."""
    backend_limits: ClassVar[dict[str, str]] = {}
    """Backends known not to lower this op, each with what happens then (``{"tvm": "..."}``); shown by
    ``nasforge ops NAME`` and read by the backends to fail with a clear message."""
    returns_sequence: ClassVar[bool] = False
    """True where the lowering returns a tuple/list even for one output (``torch.split``), so the fx
    builder always indexes into it."""
    flop_counted: ClassVar[bool] = False
    """True where torch's FlopCounterMode counts this op, so tests compare our MACs with it."""
    examples: ClassVar[tuple[Example, ...]] = ()

    # -- schema -------------------------------------------------------------------------------
    @classmethod
    def attr_map(cls) -> dict[str, Attr]:
        return {a.name: a for a in cls.attrs}

    def validate_attrs(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Check names and types of the given attributes, fill defaults; raise SpecError otherwise."""
        schema = self.attr_map()
        out: dict[str, Any] = {}
        for key, value in given.items():
            if key not in schema:
                raise SpecError(
                    f"op {self.name!r} has no attribute {key!r}",
                    expected="one of " + (", ".join(schema) or "(no attributes)"),
                    found=repr(key),
                    hint=did_you_mean(key, list(schema)),
                    key=key,
                )
            try:
                out[key] = check_attr_value(schema[key], value)
            except SpecError as err:
                err.message = f"op {self.name!r}: {err.message}"
                err.key = key
                raise
        for attr in self.attrs:
            if attr.name not in out:
                if attr.required:
                    raise SpecError(
                        f"op {self.name!r} needs attribute {attr.name!r}",
                        expected=attr.describe(),
                        found="nothing",
                    )
                out[attr.name] = attr.default
        self.check_attrs(out)
        return out

    def check_attrs(self, attrs: dict[str, Any]) -> None:
        """Cross-attribute checks (e.g. positive sizes). Raise SpecError. Default: none."""

    def check_arity(self, n: int) -> None:
        lo, hi = self.arity
        if n < lo or (hi is not None and n > hi):
            want = str(lo) if lo == hi else (f"{lo} or more" if hi is None else f"{lo} to {hi}")
            raise SpecError(
                f"op {self.name!r} takes {want} input(s)", expected=f"{want} input(s)", found=f"{n}"
            )

    # -- rules --------------------------------------------------------------------------------
    def infer(self, ctx: OpContext) -> list[TensorType]:
        """Output types from input types. Default: one output with the first input's type."""
        return [ctx.x]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        """Trainable parameters as ``{name: shape}``, names as in the lowered module."""
        return {}

    def macs(self, ctx: OpContext) -> int:
        """Multiply-accumulates for one call, on concrete types (symbols bound)."""
        return 0

    def flops(self, ctx: OpContext) -> int:
        """Floating-point operations: 2 x MACs plus any non-MAC arithmetic the op declares."""
        return 2 * self.macs(ctx)

    def lower(self, ctx: OpContext) -> nn.Module | Call:
        raise NotImplementedError(f"op {self.name!r} has no torch lowering")

    # -- helpers --------------------------------------------------------------------------------
    def signature(self) -> str:
        return f"{self.name}(" + ", ".join(a.describe() for a in self.attrs) + ")"


_REGISTRY: dict[str, OpDef] = {}


def register(cls: type[OpDef]) -> type[OpDef]:
    """Class decorator: add an op to the vocabulary (names are unique)."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY:
        raise TypeError(f"op {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def get_op(name: str) -> OpDef:
    """Resolve an op name against the registry only; unknown names raise SpecError with suggestions."""
    _load_builtin_ops()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpecError(
            f"unknown op {name!r}",
            expected="an op from the registry (`nasforge ops` lists them)",
            found=repr(name),
            hint=did_you_mean(name, list(_REGISTRY)),
        ) from None


def all_ops() -> dict[str, OpDef]:
    _load_builtin_ops()
    return dict(sorted(_REGISTRY.items()))


def _load_builtin_ops() -> None:
    import nasforge.ops  # noqa: F401  (importing the package registers every built-in entry)


# -- shared helpers for shape rules ----------------------------------------------------------------

def normalize_axis(ctx: OpContext, axis: int, rank: int) -> int:
    """Map a possibly negative axis into ``[0, rank)``, failing clearly when out of range."""
    if not -rank <= axis < rank:
        raise ctx.fail(f"axis {axis} is out of range for a rank-{rank} tensor",
                       expected=f"an axis in [{-rank}, {rank - 1}]", found=str(axis))
    return axis % rank


def require_float(ctx: OpContext, t: TensorType, what: str = "input") -> None:
    """Fail unless ``t`` has a floating dtype (normalizations, activations, transcendental math)."""
    if t.dtype not in FLOAT_DTYPES:
        raise ctx.fail(f"{what} must be a floating-point tensor", expected="one of " + ", ".join(FLOAT_DTYPES),
                       found=str(t))


def expand_tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """``3 -> (3, 3)`` for an n-d op; a list must have exactly n entries."""
    if isinstance(value, int):
        return (value,) * n
    if len(value) != n:
        raise SpecError(f"attribute {name!r} needs {n} values", expected=f"an int or a list of {n} ints",
                        found=repr(list(value)), key=name)
    return tuple(value)


def numel(t: TensorType) -> int:
    """Element count of a concrete type (symbols count as 1)."""
    return t.numel()


def broadcast_shapes(ctx: OpContext, a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """NumPy broadcasting on symbolic shapes, with an error that shows both operands."""
    out: list[Dim] = []
    for i in range(max(len(a), len(b))):
        da = a[len(a) - 1 - i] if i < len(a) else 1
        db = b[len(b) - 1 - i] if i < len(b) else 1
        if da == db or db == 1:
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            raise ctx.fail(
                "input shapes do not broadcast",
                expected="shapes equal or 1 in every aligned dimension",
                found=" and ".join(str(TensorType(s)) for s in (a, b)),
            )
    return tuple(reversed(out))


def require_positive(attrs: Mapping[str, Any], *names: str) -> None:
    """Raise SpecError unless every named attribute (an int or list of ints, None allowed) is >= 1."""
    for name in names:
        value = attrs.get(name)
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(v is not None and not isinstance(v, str) and v <= 0 for v in values):
            raise SpecError(f"attribute {name!r} must be positive", expected="integers >= 1",
                            found=repr(value), key=name)


def prod(values: Sequence[int]) -> int:
    return math.prod(values)


__all__ = [
    "Attr", "Call", "Example", "OpContext", "OpDef", "REQUIRED", "register", "get_op", "all_ops",
    "normalize_axis", "require_float", "expand_tuple", "require_positive", "broadcast_shapes", "prod", "numel",
    "torch", "nn",
]
