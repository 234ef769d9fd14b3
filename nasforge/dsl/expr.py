"""Arithmetic expressions inside spec values: ``$name`` and ``${ <expr> }``.

Specs are user input, so expressions are never handed to Python: ``eval``/``exec``/``ast`` would let a
spec run arbitrary code or exhaust memory. Instead a small tokenizer, a recursive-descent parser
(one function per precedence level) and a tree evaluator implement exactly this language:

* ``a if c else b``; ``or``; ``and``; ``not``; one comparison ``== != < <= > >=`` (no chains);
  ``+ -``; ``* / // %``; unary ``- +``; ``**`` (right-associative, ``-2**2 == -4``);
  postfix ``a[i]``, ``a[i:j]``; builtin calls ``f(x, y)``; literals (``1_000``, ``0.5``, ``1e-6``,
  ``'s'``/``"s"`` without escapes, ``true``/``false``/``null`` and the Python spellings), names,
  parentheses and list literals ``[a, b]``.
* Python semantics with two deliberate restrictions: ``/`` always gives a float (use ``//`` for integer
  division), and ``bool`` is not a number (``true + 1`` is an error; ``int(true)`` converts). ``and``/
  ``or``/``if`` use truthiness and short-circuit. Strings concatenate with ``+``; lists do no arithmetic.
* Every user mistake raises :class:`ExprError` carrying the character offset into the original YAML
  string, so the caller can point at the bad token. Size limits (source length, nesting, exponent,
  magnitude, list length) keep a hostile spec from hanging the compiler or overflowing the stack.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterator, Mapping, NamedTuple, NoReturn

from nasforge.errors import SpecError, did_you_mean

MAX_SOURCE_LENGTH = 1000
MAX_NESTING = 32  # brackets/``**`` inside each other; bounds parser recursion (~14 frames per level)
MAX_DEPTH = 100  # tree height; bounds evaluator recursion (left-leaning chains like 1+1+...+1)
MAX_MAGNITUDE = 2**63
MAX_EXPONENT = 64
MAX_LIST_LENGTH = 10_000
_TOO_LARGE = f"a magnitude of at most 2**{MAX_MAGNITUDE.bit_length() - 1}"


@dataclass(eq=False)
class ExprError(SpecError):
    """An expression mistake; ``offset`` is the 0-based character offset in the original YAML string."""

    offset: int = 0


def _show(source: str) -> str:
    return repr(source if len(source) <= 80 else source[:77] + "...")


def _error(source: str, offset: int, what: str, expected: str | None = None,
           found: str | None = None, hint: str | None = None) -> ExprError:
    return ExprError(f"{what} in expression {_show(source)}", expected=expected, found=found,
                     hint=hint, offset=offset)


# ----------------------------------------------------------------------------------------- tokens

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<num>(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][+-]?[0-9_]+)?[A-Za-z0-9_.]*)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<str>'[^']*'|"[^"]*")
  | (?P<op>\*\*|//|==|!=|<=|>=|[-+*/%<>()\[\],:])
""", re.VERBOSE)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONSTANTS = {"true": True, "True": True, "false": False, "False": False, "null": None, "None": None}
_KEYWORDS = {"if", "else", "and", "or", "not", *_CONSTANTS}
_COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")
_CHAR_HINTS = {
    "=": "use '==' to compare",
    "!": "use 'not' for negation",
    "}": "'${...}' must be the whole value; it cannot be embedded in a longer string",
}


class _Token(NamedTuple):
    kind: str  # num, str, name, kw, op, end
    text: str
    offset: int
    value: Any = None


