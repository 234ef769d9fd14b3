"""Dense linear algebra: ``linear`` (a fully connected layer on the last axis), ``matmul`` and ``einsum``.

MAC convention: one multiply-accumulate per term of each contraction, as torch's FlopCounterMode counts
its ``mm``/``bmm`` kernels (2 FLOPs per MAC). Products without a contraction (outer or element-wise
products) are element-wise work: FLOPs, not MACs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from nasforge.errors import SpecError
from nasforge.ops.registry import (Attr, Call, Example, OpContext, OpDef, broadcast_shapes, nn, prod, register,
                                   require_float, require_positive)
from nasforge.types import Dim, TensorType, dim_str


@register
class Linear(OpDef):
    """``y = x W^T + b`` on the last axis; any leading axes are batch axes."""

    name = "linear"
    category = "linear"
    attrs = (
        Attr("out", "int", doc="output features"),
        Attr("bias", "bool", True, "add a learned bias"),
    )
    flop_counted = True
    examples = (
        Example({"out": 7}, [(2, 5)]),
        Example({"out": 3, "bias": False}, [(2, 4, 6)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "out")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        require_float(ctx, ctx.x)
        if ctx.x.rank < 1:
            raise ctx.fail("linear needs at least a 1-D input", expected="rank >= 1", found=str(ctx.x))
        if not isinstance(ctx.x.shape[-1], int):
            raise ctx.fail("linear needs a static feature axis", expected="an integer last dimension",
                           found=str(ctx.x))
        return [ctx.x.with_shape(ctx.x.shape[:-1] + (ctx["out"],))]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        p = {"weight": (ctx["out"], ctx.x.shape[-1])}
        if ctx["bias"]:
            p["bias"] = (ctx["out"],)
        return p

    def macs(self, ctx: OpContext) -> int:
        return prod(ctx.outputs[0].concrete_shape()) * ctx.x.shape[-1]

    def lower(self, ctx: OpContext) -> nn.Module:
        return nn.Linear(ctx.x.shape[-1], ctx["out"], bias=ctx["bias"])



@register
class Matmul(OpDef):
    """``a @ b`` with ``torch.matmul`` semantics: 1-D operands are promoted (a vector on the left gets a
    leading 1, on the right a trailing 1, removed again from the result), leading axes broadcast as batch
    axes. MACs are ``batch * n * k * m``. Note: torch's FlopCounterMode does not count matrix-vector or
    dot products (``aten.mv``/``aten.dot``: a 1-D right operand), so it reports 0 there; these MACs don't."""

    name = "matmul"
    category = "linear"
    arity = (2, 2)
    flop_counted = True
    examples = (
        Example({}, [(2, 3, 4), (2, 4, 5)]),
        Example({}, [(2, 1, 3, 4), (5, 4, 6)]),
        Example({}, [(3, 4), (2, 4, 6)]),
        Example({}, [(4,), (4, 5)]),
        Example({}, [(5,), (2, 5, 3)], symbolic_batch=False),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        a, b = ctx.inputs
        if a.rank == 0 or b.rank == 0:
            raise ctx.fail("matmul needs operands of rank >= 1", expected="vectors, matrices or batches of them",
                           found=f"{a} @ {b}")
        if a.dtype != b.dtype:
            raise ctx.fail("matmul operands must share a dtype", expected="equal dtypes", found=f"{a} @ {b}")
        k_b = b.shape[0] if b.rank == 1 else b.shape[-2]
        if a.shape[-1] != k_b:
            which = "only" if b.rank == 1 else "second-to-last"
            raise ctx.fail("matmul inner dimensions differ", found=f"{a} @ {b}",
                           expected=f"b's {which} dimension equal to a's last ({dim_str(a.shape[-1])})")
        batch = broadcast_shapes(ctx, a.shape[:-2], b.shape[:-2])
        return [a.with_shape(batch + a.shape[-2:-1] + b.shape[-1:] * (b.rank >= 2))]

    def macs(self, ctx: OpContext) -> int:
        return ctx.outputs[0].numel() * ctx.x.shape[-1]

    def lower(self, ctx: OpContext) -> Call:
        return Call(torch.matmul)


ELLIPSIS = "..."
Key = str | int
"""An einsum index: a subscript letter, or the position of a dimension covered by ``...`` (right-aligned)."""


@dataclass(frozen=True)
class Equation:
    """A parsed einsum equation: each operand's subscripts (letters and ``...``) and the output's, ``None``
    where the output is implicit (``...`` then the letters used once, in alphabetical order, as in torch)."""

    operands: tuple[tuple[str, ...], ...]
    output: tuple[str, ...] | None

    @staticmethod
    def parse(text: str) -> "Equation":
        """Parse ``'bij,bjk->bik'``-style text (spaces ignored); raise SpecError on malformed text."""
        lhs, arrow, rhs = text.replace(" ", "").partition("->")

        def fail(message: str, found: str) -> SpecError:
            return SpecError(f"einsum equation {text!r}: {message}", key="equation", found=found,
                             expected="subscripts like 'bij,bjk->bik': letters, at most one '...' per term, "
                                      "',' between operands and at most one '->'")

        def terms(part: str, where: str) -> tuple[str, ...]:
            out: list[str] = []
            i = 0
            while i < len(part):
                if part.startswith(ELLIPSIS, i):
                    if ELLIPSIS in out:
                        raise fail(f"{where} has more than one '...'", part)
                    out.append(ELLIPSIS)
                    i += len(ELLIPSIS)
                elif part[i].isascii() and part[i].isalpha():
                    out.append(part[i])
                    i += 1
                else:
                    raise fail(f"{where} has the invalid character {part[i]!r}", part)
            return tuple(out)

        if "->" in rhs:
            raise fail("more than one '->'", text)
        operands = tuple(terms(op, f"operand {i}") for i, op in enumerate(lhs.split(",")))
        if not arrow:
            return Equation(operands, None)
        output = terms(rhs, "the output")
        used = {t for op in operands for t in op}
        for i, t in enumerate(output):
            if t in output[:i]:
                raise fail(f"output subscript {t!r} appears twice", rhs)
            if t != ELLIPSIS and t not in used:
                raise fail(f"output subscript {t!r} appears in no operand", rhs)
        return Equation(operands, output)


@dataclass
class Binding:
    """An equation bound to operand shapes: each operand's indices of size != 1 (repeated subscripts
    collapsed to their diagonal; size-1 dimensions broadcast), the output indices and every index's size."""

    operands: list[dict[Key, Dim]]
    output: list[Key]
    sizes: dict[Key, Dim]

    @staticmethod
    def of(ctx: OpContext, eq: Equation, shapes: Sequence[tuple[Dim, ...]]) -> "Binding":
        if len(shapes) != len(eq.operands):
            raise ctx.fail("einsum equation and inputs disagree on the number of operands",
                           expected=f"{len(eq.operands)} input(s)", found=f"{len(shapes)} input(s)")
        n_ell = max([0] + [len(s) - len(t) + 1 for s, t in zip(shapes, eq.operands) if ELLIPSIS in t])
        operands: list[dict[Key, Dim]] = []
        sizes: dict[Key, Dim] = {}
        for i, (shape, terms) in enumerate(zip(shapes, eq.operands)):
            keys = _operand_keys(ctx, i, terms, shape, n_ell)
            seen: dict[Key, Dim] = {}
            own: dict[Key, Dim] = {}
            for key, size in zip(keys, shape):
                if seen.setdefault(key, size) != size:
                    raise ctx.fail(f"subscript {key!r} is repeated in operand {i} with different sizes",
                                   expected="equal sizes for a diagonal", found=str(TensorType(shape)))
                if size != 1:
                    if sizes.get(key, size) != size:
                        raise ctx.fail(f"einsum index {_key_name(key)} has inconsistent sizes",
                                       expected=f"size {dim_str(sizes[key])} (or 1, which broadcasts)",
                                       found=f"size {dim_str(size)} in operand {i}")
                    sizes[key] = own[key] = size
            operands.append(own)
        if eq.output is None:
            counts = [t for terms in eq.operands for t in terms if t != ELLIPSIS]
            output: list[Key] = list(range(n_ell)) + sorted(t for t in set(counts) if counts.count(t) == 1)
        else:
            output = [k for t in eq.output for k in (range(n_ell) if t == ELLIPSIS else [t])]
        return Binding(operands, output, sizes)

    def output_shape(self) -> tuple[Dim, ...]:
        return tuple(self.sizes.get(k, 1) for k in self.output)

    def cost(self) -> tuple[int, int]:
        """``(MACs, other FLOPs)`` of torch.einsum's evaluation, on concrete sizes: operands contracted
        pairwise left to right; an index summed over and left in only one operand is summed there first
        (adds, not MACs); a pair sharing indices to sum is one ``bmm``; a pair without any is an
        element-wise product."""
        out = set(self.output)
        ops = [dict(o) for o in self.operands]
        remaining = {k: sum(k in o for o in ops) for k in self.sizes if k not in out}
        if len(ops) == 1:
            return 0, (prod(list(ops[0].values())) if set(ops[0]) - out else 0)
        macs = other = 0
        while len(ops) > 1:
            a, b = ops.pop(0), ops.pop(0)
            summed: list[Key] = []
            presum: dict[int, list[Key]] = {0: [], 1: []}
            for k, n in remaining.items():
                if k in a and k in b:
                    remaining[k] = n - 1
                    if n - 1 == 1:
                        summed.append(k)
                        remaining[k] = 0
                elif n == 1 and (k in a or k in b):
                    presum[0 if k in a else 1].append(k)
                    remaining[k] = 0
            for side, keys in ((a, presum[0]), (b, presum[1])):
                if keys:
                    other += prod(list(side.values()))
                    for k in keys:
                        del side[k]
            merged = {**a, **b}
            if summed:
                macs += prod(list(a.values())) * prod([v for k, v in b.items() if k not in a])
            else:
                other += prod(list(merged.values()))
            ops.insert(0, {k: v for k, v in merged.items() if k not in summed})
        return macs, other


def _operand_keys(ctx: OpContext, i: int, terms: tuple[str, ...], shape: tuple[Dim, ...], n_ell: int) -> list[Key]:
    """The index of each axis of operand ``i``, checking its rank against its subscripts."""
    n_labels = len(terms) - (ELLIPSIS in terms)
    if len(shape) < n_labels or (ELLIPSIS not in terms and len(shape) != n_labels):
        raise ctx.fail(f"einsum operand {i} has the wrong rank for its subscripts {''.join(terms)!r}",
                       expected=f"rank {n_labels}" + (" or more" if ELLIPSIS in terms else ""),
                       found=str(TensorType(shape)))
    keys: list[Key] = []
    for t in terms:
        if t == ELLIPSIS:
            covered = len(shape) - n_labels
            keys.extend(range(n_ell - covered, n_ell))
        else:
            keys.append(t)
    return keys


def _key_name(key: Key) -> str:
    return repr(key) if isinstance(key, str) else f"'...' dimension {key}"


def einsum(*operands: torch.Tensor, equation: str) -> torch.Tensor:
    """``torch.einsum`` with the operands first: the form a :class:`Call` lowering passes them in."""
    return torch.einsum(equation, *operands)


@register
class Einsum(OpDef):
    """Einstein summation over one or more inputs with ``torch.einsum`` semantics: ``...`` ellipsis
    (broadcast), size-1 broadcasting, repeated subscripts for diagonals, and the implicit output (no
    ``->``: ``...`` then the letters used once, alphabetically, upper case first).

    MACs follow torch's own evaluation, which FlopCounterMode counts exactly: pairwise contractions left to
    right, each a ``bmm``. For a two-operand contraction where every index appears in both operands or in
    the output (``bij,bjk->bik``, ``bhqd,bhkd->bhqk``) that is the product of all distinct index sizes. It
    is less where torch does cheaper work: an index summed over that only one operand has is summed out
    first (``bij,bjk->bi`` costs ``b*i*j``, not ``b*i*j*k``); products with nothing to sum (outer products,
    ``ij,ij->ij``) and single-operand equations (traces, transposes, sums) have 0 MACs. Those sums and
    products count as one FLOP per element in ``flops``. With three or more operands the order is
    left to right (torch's default without opt_einsum)."""

    name = "einsum"
    category = "linear"
    attrs = (Attr("equation", "str", doc="subscripts, e.g. 'bij,bjk->bik' or '...ij,...jk'"),)
    arity = (1, None)
    flop_counted = True
    examples = (
        Example({"equation": "bij,bjk->bik"}, [(2, 3, 4), (2, 4, 5)]),
        Example({"equation": "bhqd,bhkd->bhqk"}, [(2, 3, 5, 4), (2, 3, 6, 4)]),
        Example({"equation": "...ij,...jk"}, [(2, 3, 4), (4, 5)]),
        Example({"equation": "i,j->ij"}, [(3,), (4,)]),
        Example({"equation": "bij,bjk->bi"}, [(2, 3, 4), (2, 4, 5)]),
        Example({"equation": "bii->bi"}, [(2, 3, 3)]),
        Example({"equation": "bi,ij,jk->bk"}, [(2, 3), (3, 4), (4, 5)]),
        Example({"equation": "bn, bn -> b"}, [((2, 6), "float64"), ((2, 6), "float64")]),
    )

    def check_attrs(self, attrs: dict) -> None:
        Equation.parse(attrs["equation"])

    def binding(self, ctx: OpContext) -> Binding:
        return Binding.of(ctx, Equation.parse(ctx["equation"]), [t.shape for t in ctx.inputs])

    def infer(self, ctx: OpContext) -> list[TensorType]:
        if len({t.dtype for t in ctx.inputs}) > 1:
            raise ctx.fail("einsum operands must share a dtype", expected="equal dtypes",
                           found=", ".join(str(t) for t in ctx.inputs))
        return [ctx.x.with_shape(self.binding(ctx).output_shape())]

    def macs(self, ctx: OpContext) -> int:
        return self.binding(ctx).cost()[0]

    def flops(self, ctx: OpContext) -> int:
        macs, other = self.binding(ctx).cost()
        return 2 * macs + other

    def lower(self, ctx: OpContext) -> Call:
        return Call(einsum, kwargs={"equation": ctx["equation"]})
