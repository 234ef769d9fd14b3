"""Arithmetic expressions inside spec values: ``$name`` and ``${ <expr> }``.

Specs are user input, so expressions are never handed to Python: ``eval``/``exec``/``ast`` would let a
spec run arbitrary code or exhaust memory. Instead a small tokenizer, a Pratt (precedence-climbing)
parser and a tree evaluator implement exactly this language, lowest precedence first:

* ``a if c else b``; ``or``; ``and``; ``not``; one comparison ``== != < <= > >=`` (no chains);
  ``+ -``; ``* / // %``; unary ``- +``; ``**`` (right-associative, ``-2**2 == -4``); postfix
  ``a[i]``, ``a[i:j]``; builtin calls ``f(x, y)``; literals (``1_000``, ``0.5``, ``1e-6``, ``'s'``
  or ``"s"`` without escapes, ``true``/``false``/``null`` and the Python spellings), names,
  parentheses and list literals ``[a, b]``.
* Python semantics with two deliberate restrictions: ``/`` always gives a float (``//`` is integer
  division), and ``bool`` is not a number (``true + 1`` is an error, ``true == 1`` is false;
  ``int(true)`` converts). ``and``/``or``/``if`` use truthiness and short-circuit. Strings concatenate
  with ``+``; lists do no arithmetic.
* Every user mistake raises :class:`ExprError` with the character offset into the original YAML
  string, so the caller can point at the bad token. Limits on source length, nesting, exponent,
  magnitude and list length keep a hostile spec from hanging the compiler or overflowing the stack.
"""

from __future__ import annotations

import functools
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, NamedTuple, NoReturn

from nasforge.errors import SpecError, did_you_mean

MAX_SOURCE_LENGTH = 1000
MAX_NESTING = 64  # parser recursion (brackets, prefix operators, right operands); ~5 frames per level
MAX_DEPTH = 100  # tree height, which bounds evaluator recursion (left-leaning chains like 1+1+...+1)
MAX_MAGNITUDE = 2**63
MAX_EXPONENT = 64
MAX_LIST_LENGTH = 10_000
_TOO_LARGE = f"a magnitude of at most 2**{MAX_MAGNITUDE.bit_length() - 1}"


@dataclass(eq=False)
class ExprError(SpecError):
    """An expression mistake; ``offset`` is the 0-based character offset in the original YAML string."""

    offset: int = 0


def _error(source: str, offset: int, what: str, expected: str | None = None,
           found: str | None = None, hint: str | None = None) -> ExprError:
    shown = source if len(source) <= 80 else source[:77] + "..."
    return ExprError(f"{what} in expression {shown!r}", expected=expected, found=found, hint=hint,
                     offset=offset)