def _tokenize(source: str, begin: int, end: int) -> list[_Token]:
    tokens: list[_Token] = []
    pos = begin
    while pos < end:
        m = _TOKEN.match(source, pos, end)
        if m is None:
            ch = source[pos]
            if ch in "'\"":
                raise _error(source, pos, "unterminated string", f"a closing {ch}", "end of expression")
            raise _error(source, pos, f"unexpected character {ch!r}",
                         "an operator, number, string, name or bracket", repr(ch), _CHAR_HINTS.get(ch))
        kind, text = m.lastgroup or "", m.group()
        if kind == "num":
            try:
                value = float(text) if any(c in text for c in ".eE") else int(text)
            except ValueError:
                raise _error(source, pos, f"invalid number literal {text!r}",
                             "a number such as 42, 0.5, 1e-6 or 1_000", repr(text)) from None
            if not abs(value) <= MAX_MAGNITUDE:
                raise _error(source, pos, "number literal is too large",
                             _TOO_LARGE, repr(text))
            tokens.append(_Token("num", text, pos, value))
        elif kind == "str":
            tokens.append(_Token("str", text, pos, text[1:-1]))
        elif kind == "name":
            tokens.append(_Token("kw" if text in _KEYWORDS else "name", text, pos))
        elif kind == "op":
            tokens.append(_Token("op", text, pos))
        pos = m.end()
    tokens.append(_Token("end", "", end))
    return tokens


def _describe_token(tok: _Token) -> str:
    return "end of expression" if tok.kind == "end" else repr(tok.text)


# ------------------------------------------------------------------------------------------- tree

@dataclass(frozen=True)
class _Node:
    offset: int  # where errors about this node point (an operator, a name, an opening bracket)


@dataclass(frozen=True)
class _Const(_Node):
    value: Any


@dataclass(frozen=True)
class _Name(_Node):
    name: str


@dataclass(frozen=True)
class _Unary(_Node):
    op: str  # '-', '+', 'not'
    operand: _Node


@dataclass(frozen=True)
class _Binary(_Node):
    op: str  # arithmetic, comparison, 'and', 'or'
    left: _Node
    right: _Node


@dataclass(frozen=True)
class _Cond(_Node):
    cond: _Node
    then: _Node
    other: _Node


@dataclass(frozen=True)
class _Index(_Node):
    target: _Node
    index: _Node


@dataclass(frozen=True)
class _Slice(_Node):
    target: _Node
    lo: _Node | None
    hi: _Node | None


@dataclass(frozen=True)
class _Call(_Node):
    func: str
    args: tuple[_Node, ...]


@dataclass(frozen=True)
class _List(_Node):
    items: tuple[_Node, ...]


