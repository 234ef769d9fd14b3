"""The spec expression language: values, precedence, builtins, and every error with its offset.

Offsets matter because the spec loader turns them into line/column; the hypothesis test holds the
promise that no input string can make the parser or evaluator raise anything but ExprError.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nasforge.dsl.expr import Expr, ExprError, evaluate, is_expression, parse_expression
from nasforge.errors import SpecError

ENV = {"dim": 64, "width": 0.75, "xs": [1, 2, 3], "name": "conv", "flag": True, "nothing": None,
       "heads": 8, "empty": []}


def ev(body: str, **extra: object) -> object:
    return evaluate("${" + body + "}", {**ENV, **extra})


def err(text: str, env: dict[str, object] | None = None) -> ExprError:
    with pytest.raises(ExprError) as info:
        evaluate(text, ENV if env is None else env)
    assert text in info.value.message or len(text) > 80  # every message quotes the source
    return info.value


# ------------------------------------------------------------------------------------ recognition

@pytest.mark.parametrize("value,expected", [
    ("$dim", True), ("${dim * 2}", True), ("$", True), ("$ 5", True),
    ("dim", False), ("a$b", False), ("", False), (5, False), (None, False), (["$x"], False),
])
def test_is_expression(value: object, expected: bool) -> None:
    assert is_expression(value) is expected


def test_bare_name_and_names() -> None:
    assert evaluate("$dim", ENV) == 64
    assert parse_expression("$dim").names() == {"dim"}
    expr = parse_expression("${max(dim, heads) * xs[0] if flag else min(a, 3)}")
    assert expr.names() == {"dim", "heads", "xs", "flag", "a"}  # builtins are not names
    assert parse_expression("${1 + 2}").names() == set()


def test_expr_is_immutable_and_reusable() -> None:
    expr = parse_expression("${dim * 2}")
    assert isinstance(expr, Expr) and expr.source == "${dim * 2}"
    assert [expr.evaluate({"dim": d}) for d in (1, 2, 3)] == [2, 4, 6]
    with pytest.raises(AttributeError):
        expr.source = "x"  # type: ignore[misc]
    assert expr == parse_expression("${dim * 2}")


# ---------------------------------------------------------------------------------------- values

@pytest.mark.parametrize("body,expected", [
    ("42", 42), ("1_000", 1000), ("0.5", 0.5), (".5", 0.5), ("2.", 2.0), ("1e-6", 1e-6), ("1E3", 1000.0),
    ("'abc'", "abc"), ('"it\'s"', "it's"), ("''", ""),
    ("true", True), ("True", True), ("false", False), ("False", False), ("null", None), ("None", None),
    ("[]", []), ("[1, 'a', [2]]", [1, "a", [2]]), ("[1, 2,]", [1, 2]), ("dim", 64), ("  dim  ", 64),
])
def test_atoms(body: str, expected: object) -> None:
    result = ev(body)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("body,expected", [
    ("dim * 4", 256), ("dim + 1 - 2", 63), ("7 / 2", 3.5), ("8 / 2", 4.0), ("7 // 2", 3), ("-7 // 2", -4),
    ("7 % 3", 1), ("-7 % 3", 2), ("7.5 // 2", 3.0), ("2 ** 10", 1024), ("2 ** -1", 0.5), ("dim * width", 48.0),
    ("-dim", -64), ("+dim", 64), ("--3", 3), ("'a' + 'b'", "ab"), ("name + '_1'", "conv_1"),
])
def test_arithmetic_keeps_python_types(body: str, expected: object) -> None:
    result = ev(body)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("body,expected", [
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("10 - 2 - 3", 5), ("2 * 3 % 4", 2), ("100 / 10 / 5", 2.0),
    ("-2 ** 2", -4), ("(-2) ** 2", 4), ("2 ** 3 ** 2", 512), ("2 ** -1 ** 2", 0.5), ("-dim ** 2", -4096),
    ("2 * -3", -6), ("1 + 2 < 4", True), ("not 1 == 2", True), ("not flag or true", True),
    ("not (flag or true)", False), ("true or false and false", True), ("(true or false) and false", False),
    ("1 < 2 and 2 < 3", True), ("xs[0] + xs[-1] * 2", 7), ("1 if flag else 2 + 10", 1),
    ("1 + 1 if false else 2 + 2", 4), ("1 if false else 2 if false else 3", 3),
])
def test_precedence(body: str, expected: object) -> None:
    assert ev(body) == expected


@pytest.mark.parametrize("body,expected", [
    ("1 == 1.0", True), ("1 != 2", True), ("'a' < 'b'", True), ("2 >= 2", True), ("2 > 3", False),
    ("true == 1", False), ("false != 0", True), ("[1, 2] == [1, 2]", True), ("[true] == [1]", False),
    ("nothing == null", True), ("name == 'conv'", True), ("xs == 3", False),
])
def test_comparisons(body: str, expected: bool) -> None:
    assert ev(body) is expected


def test_logic_short_circuits_and_returns_operands() -> None:
    assert ev("false and undefined_name") is False
    assert ev("true or 1 / 0") is True
    assert ev("nothing or 4") == 4
    assert ev("dim and 'yes'") == "yes"
    assert ev("1 if flag else missing") == 1
    assert ev("missing if false else 'no'") == "no"
    assert ev("not empty") is True


@pytest.mark.parametrize("body,expected", [
    ("xs[0]", 1), ("xs[-1]", 3), ("xs[-3]", 1), ("xs[1:]", [2, 3]), ("xs[:2]", [1, 2]), ("xs[1:2]", [2]),
    ("xs[:]", [1, 2, 3]), ("xs[-2:]", [2, 3]), ("xs[5:]", []), ("[[1, 2], [3]][0][1]", 2),
    ("range(10)[2:4][0]", 2), ("xs[1 + 1]", 3),
])
def test_indexing_and_slicing(body: str, expected: object) -> None:
    assert ev(body) == expected


# -------------------------------------------------------------------------------------- builtins

@pytest.mark.parametrize("body,expected", [
    ("min(3, 1, 2)", 1), ("max(1, 2.5)", 2.5), ("min(xs)", 1), ("max([4])", 4), ("sum(xs)", 6), ("sum([])", 0),
    ("len(xs)", 3), ("len('abc')", 3), ("abs(-3)", 3), ("abs(-2.5)", 2.5),
    ("int(2.9)", 2), ("int(-2.9)", -2), ("int(true)", 1), ("float(3)", 3.0), ("float(false)", 0.0),
    ("round(2.5)", 2), ("round(3.5)", 4), ("round(2.675, 2)", 2.67), ("round(1234, -2)", 1200),
    ("ceil(2.1)", 3), ("floor(-2.1)", -3), ("sqrt(16)", 4.0), ("log2(1024)", 10.0),
    ("range(3)", [0, 1, 2]), ("range(1, 4)", [1, 2, 3]), ("range(10, 0, -3)", [10, 7, 4, 1]),
    ("max(dim // heads, 1)", 8), ("sum(range(5))", 10), ("min(2, 3,)", 2),
])
def test_builtins(body: str, expected: object) -> None:
    result = ev(body)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("call,expected", [
    # torchvision MobileNetV2 channel counts at width multipliers 0.35 / 0.5 / 0.75 / 1.0 / 1.4
    ("make_divisible(32 * 0.75, 8)", 24), ("make_divisible(16 * 0.35, 8)", 8),
    ("make_divisible(32 * 0.35, 8)", 16), ("make_divisible(24 * 0.5, 8)", 16),
    ("make_divisible(96 * 0.75, 8)", 72), ("make_divisible(320 * 1.4, 8)", 448),
    ("make_divisible(1280 * 1.4, 8)", 1792), ("make_divisible(32 * 1.0)", 32), ("make_divisible(3)", 8),
    ("make_divisible(10, 8, 16)", 16), ("make_divisible(91, 8)", 88), ("make_divisible(83, 8)", 80),
])
def test_make_divisible(call: str, expected: int) -> None:
    assert ev(call) == expected


def test_builtins_are_not_looked_up_in_env() -> None:
    assert ev("max(1, 2)", max=100) == 2
    assert ev("max + 1", max=100) == 101  # a parameter may share a builtin's name


# ---------------------------------------------------------------------------------------- errors

def test_error_is_a_spec_error_with_offset() -> None:
    e = err("${dim * 4x}")
    assert isinstance(e, SpecError)
    assert e.offset == 8 and "${dim * 4x}"[e.offset:] == "4x}"
    assert e.message == "invalid number literal '4x' in expression '${dim * 4x}'"
    assert e.found == "'4x'" and e.expected is not None


@pytest.mark.parametrize("text,message,offset,found", [
    ("${dim # 2}", "unexpected character '#'", 6, "'#'"),
    ("${a = 1}", "unexpected character '='", 4, "'='"),
    ("${1 +* 2}", "unexpected '*'", 5, "'*'"),
    ("${1 +}", "unexpected end of expression", 5, "end of expression"),
    ("${'abc}", "unterminated string", 2, "end of expression"),
    ("${(1 + 2}", "unbalanced '(': it is never closed", 2, "end of expression"),
    ("${[1, 2}", "unbalanced '[': it is never closed", 2, "end of expression"),
    ("${xs[1}", "unbalanced '[': it is never closed", 4, "end of expression"),
    ("${max(1, 2}", "unbalanced '(': it is never closed", 5, "end of expression"),
    ("${1 + 2)}", "unbalanced ')': nothing to close", 7, "')'"),
    ("${[1 2]}", "expected ',' or ']'", 5, "'2'"),
    ("${}", "empty expression", 2, "end of expression"),
    ("${   }", "empty expression", 5, "end of expression"),
    ("${a b}", "unexpected 'b' after a complete expression", 4, "'b'"),
    ("${1 if flag}", "expected 'else'", 11, "end of expression"),
    ("${1 < 2 < 3}", "chained comparisons are not supported", 8, "'<'"),
    ("${xs[0](1)}", "unexpected '('", 7, "'('"),
    ("${a} + ${b}", "unexpected character '}'", 3, "'}'"),
    ("${1.2.3}", "invalid number literal '1.2.3'", 2, "'1.2.3'"),
    ("${1__0}", "invalid number literal '1__0'", 2, "'1__0'"),
    ("${dim", "unterminated expression: '${' is never closed", 0, "'m'"),
    ("$", "'$' must be followed by a parameter name or '{'", 1, "end of string"),
    ("$1abc", "'$' must be followed by a parameter name or '{'", 1, "'1'"),
    ("$dim + 1", "'$' must be followed by a parameter name or '{'", 1, "'d'"),
])
def test_syntax_errors(text: str, message: str, offset: int, found: str) -> None:
    e = err(text)
    assert e.message.startswith(message) and f"in expression {text!r}" in e.message
    assert (e.offset, e.found) == (offset, found)
    assert e.expected


def test_syntax_errors_are_raised_by_parse_alone() -> None:
    with pytest.raises(ExprError):
        parse_expression("${1 +}")


def test_undefined_parameter_suggests_a_name() -> None:
    e = err("${dimm * 4}")
    assert e.message == "undefined parameter 'dimm' in expression '${dimm * 4}'"
    assert e.offset == 2 and e.hint == "did you mean 'dim'?"
    assert err("$dimm").offset == 1
    assert err("${zzz}").hint is None


def test_unknown_function_and_arity() -> None:
    e = err("${mx(1, 2)}")
    assert e.message.startswith("unknown function 'mx'") and e.hint == "did you mean 'max'?" and e.offset == 2
    assert "make_divisible" in (e.expected or "")
    assert err("${dim(3)}").message.startswith("unknown function 'dim'")
    e = err("${1 + range(1, 2, 3, 4)}")
    assert e.message.startswith("range() takes 1 to 3 argument(s)") and e.offset == 6
    assert e.found == "4 argument(s)"
    assert err("${max()}").expected == "at least 1 argument(s)"
    assert err("${len(xs, xs)}").expected == "1 argument(s)"


@pytest.mark.parametrize("body,offset", [("dim / 0", 6), ("dim // 0", 6), ("dim % 0", 6), ("1.5 / 0.0", 6),
                                         ("0 ** -1", 4)])
def test_division_by_zero(body: str, offset: int) -> None:
    e = err("${" + body + "}")
    assert e.message.startswith("division by zero in expression")
    assert e.offset == offset


@pytest.mark.parametrize("body,message,found", [
    ("'a' + 1", "unsupported operand types for '+': str and int", "str 'a' + int 1"),
    ("flag + 1", "unsupported operand types for '+': bool and int", "true + int 1"),
    ("xs * 2", "unsupported operand types for '*': list and int", "list [1, 2, 3] * int 2"),
    ("nothing - 1", "unsupported operand types for '-': null and int", "null - int 1"),
    ("-name", "unary '-' needs a number", "str 'conv'"),
    ("-flag", "unary '-' needs a number", "true"),
    ("'a' < 1", "cannot compare str and int with '<'", "str 'a' < int 1"),
    ("flag < 2", "cannot compare bool and int with '<'", "true < int 2"),
    ("dim[0]", "cannot index int", "int 64"),
    ("name[0]", "cannot index str", "str 'conv'"),
    ("xs[1.0]", "list index must be an integer", "float 1.0"),
    ("xs[flag]", "list index must be an integer", "true"),
    ("xs['a':]", "list index must be an integer", "str 'a'"),
    ("xs[null]", "list index must be an integer", "null"),
    ("min(xs, 1)", "min() needs a finite number", "list [1, 2, 3]"),
    ("min(empty)", "min() needs a non-empty list", "list []"),
    ("max(3)", "max() needs a list", "int 3"),
    ("sum([1, true])", "sum() needs a finite number", "true"),
    ("len(3)", "len() needs a list or a string", "int 3"),
    ("abs('x')", "abs() needs a finite number", "str 'x'"),
    ("int('3')", "int() needs a finite number", "str '3'"),
    ("sqrt(-1)", "sqrt() needs a non-negative number", "int -1"),
    ("log2(0)", "log2() needs a positive number", "int 0"),
    ("range(1.5)", "range() needs integers", "float 1.5"),
    ("range(1, 5, 0)", "range() needs a non-zero step", "int 0"),
    ("round(2.5, 0.5)", "round() needs digits in [-64, 64]", "float 0.5"),
    ("make_divisible(10, 0)", "make_divisible() needs a positive integer divisor", "int 0"),
    ("make_divisible('a')", "make_divisible() needs a finite number", "str 'a'"),
    ("make_divisible(10, 8, 'a')", "make_divisible() needs a numeric min_value", "str 'a'"),
])
def test_type_errors(body: str, message: str, found: str) -> None:
    e = err("${" + body + "}")
    assert e.message == f"{message} in expression {'${' + body + '}'!r}"
    assert e.found == found and e.expected


def test_bool_arithmetic_hint() -> None:
    assert err("${true + 1}").hint == "booleans are not numbers; convert with int(x)"
    assert err("${xs + xs}").hint == "lists do not support arithmetic"
    assert ev("int(true) + 1") == 2


@pytest.mark.parametrize("body,offset,expected", [
    ("xs[3]", 4, "an index in [-3, 2]"), ("xs[-4]", 4, "an index in [-3, 2]"),
    ("empty[0]", 7, "a non-empty list"), ("[1, 2][1][0]", 11, "a list"),
])
def test_index_errors(body: str, offset: int, expected: str) -> None:
    e = err("${" + body + "}")
    assert (e.offset, e.expected) == (offset, expected)


def test_error_offsets_point_at_the_sub_expression() -> None:
    text = "${dim + xs[1] / (heads - 8)}"
    e = err(text)
    assert text[e.offset] == "/"
    text = "${min(dim, 3) + max('a', 2)}"
    assert text[err(text).offset:].startswith("max(")
    text = "${1 + 2 * xs[10]}"
    assert text[err(text).offset:].startswith("[10]")


# ---------------------------------------------------------------------------------------- limits

@pytest.mark.parametrize("body,message", [
    ("2 ** 65", "exponent is too large"),
    ("10 ** 64", "result is too large"),
    ("2 ** 63 * 2", "result is too large"),
    ("1e18 * 1e18", "result is too large"),
    ("9223372036854775809", "number literal is too large"),
    ("1e400", "number literal is too large"),
    ("(-8) ** 0.5", "result is not a real number"),
    ("range(100000)", "range() needs at most 10000 elements"),
    ("round(1, -100)", "round() needs digits in [-64, 64]"),
    ("(" * 100 + "1" + ")" * 100, "expression is nested too deeply"),
    ("-" * 300 + "1", "expression is nested too deeply"),
    ("not " * 150 + "1", "expression is nested too deeply"),
    ("2 ** " * 100 + "1", "expression is nested too deeply"),
    ("1 + " * 200 + "1", "expression is nested too deeply"),
])
def test_limits(body: str, message: str) -> None:
    e = err("${" + body + "}")
    assert e.message.startswith(message)


def test_limits_allow_the_boundary() -> None:
    assert ev("2 ** 63") == 2**63
    assert ev("-(2 ** 63)") == -(2**63)
    assert len(ev("range(10000)")) == 10000  # type: ignore[arg-type]
    assert ev("(" * 20 + "1" + ")" * 20) == 1
    assert ev("1 + " * 90 + "1") == 91


def test_source_length_limit() -> None:
    text = "${" + "1 + " * 300 + "1}"
    e = err(text)
    assert e.message.startswith("expression is too long in expression '${1 + 1 + ") and e.message.endswith("...'")
    assert e.found == f"{len(text)} characters"


def test_non_finite_env_floats_fail_cleanly() -> None:
    env = {"inf": math.inf, "nan": math.nan}
    for body in ("int(inf)", "ceil(nan)", "round(inf)", "make_divisible(nan)", "max(1, nan)"):
        assert err("${" + body + "}", env).expected == "a finite number"
    assert err("${inf * 2}", env).message.startswith("result is too large")


def test_huge_env_ints_fail_cleanly() -> None:
    assert err("${sqrt(big)}", {"big": 10**400}).message.startswith("number too large")
    assert err("${big / 3}", {"big": 10**400}).message.startswith("result is too large")
    assert math.isclose(ev("sqrt(dim)"), 8.0)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------- property

TOKENS = ["dim", "xs", "name", "flag", "nothing", "empty", "missing", "0", "1", "2", "-1", "2.5", "1e3", "64",
          "'s'", '"t"', "(", ")", "[", "]", ",", ":", "+", "-", "*", "/", "//", "%", "**", "==", "!=", "<",
          ">=", "not", "and", "or", "if", "else", "true", "null", "min", "max", "sum", "len", "abs", "int",
          "float", "round", "ceil", "floor", "sqrt", "log2", "range", "make_divisible", "}", "$", "=", "#"]


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=60) | st.lists(st.sampled_from(TOKENS), max_size=40).map(" ".join),
       st.booleans())
def test_no_input_raises_anything_but_expr_error(body: str, closed: bool) -> None:
    text = "${" + body + ("}" if closed else "")
    try:
        expr = parse_expression(text)
        expr.evaluate(ENV)
    except ExprError as e:
        assert 0 <= e.offset <= len(text)
        assert e.message and e.expected is not None


@settings(max_examples=200, deadline=None)
@given(st.integers(-10**6, 10**6), st.integers(-10**6, 10**6), st.sampled_from(["+", "-", "*", "//", "%"]))
def test_integer_arithmetic_matches_python(a: int, b: int, op: str) -> None:
    expected = {"+": a + b, "-": a - b, "*": a * b}.get(op)
    if op in ("//", "%"):
        if b == 0:
            with pytest.raises(ExprError, match="division by zero"):
                evaluate(f"${{a {op} b}}", {"a": a, "b": b})
            return
        expected = a // b if op == "//" else a % b
    assert evaluate(f"${{a {op} b}}", {"a": a, "b": b}) == expected