# ------------------------------------------------------------------------------------------ tokens

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<num>(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][+-]?[0-9_]+)?[A-Za-z0-9_.]*)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<str>'[^']*'|"[^"]*")
  | (?P<op>\*\*|//|==|!=|<=|>=|[-+*/%<>()\[\],:])
""", re.VERBOSE)  # a number swallows trailing letters so '4x' is reported as one bad literal
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONSTANTS = {"true": True, "True": True, "false": False, "False": False, "null": None, "None": None}
_COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")
# binding power of infix operators; prefix 'not' binds at 3 and prefix '-'/'+' at 7
_PREC = {"if": 0, "or": 1, "and": 2, **dict.fromkeys(_COMPARISONS, 4), "+": 5, "-": 5,
         "*": 6, "/": 6, "//": 6, "%": 6, "**": 8}
_KEYWORDS = {"if", "else", "and", "or", "not", *_CONSTANTS}
_CHAR_HINTS = {"=": "use '==' to compare", "!": "use 'not' for negation",
               "}": "'${...}' must be the whole value; it cannot be embedded in a longer string"}


class _Token(NamedTuple):
    kind: str  # num, str, name, kw (keywords and constants), op, end
    text: str
    offset: int
    value: Any = None

    def describe(self) -> str:
        return "end of expression" if self.kind == "end" else repr(self.text)


def _tokenize(source: str, begin: int, end: int) -> list[_Token]:
    tokens, pos = [], begin
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
                raise _error(source, pos, "number literal is too large", _TOO_LARGE, repr(text))
            tokens.append(_Token("num", text, pos, value))
        elif kind == "str":
            tokens.append(_Token("str", text, pos, text[1:-1]))
        elif kind != "space":
            tokens.append(_Token("kw" if text in _KEYWORDS else kind, text, pos))
        pos = m.end()
    tokens.append(_Token("end", "", end))
    return tokens


# -------------------------------------------------------------------------------------------- tree

@dataclass(frozen=True)
class _Node:
    """A tree node. ``kind`` is const, name, unary, binary, cond, index, slice, call or list; ``value``
    is the constant, name, operator or function; ``offset`` is where errors about the node point (its
    operator, name or opening bracket); ``args`` are the children."""

    kind: str
    offset: int
    value: Any = None
    args: tuple[_Node, ...] = ()


def _walk(root: _Node) -> Iterator[tuple[_Node, int]]:
    """Every node with its depth, iteratively: the tree may be deeper than we allow recursion to go."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        yield node, depth
        stack.extend((child, depth + 1) for child in node.args)


# ------------------------------------------------------------------------------------------ parser

class _Parser:
    def __init__(self, source: str, begin: int, end: int) -> None:
        self.source, self.tokens, self.pos, self.nesting = source, _tokenize(source, begin, end), 0, 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.pos]

    def fail(self, tok: _Token, what: str, expected: str, hint: str | None = None) -> NoReturn:
        raise _error(self.source, tok.offset, what, expected, tok.describe(), hint)

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

    def parse(self) -> _Node:
        if self.tok.kind == "end":
            self.fail(self.tok, "empty expression", "an expression between '${' and '}'")
        root, tok = self.expr(0), self.tok
        if tok.text in (")", "]"):
            self.fail(tok, f"unbalanced {tok.text!r}: nothing to close", "an operator or the end")
        if tok.kind != "end":
            self.fail(tok, f"unexpected {tok.describe()} after a complete expression",
                      "an operator or the end", "values must be joined by an operator")
        for node, depth in _walk(root):
            if depth > MAX_DEPTH:
                raise _error(self.source, node.offset, "expression is nested too deeply",
                             f"at most {MAX_DEPTH} levels of operators", f"{depth} levels")
        return root

    def expr(self, min_prec: int) -> _Node:
        """Parse operators binding at least ``min_prec``; every recursion passes through here."""
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            self.fail(self.tok, "expression is nested too deeply", f"at most {MAX_NESTING} levels")
        node = self.prefix()
        while self.tok.kind in ("op", "kw") and _PREC.get(self.tok.text, -1) >= min_prec:
            tok = self.tokens[self.pos]
            self.pos += 1
            if tok.text == "if":
                cond = self.expr(1)
                if not self.accept("else"):
                    self.fail(self.tok, "expected 'else' in 'a if condition else b'", "'else'")
                node = _Node("cond", tok.offset, None, (cond, node, self.expr(0)))
                continue
            prec = _PREC[tok.text]
            node = _Node("binary", tok.offset, tok.text, (node, self.expr(prec + (tok.text != "**"))))
            if prec == _PREC["=="] and self.at(*_COMPARISONS):
                self.fail(self.tok, "chained comparisons are not supported", "a single comparison",
                          "write 'a < b and b < c'")
        self.nesting -= 1
        return node

    def prefix(self) -> _Node:
        if tok := self.accept("not"):
            return _Node("unary", tok.offset, "not", (self.expr(_PREC["and"] + 1),))
        if tok := self.accept("-", "+"):
            return _Node("unary", tok.offset, tok.text, (self.expr(_PREC["**"]),))
        node = self.atom()
        while opener := self.accept("["):
            lo = _Node("const", opener.offset) if self.at(":") else self.expr(0)
            if self.accept(":"):
                hi = _Node("const", self.tok.offset) if self.at("]") else self.expr(0)
                node = _Node("slice", opener.offset, None, (node, lo, hi))
            else:
                node = _Node("index", opener.offset, None, (node, lo))
            self.expect("]", opener)
        return node

    def atom(self) -> _Node:
        tok = self.tok
        self.pos += 1
        if tok.kind in ("num", "str"):
            return _Node("const", tok.offset, tok.value)
        if tok.kind == "kw" and tok.text in _CONSTANTS:
            return _Node("const", tok.offset, _CONSTANTS[tok.text])
        if tok.kind == "name":
            opener = self.accept("(")
            return self.call(tok, opener) if opener else _Node("name", tok.offset, tok.text)
        if tok.text == "(" and tok.kind == "op":
            node = self.expr(0)
            self.expect(")", tok)
            return node
        if tok.text == "[" and tok.kind == "op":
            return _Node("list", tok.offset, None, self.items("]", tok))
        self.fail(tok, f"unexpected {tok.describe()}", "a value (number, string, name, '(' or '[')")

    def items(self, close: str, opener: _Token) -> tuple[_Node, ...]:
        items = []
        while not self.at(close):
            items.append(self.expr(0))
            if not self.accept(","):
                break
        self.expect(close, opener, f"',' or {close!r}")
        return tuple(items)

    def call(self, name: _Token, opener: _Token) -> _Node:
        if name.text not in _BUILTINS:  # checked before the arguments: the name is the first mistake
            raise _error(self.source, name.offset, f"unknown function {name.text!r}",
                         "a builtin function: " + ", ".join(sorted(_BUILTINS)), repr(name.text),
                         did_you_mean(name.text, _BUILTINS.keys()))
        args = self.items(")", opener)
        lo, hi, _ = _BUILTINS[name.text]
        if not lo <= len(args) <= (hi or len(args)):
            wanted = str(lo) if hi == lo else f"{lo} to {hi}" if hi else f"at least {lo}"
            raise _error(self.source, name.offset, f"{name.text}() takes {wanted} argument(s)",
                         f"{wanted} argument(s)", f"{len(args)} argument(s)")
        return _Node("call", name.offset, name.text, args)