def _walk(root: _Node) -> Iterator[tuple[_Node, int]]:
    """Every node with its depth, iteratively: the tree may be deeper than we allow recursion to go."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        yield node, depth
        for f in fields(node):
            child = getattr(node, f.name)
            for c in child if isinstance(child, tuple) else (child,):
                if isinstance(c, _Node):
                    stack.append((c, depth + 1))


# ----------------------------------------------------------------------------------------- parser

class _Parser:
    """Recursive descent, one method per precedence level, lowest first."""

    def __init__(self, source: str, begin: int, end: int) -> None:
        self.source = source
        self.tokens = _tokenize(source, begin, end)
        self.pos = 0
        self.nesting = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.pos]

    def fail(self, tok: _Token, what: str, expected: str, hint: str | None = None) -> NoReturn:
        raise _error(self.source, tok.offset, what, expected, _describe_token(tok), hint)

    def at(self, *texts: str) -> bool:
        return self.tok.kind in ("op", "kw") and self.tok.text in texts

    def accept(self, *texts: str) -> _Token | None:
        if not self.at(*texts):
            return None
        self.pos += 1
        return self.tokens[self.pos - 1]

    def expect(self, text: str, opener: _Token, expected: str | None = None) -> None:
        if self.accept(text):
            return
        if self.tok.kind == "end":
            raise _error(self.source, opener.offset, f"unbalanced {opener.text!r}: it is never closed",
                         repr(text), "end of expression")
        self.fail(self.tok, f"expected {expected or repr(text)}", expected or repr(text))

    def nest(self, delta: int) -> None:
        self.nesting += delta
        if self.nesting > MAX_NESTING:
            self.fail(self.tok, "expression is nested too deeply", f"at most {MAX_NESTING} levels")

    def parse(self) -> _Node:
        if self.tok.kind == "end":
            self.fail(self.tok, "empty expression", "an expression between '${' and '}'")
        node = self.expr()
        tok = self.tok
        if tok.kind == "op" and tok.text in ")]":
            self.fail(tok, f"unbalanced {tok.text!r}: nothing to close", "an operator or the end")
        if tok.kind != "end":
            self.fail(tok, f"unexpected {_describe_token(tok)} after a complete expression",
                      "an operator or the end", "values must be joined by an operator")
        for node_, depth in _walk(node):
            if depth > MAX_DEPTH:
                raise _error(self.source, node_.offset, "expression is nested too deeply",
                             f"at most {MAX_DEPTH} levels of operators", f"{depth} levels")
        return node

    def expr(self) -> _Node:
        self.nest(+1)
        node = self.chain(("or",), lambda: self.chain(("and",), self.negation))
        if tok := self.accept("if"):
            cond = self.chain(("or",), lambda: self.chain(("and",), self.negation))
            if not self.accept("else"):
                self.fail(self.tok, "expected 'else' in 'a if condition else b'", "'else'")
            node = _Cond(tok.offset, cond, node, self.expr())
        self.nest(-1)
        return node

    def chain(self, ops: tuple[str, ...], operand: Callable[[], _Node]) -> _Node:
        node = operand()
        while tok := self.accept(*ops):
            node = _Binary(tok.offset, tok.text, node, operand())
        return node

    def negation(self) -> _Node:
        nots = []
        while tok := self.accept("not"):
            nots.append(tok)
        node = self.comparison()
        for tok in reversed(nots):
            node = _Unary(tok.offset, "not", node)
        return node

    def comparison(self) -> _Node:
        node = self.arith()
        if tok := self.accept(*_COMPARISONS):
            node = _Binary(tok.offset, tok.text, node, self.arith())
            if self.at(*_COMPARISONS):
                self.fail(self.tok, "chained comparisons are not supported", "a single comparison",
                          "write 'a < b and b < c'")
        return node

    def arith(self) -> _Node:
        return self.chain(("+", "-"), lambda: self.chain(("*", "/", "//", "%"), self.unary))

    def unary(self) -> _Node:
        signs = []
        while tok := self.accept("-", "+"):
            signs.append(tok)
        node = self.postfix()
        if tok := self.accept("**"):  # the exponent may carry its own sign: 2 ** -1
            self.nest(+1)
            node = _Binary(tok.offset, "**", node, self.unary())
            self.nest(-1)
        for tok in reversed(signs):
            node = _Unary(tok.offset, tok.text, node)
        return node

    def postfix(self) -> _Node:
        node = self.atom()
        while opener := self.accept("["):
            lo = None if self.at(":") else self.expr()
            if self.accept(":"):
                node = _Slice(opener.offset, node, lo, None if self.at("]") else self.expr())
            else:
                node = _Index(opener.offset, node, lo)  # type: ignore[arg-type]  # lo set: not at ':'
            self.expect("]", opener)
        return node

    def atom(self) -> _Node:
        tok = self.tok
        if tok.kind in ("num", "str", "kw") and (tok.kind != "kw" or tok.text in _CONSTANTS):
            self.pos += 1
            return _Const(tok.offset, _CONSTANTS[tok.text] if tok.kind == "kw" else tok.value)
        if tok.kind == "name":
            self.pos += 1
            if opener := self.accept("("):
                return self.call(tok, opener)
            return _Name(tok.offset, tok.text)
        if opener := self.accept("("):
            node = self.expr()
            self.expect(")", opener)
            return node
        if opener := self.accept("["):
            return _List(opener.offset, self.items("]", opener))
        self.fail(tok, f"unexpected {_describe_token(tok)}", "a value (number, string, name, '(' or '[')")

    def items(self, close: str, opener: _Token) -> tuple[_Node, ...]:
        items = []
        while not self.at(close):
            items.append(self.expr())
            if not self.accept(","):
                break
        self.expect(close, opener, f"',' or {close!r}")
        return tuple(items)

    def call(self, name: _Token, opener: _Token) -> _Call:
        if name.text not in _BUILTINS:
            raise _error(self.source, name.offset, f"unknown function {name.text!r}",
                         "a builtin function: " + ", ".join(sorted(_BUILTINS)), repr(name.text),
                         did_you_mean(name.text, _BUILTINS.keys()))
        args = self.items(")", opener)
        lo, hi, _ = _BUILTINS[name.text]
        if not lo <= len(args) <= (hi or len(args)):
            wanted = f"{lo} to {hi}" if hi and hi != lo else f"at least {lo}" if hi is None else str(lo)
            raise _error(self.source, name.offset, f"{name.text}() takes {wanted} argument(s)",
                         f"{wanted} argument(s)", f"{len(args)} argument(s)")
        return _Call(name.offset, name.text, args)


# --------------------------------------------------------------------------------------- builtins

def _is_num(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return "list" if isinstance(value, (list, tuple)) else type(value).__name__


def _describe(value: object) -> str:
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    text = repr(value)
    return f"{_kind(value)} {text if len(text) <= 40 else text[:37] + '...'}"


class _ArgError(Exception):
    """A builtin's complaint about its arguments; the evaluator adds the source and offset."""

    def __init__(self, what: str, expected: str, found: object) -> None:
        super().__init__(what)
        self.what, self.expected, self.found = what, expected, _describe(found)


