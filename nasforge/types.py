"""Tensor types: shapes whose dimensions are integers or symbols (the batch ``B``), and a dtype.

Shape inference runs on symbolic shapes so that ``nasforge show`` prints ``[B, 64, 56, 56]`` and one
checked spec serves every batch size. A symbolic dimension is a monomial ``coef * B * T ...``: enough
for flattening a batch-carrying axis or reshaping ``[B, N, C] -> [B*N, C]`` and back, without becoming a
computer-algebra system. Counting (MACs, bytes) substitutes concrete values for the symbols.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Union

DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "bool")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4, "bool": 1}
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass(frozen=True, order=True)
class Sym:
    """A symbolic dimension ``coef * prod(symbols)``; ``symbols`` is sorted so equal dims compare equal."""

    symbols: tuple[str, ...]
    coef: int = 1

    @staticmethod
    def of(name: str) -> "Sym":
        return Sym((name,), 1)

    def __str__(self) -> str:
        body = "*".join(self.symbols)
        return body if self.coef == 1 else f"{self.coef}*{body}"

    __repr__ = __str__

    def __mul__(self, other: "Dim") -> "Dim":
        if isinstance(other, Sym):
            return Sym(tuple(sorted(self.symbols + other.symbols)), self.coef * other.coef)
        if other == 0:
            return 0
        return Sym(self.symbols, self.coef * int(other))

    __rmul__ = __mul__

    def __add__(self, other: "Dim") -> "Dim":
        if isinstance(other, Sym) and other.symbols == self.symbols:
            return Sym(self.symbols, self.coef + other.coef)
        if other == 0:
            return self
        raise ValueError(f"cannot add symbolic dimension {self} and {other}")

    __radd__ = __add__

    def divide(self, other: "Dim") -> "Dim":
        """Exact division; raises ValueError where the result would not be a monomial."""
        if isinstance(other, Sym):
            rest = list(self.symbols)
            for s in other.symbols:
                if s not in rest:
                    raise ValueError(f"cannot divide {self} by {other}")
                rest.remove(s)
            if self.coef % other.coef:
                raise ValueError(f"cannot divide {self} by {other}")
            coef = self.coef // other.coef
            return Sym(tuple(rest), coef) if rest else coef
        if other == 0 or self.coef % other:
            raise ValueError(f"cannot divide {self} by {other} exactly")
        return Sym(self.symbols, self.coef // other)

    def evaluate(self, bindings: Mapping[str, int]) -> int:
        value = self.coef
        for s in self.symbols:
            value *= bindings.get(s, 1)
        return value


Dim = Union[int, Sym]


def dim_str(d: Dim) -> str:
    return str(d)


def dim_mul(dims: Iterable[Dim]) -> Dim:
    """Product of dimensions, symbolic where any factor is."""
    result: Dim = 1
    for d in dims:
        result = d * result if isinstance(d, Sym) else result * d
    return result


def dim_div(a: Dim, b: Dim) -> Dim:
    """Exact quotient ``a / b``; raises ValueError when it does not divide."""
    if isinstance(a, Sym):
        return a.divide(b)
    if isinstance(b, Sym):
        raise ValueError(f"cannot divide {a} by symbolic {b}")
    if b == 0 or a % b:
        raise ValueError(f"{a} is not divisible by {b}")
    return a // b


def is_static(d: Dim) -> bool:
    return isinstance(d, int)


@dataclass(frozen=True)
class TensorType:
    """The type of one tensor in the IR: its shape (ints and symbols) and dtype name."""

    shape: tuple[Dim, ...]
    dtype: str = "float32"

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        dims = ", ".join(dim_str(d) for d in self.shape)
        suffix = "" if self.dtype == "float32" else f" {self.dtype}"
        return f"[{dims}]{suffix}"

    __repr__ = __str__

    def numel(self, bindings: Mapping[str, int] | None = None) -> int:
        """Number of elements with symbols replaced by ``bindings`` (1 where unbound)."""
        return math.prod(concrete(d, bindings or {}) for d in self.shape)

    def nbytes(self, bindings: Mapping[str, int] | None = None) -> int:
        return self.numel(bindings) * DTYPE_BYTES[self.dtype]

    def concrete_shape(self, bindings: Mapping[str, int] | None = None) -> tuple[int, ...]:
        return tuple(concrete(d, bindings or {}) for d in self.shape)

    def with_shape(self, shape: Iterable[Dim]) -> "TensorType":
        return TensorType(tuple(shape), self.dtype)


def concrete(d: Dim, bindings: Mapping[str, int]) -> int:
    return d.evaluate(bindings) if isinstance(d, Sym) else int(d)