# ---------------------------------------------------------------------------------------- builtins

def _is_num(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: object) -> str:
    return "null" if value is None else "list" if isinstance(value, (list, tuple)) else type(value).__name__


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


def _need(fn: str, value: Any, ok: bool, expected: str) -> Any:
    if not ok:
        raise _ArgError(f"{fn}() needs {expected}", expected, value)
    return value


def _num(fn: str, value: Any) -> Any:
    """A number argument; YAML's .inf/.nan are refused here, before they reach int() or math.*."""
    return _need(fn, value, _is_num(value) and (isinstance(value, int) or math.isfinite(value)), "a finite number")


def _seq(fn: str, value: Any) -> Any:
    return _need(fn, value, isinstance(value, (list, tuple)), "a list")


def _extremum(fn: str, pick: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        values = _seq(fn, args[0]) if len(args) == 1 else args
        return pick(_num(fn, v) for v in _need(fn, values, bool(values), "a non-empty list"))
    return run


def _round(value: Any, digits: Any = None) -> Any:
    if digits is not None:
        _need("round", digits, _is_int(digits) and abs(digits) <= MAX_EXPONENT,
              f"digits in [-{MAX_EXPONENT}, {MAX_EXPONENT}]")
    return round(_num("round", value), digits)


def _range(*args: Any) -> list[int]:
    bounds = [_need("range", a, _is_int(a), "integers") for a in args]
    _need("range", 0, len(bounds) < 3 or bounds[2] != 0, "a non-zero step")
    span = range(*bounds)
    _need("range", len(span), len(span) <= MAX_LIST_LENGTH, f"at most {MAX_LIST_LENGTH} elements")
    return list(span)


def _make_divisible(v: Any, divisor: Any = 8, min_value: Any = None) -> Any:
    """Round ``v`` to a multiple of ``divisor`` without losing more than 10% (the MobileNet rule)."""
    _num("make_divisible", v)
    _need("make_divisible", divisor, _is_int(divisor) and divisor > 0, "a positive integer divisor")
    _need("make_divisible", min_value, min_value is None or _is_num(min_value), "a numeric min_value")
    new_v = max(min_value or divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


# name -> (min args, max args or None for unbounded, implementation); a fixed table, never the env
_BUILTINS: dict[str, tuple[int, int | None, Callable[..., Any]]] = {
    "min": (1, None, _extremum("min", min)),
    "max": (1, None, _extremum("max", max)),
    "sum": (1, 1, lambda xs: sum(_num("sum", x) for x in _seq("sum", xs))),
    "len": (1, 1, lambda x: len(_need("len", x, isinstance(x, (list, tuple, str)), "a list or a string"))),
    "abs": (1, 1, lambda x: abs(_num("abs", x))),
    # int()/float() also take bools: the explicit way out of "bool is not a number"
    "int": (1, 1, lambda x: int(x if isinstance(x, bool) else _num("int", x))),
    "float": (1, 1, lambda x: float(x if isinstance(x, bool) else _num("float", x))),
    "round": (1, 2, _round),
    "ceil": (1, 1, lambda x: math.ceil(_num("ceil", x))),
    "floor": (1, 1, lambda x: math.floor(_num("floor", x))),
    "sqrt": (1, 1, lambda x: math.sqrt(_need("sqrt", x, _is_num(x) and x >= 0, "a non-negative number"))),
    "log2": (1, 1, lambda x: math.log2(_need("log2", x, _is_num(x) and x > 0, "a positive number"))),
    "range": (1, 3, _range),
    "make_divisible": (1, 3, _make_divisible),
}

# --------------------------------------------------------------------------------------- evaluator

_ARITH: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
    "//": operator.floordiv, "%": operator.mod, "**": operator.pow,
}
_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def _equal(a: Any, b: Any) -> bool:
    """Python equality, except that a bool never equals a number (true != 1), also inside lists."""
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

    def value_of(self, node: _Node) -> Any:
        """Evaluate ``node``; recursion depth is bounded by the parser's MAX_DEPTH check."""
        kind, value, args = node.kind, node.value, node.args
        if kind == "const":
            return value
        if kind == "name":
            if value not in self.env:
                names = [k for k in self.env if isinstance(k, str)]
                self.fail(node, f"undefined parameter {value!r}", "a declared parameter", repr(value),
                          did_you_mean(value, names))
            return self.env[value]
        if kind == "binary" and value in ("and", "or"):  # short-circuit: the unneeded side may be invalid
            left = self.value_of(args[0])
            return self.value_of(args[1]) if bool(left) == (value == "and") else left
        if kind == "cond":
            return self.value_of(args[1] if self.value_of(args[0]) else args[2])
        values = [self.value_of(arg) for arg in args]
        if kind == "list":
            return values
        if kind == "binary":
            return self.binary(node, *values)
        if kind == "unary":
            if value == "not":
                return not values[0]
            if not _is_num(values[0]):
                self.fail(node, f"unary {value!r} needs a number", "a number", _describe(values[0]))
            return -values[0] if value == "-" else values[0]
        if kind in ("index", "slice"):
            return self.subscript(node, *values)
        try:
            return self.checked(node, _BUILTINS[value][2](*values))
        except _ArgError as e:
            self.fail(node, e.what, e.expected, e.found)
        except OverflowError:
            self.fail(node, "number too large", _TOO_LARGE)

    def binary(self, node: _Node, a: Any, b: Any) -> Any:
        op = node.value
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
            kinds = {_kind(a), _kind(b)}
            hint = ("booleans are not numbers; convert with int(x)" if "bool" in kinds
                    else "lists do not support arithmetic" if "list" in kinds else None)
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
        """Refuse results beyond 2**63 in magnitude (and complex ones): later stages assume sane sizes."""
        if isinstance(value, complex):
            self.fail(node, "result is not a real number", "a real number", _describe(value))
        if _is_num(value) and not abs(value) <= MAX_MAGNITUDE:
            self.fail(node, "result is too large", _TOO_LARGE, _describe(value))
        return value

    def subscript(self, node: _Node, target: Any, *keys: Any) -> Any:
        if not isinstance(target, (list, tuple)):
            self.fail(node, f"cannot index {_kind(target)}", "a list", _describe(target))
        for key, child in zip(keys, node.args[1:]):
            if not (_is_int(key) or key is None and node.kind == "slice"):
                self.fail(child, "list index must be an integer", "an int", _describe(key))
        if node.kind == "slice":
            return list(target[keys[0]:keys[1]])
        n, index = len(target), keys[0]
        if not -n <= index < n:
            self.fail(node, f"list index {index} out of range",
                      f"an index in [{-n}, {n - 1}]" if n else "a non-empty list", str(index))
        return target[index]


# -------------------------------------------------------------------------------------- public API

@dataclass(frozen=True)
class Expr:
    """A parsed expression: immutable, so one parse serves every binding of the parameters."""

    source: str
    _root: _Node = field(repr=False, compare=False)
    _names: frozenset[str] = field(repr=False, compare=False)

    def evaluate(self, env: Mapping[str, Any]) -> Any:
        """The value under ``env`` (parameter name -> value); raises ExprError on any mistake."""
        return _Evaluator(self.source, env).value_of(self._root)

    def names(self) -> set[str]:
        """Free parameter names, so callers can order parameter resolution and report cycles."""
        return set(self._names)


def is_expression(value: object) -> bool:
    """Whether a spec value is an expression: any string starting with '$' (a lone '$' is an error)."""
    return isinstance(value, str) and value.startswith("$")


@functools.lru_cache(maxsize=4096)
def parse_expression(text: str) -> Expr:
    """Parse a whole ``$name`` or ``${ <expr> }`` spec string; error offsets index into ``text``. Parses are
    cached (an :class:`Expr` is immutable): a block's expressions are met once per instance, and a supernet
    build expands one space hundreds of times."""
    if len(text) > MAX_SOURCE_LENGTH:
        raise _error(text, 0, "expression is too long", f"at most {MAX_SOURCE_LENGTH} characters",
                     f"{len(text)} characters")
    if text.startswith("${"):
        if not text.endswith("}") or len(text) < 3:
            raise _error(text, 0, "unterminated expression: '${' is never closed", "'}' at the end",
                         repr(text[-1]))
        root = _Parser(text, 2, len(text) - 1).parse()
    elif _IDENT.fullmatch(text, 1):
        root = _Node("name", 1, text[1:])
    else:
        raise _error(text, 1, "'$' must be followed by a parameter name or '{'", "'$name' or '${expression}'",
                     repr(text[1:2]) if len(text) > 1 else "end of string", "plain strings cannot start with '$'")
    return Expr(text, root, frozenset(n.value for n, _ in _walk(root) if n.kind == "name"))


def evaluate(text: str, env: Mapping[str, Any]) -> Any:
    """Parse and evaluate in one step (for one-off values; parse once to evaluate many times)."""
    return parse_expression(text).evaluate(env)