def _num(fn: str, value: object) -> Any:
    if not _is_num(value):
        raise _ArgError(f"{fn}() needs a number", "a number", value)
    return value


def _int(fn: str, value: Any) -> int:
    if not _is_int(value):
        raise _ArgError(f"{fn}() needs an integer", "an int", value)
    return int(value)


def _seq(fn: str, value: object) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise _ArgError(f"{fn}() needs a list", "a list", value)
    return value


def _extremum(fn: str, pick: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        values = _seq(fn, args[0]) if len(args) == 1 else args
        if not values:
            raise _ArgError(f"{fn}() of an empty list", "a non-empty list", [])
        return pick(_num(fn, v) for v in values)
    return run


def _convert(fn: str, kind: type) -> Callable[[Any], Any]:
    """int()/float() also accept bools: the explicit way out of 'bool is not a number'."""
    return lambda x: kind(x if isinstance(x, bool) else _num(fn, x))


def _len(value: Any) -> int:
    if not isinstance(value, (list, tuple, str)):
        raise _ArgError("len() needs a list or a string", "a list or a string", value)
    return len(value)


def _round(value: Any, digits: Any = None) -> Any:
    if digits is not None and not -MAX_EXPONENT <= _int("round", digits) <= MAX_EXPONENT:
        raise _ArgError("round() digits out of range", f"an int in [-{MAX_EXPONENT}, {MAX_EXPONENT}]", digits)
    return round(_num("round", value), digits)


def _domain(fn: str, func: Callable[[float], float], ok: Callable[[Any], bool], need: str) -> Callable[[Any], float]:
    def run(x: Any) -> float:
        if not ok(_num(fn, x)):
            raise _ArgError(f"{fn}() needs {need}", need, x)
        return func(x)
    return run


def _range(*args: Any) -> list[int]:
    bounds = [_int("range", a) for a in args]
    if len(bounds) == 3 and bounds[2] == 0:
        raise _ArgError("range() step must not be zero", "a non-zero step", 0)
    span = range(*bounds)
    if len(span) > MAX_LIST_LENGTH:
        raise _ArgError("range() is too long", f"at most {MAX_LIST_LENGTH} elements", len(span))
    return list(span)


def _make_divisible(v: Any, divisor: Any = 8, min_value: Any = None) -> Any:
    """Round ``v`` to a multiple of ``divisor``, never dropping more than 10% (the MobileNet rule)."""
    v = _num("make_divisible", v)
    if _int("make_divisible", divisor) <= 0:
        raise _ArgError("make_divisible() divisor must be positive", "a positive int", divisor)
    if min_value is not None:
        _num("make_divisible", min_value)
    new_v = max(min_value or divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


# name -> (min args, max args or None for unbounded, implementation); not looked up in the env
_BUILTINS: dict[str, tuple[int, int | None, Callable[..., Any]]] = {
    "min": (1, None, _extremum("min", min)),
    "max": (1, None, _extremum("max", max)),
    "sum": (1, 1, lambda xs: sum(_num("sum", x) for x in _seq("sum", xs))),
    "len": (1, 1, _len),
    "abs": (1, 1, lambda x: abs(_num("abs", x))),
    "int": (1, 1, _convert("int", int)),
    "float": (1, 1, _convert("float", float)),
    "round": (1, 2, _round),
    "ceil": (1, 1, lambda x: math.ceil(_num("ceil", x))),
    "floor": (1, 1, lambda x: math.floor(_num("floor", x))),
    "sqrt": (1, 1, _domain("sqrt", math.sqrt, lambda x: x >= 0, "a non-negative number")),
    "log2": (1, 1, _domain("log2", math.log2, lambda x: x > 0, "a positive number")),
    "range": (1, 3, _range),
    "make_divisible": (1, 3, _make_divisible),
}

# -------------------------------------------------------------------------------------- evaluator

_ARITH: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
    "//": operator.floordiv, "%": operator.mod, "**": operator.pow,
}
_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}


def _equal(a: Any, b: Any) -> bool:
    """Python equality, except that a bool never equals a number (true != 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(map(_equal, a, b))
    return bool(a == b)


class _Evaluator:
    def __init__(self, source: str, env: Mapping[str, Any]) -> None:
        self.source, self.env = source, env

    def fail(self, node: _Node, what: str, expected: str | None = None, found: str | None = None,
             hint: str | None = None) -> NoReturn:
        raise _error(self.source, node.offset, what, expected, found, hint)

    def eval(self, node: _Node) -> Any:
        match node:
            case _Const():
                return node.value
            case _Name():
                if node.name not in self.env:
                    self.fail(node, f"undefined parameter {node.name!r}", "a declared parameter",
                              repr(node.name), did_you_mean(node.name, [k for k in self.env if isinstance(k, str)]))
                return self.env[node.name]
            case _Binary(op="and"):
                left = self.eval(node.left)
                return self.eval(node.right) if left else left
            case _Binary(op="or"):
                left = self.eval(node.left)
                return left if left else self.eval(node.right)
            case _Binary():
                return self.binary(node, self.eval(node.left), self.eval(node.right))
            case _Unary(op="not"):
                return not self.eval(node.operand)
            case _Unary():
                value = self.eval(node.operand)
                if not _is_num(value):
                    self.fail(node, f"unary {node.op!r} needs a number", "a number", _describe(value))
                return -value if node.op == "-" else value
            case _Cond():
                return self.eval(node.then if self.eval(node.cond) else node.other)
            case _Index():
                return self.index(node, self.eval(node.target), self.eval(node.index))
            case _Slice():
                target = self.sequence(node, self.eval(node.target))
                lo, hi = (None if n is None else self.integer(n, self.eval(n)) for n in (node.lo, node.hi))
                return list(target[lo:hi])
            case _List():
                return [self.eval(item) for item in node.items]
            case _Call():
                args = [self.eval(arg) for arg in node.args]
                try:
                    return self.checked(node, _BUILTINS[node.func][2](*args))
                except _ArgError as e:
                    self.fail(node, e.what, e.expected, e.found)
                except OverflowError:
                    self.fail(node, "number too large", _TOO_LARGE)
        raise AssertionError(f"unknown node {node!r}")  # unreachable: the parser builds only the above

    def binary(self, node: _Binary, a: Any, b: Any) -> Any:
        op = node.op
        if op in ("==", "!="):
            return _equal(a, b) == (op == "==")
        if op in _ORDER:
            if not (_is_num(a) and _is_num(b) or isinstance(a, str) and isinstance(b, str)):
                self.fail(node, f"cannot compare {_kind(a)} and {_kind(b)} with {op!r}",
                          "two numbers or two strings", f"{_describe(a)} {op} {_describe(b)}")
            return _ORDER[op](a, b)
        if op == "+" and isinstance(a, str) and isinstance(b, str):
            return a + b
        if not (_is_num(a) and _is_num(b)):
            hint = "booleans are not numbers; convert with int(x)" if isinstance(a, bool) or isinstance(b, bool) \
                else "lists do not support arithmetic" if _kind(a) == "list" or _kind(b) == "list" else None
            self.fail(node, f"unsupported operand types for {op!r}: {_kind(a)} and {_kind(b)}", "numbers",
                      f"{_describe(a)} {op} {_describe(b)}", hint)
        if op == "**" and b > MAX_EXPONENT:
            self.fail(node, "exponent is too large", f"an exponent of at most {MAX_EXPONENT}", _describe(b))
        try:
            return self.checked(node, _ARITH[op](a, b))
        except ZeroDivisionError:
            self.fail(node, "division by zero", "a non-zero divisor", _describe(b))
        except OverflowError:
            self.fail(node, "result is too large", _TOO_LARGE)

    def checked(self, node: _Node, value: Any) -> Any:
        """Refuse results outside [-2**63, 2**63] (and complex ones): later stages assume sane sizes."""
        if isinstance(value, complex):
            self.fail(node, "result is not a real number", "a real number", _describe(value))
        if _is_num(value) and not abs(value) <= MAX_MAGNITUDE:
            self.fail(node, "result is too large", _TOO_LARGE, _describe(value))
        return value

    def sequence(self, node: _Node, target: Any) -> list[Any] | tuple[Any, ...]:
        if not isinstance(target, (list, tuple)):
            self.fail(node, f"cannot index {_kind(target)}", "a list", _describe(target))
        return target

    def integer(self, node: _Node, value: Any) -> int:
        if not _is_int(value):
            self.fail(node, "list index must be an integer", "an int", _describe(value))
        return int(value)

    def index(self, node: _Index, target: Any, index: Any) -> Any:
        n = len(self.sequence(node, target))
        if not -n <= self.integer(node.index, index) < n:
            self.fail(node, f"list index {index} out of range",
                      f"an index in [{-n}, {n - 1}]" if n else "a non-empty list", str(index))
        return target[index]


# ------------------------------------------------------------------------------------- public API

@dataclass(frozen=True)
class Expr:
    """A parsed expression: immutable, so one parse can be evaluated under many parameter bindings."""

    source: str
    _root: _Node = field(repr=False, compare=False)
    _names: frozenset[str] = field(repr=False, compare=False)

    def evaluate(self, env: Mapping[str, Any]) -> Any:
        """The value under ``env`` (parameter name -> value); raises ExprError on any mistake."""
        return _Evaluator(self.source, env).eval(self._root)

    def names(self) -> set[str]:
        """Free parameter names, so callers can order parameter resolution and report cycles."""
        return set(self._names)


def is_expression(value: object) -> bool:
    """Whether a spec value is an expression: every string starting with '$' (a lone '$' is an error)."""
    return isinstance(value, str) and value.startswith("$")


def parse_expression(text: str) -> Expr:
    """Parse a whole ``$name`` or ``${ <expr> }`` spec string; offsets in errors index into ``text``."""
    if len(text) > MAX_SOURCE_LENGTH:
        raise _error(text, 0, "expression is too long", f"at most {MAX_SOURCE_LENGTH} characters",
                     f"{len(text)} characters")
    if text.startswith("${"):
        if not text.endswith("}") or len(text) < 3:
            raise _error(text, 0, "unterminated expression: '${' is never closed", "'}' at the end",
                         repr(text[-1:]))
        root = _Parser(text, 2, len(text) - 1).parse()
    elif _IDENT.fullmatch(text, 1):
        root = _Name(1, text[1:])
    else:
        raise _error(text, 1, "'$' must be followed by a parameter name or '{'", "'$name' or '${expression}'",
                     repr(text[1:2]) if len(text) > 1 else "end of string",
                     "plain strings cannot start with '$'")
    return Expr(text, root, frozenset(n.name for n, _ in _walk(root) if isinstance(n, _Name)))


def evaluate(text: str, env: Mapping[str, Any]) -> Any:
    """Parse and evaluate in one step (for one-off values; parse once to evaluate many times)."""
    return parse_expression(text).evaluate(env)
