"""No input makes nasforge crash: random and mutated specs fail only with a located SpecError.

Hypothesis starts from valid specs and breaks them the ways people and tools do (lines deleted,
duplicated or swapped, numbers changed, ops and ids renamed, stray or exotic characters, deep nesting),
then holds three promises: the API raises nothing but ``SpecError``; a spec that does check writes
itself back (``to_yaml``) as a spec that loads to the same IR; the CLI exits 0 or 1, never 3 (an
internal error), and never prints a traceback.
"""

from __future__ import annotations

import contextlib
import io
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nasforge
from nasforge.cli import main
from nasforge.errors import SpecError
from tests.dsl.helpers import FIXTURES, ir_signature

SEEDS = [textwrap.dedent(text).strip() + "\n" for text in (
    """
    name: resnetish
    params: {width: 8, depth: 2, widths: [8, 16]}
    inputs: {image: [B, 3, 16, 16]}
    blocks:
      basic:
        args: [dim, {stride: 1}]
        nodes:
          - {id: conv1, op: conv2d, out: $dim, kernel: 3, stride: $stride, padding: 1, bias: false}
          - {id: bn1, op: batch_norm2d}
          - {id: act, op: relu}
          - {id: down, op: conv2d, in: $input, out: $dim, kernel: 1, stride: $stride, if: "${stride != 1}"}
          - {id: sum, op: add, in: [act, down]}
    graph:
      - {id: stem, op: conv2d, in: image, out: "${widths[0]}", kernel: 3, padding: 1}
      - {id: stages, repeat: $depth, as: s, block: basic, dim: "${widths[s]}", stride: ${2 if s > 0 else 1}}
      - {id: parts, op: split, sizes: 8}
      - {id: cat, op: concat, in: ["parts:1", "parts:0"]}
      - {id: pool, op: global_avg_pool, keepdim: false}
      - {id: head, op: linear, out: {choice: [10, 20]}}
    outputs: {logits: head}
    """,
    """
    nasforge: 1
    name: mlp
    params:
      hidden: 32
      layers: 3
    inputs:
      tokens: {shape: [B, 16], dtype: float32}
      bias: [B, 48]
    graph:
      - id: blocks
        repeat: $layers
        op: linear
        out: ${hidden * (i + 1)}
      - id: chunks
        op: chunk
        chunks: 2
      - {id: s, op: add, in: ["chunks:0", "chunks:1"]}
      - {op: relu, shape: [B, 48]}
      - {id: shifted, op: add, in: [relu3, bias]}
    outputs: [s, shifted]
    """,
    """
    name: gated
    params: {dim: 16, act: {op_choice: [relu, gelu]}}
    inputs: {x: [B, 16], y: [B, 16]}
    blocks:
      gate:
        inputs: [value, gate]
        args: {dim: 16}
        nodes:
          - {id: proj, op: linear, out: $dim, in: $gate}
          - {id: sig, op: sigmoid}
          - {id: prod, op: mul, in: [$value, sig]}
    graph:
      - {id: g, block: gate, in: [x, y], dim: $dim}
      - {id: a, op: $act}
      - {id: n, op: layer_norm, dims: 1}
    """,
    (FIXTURES / "models" / "tiny.yaml").read_text(),
)]
# where the seeds "live", so that tiny.yaml's relative import resolves
SPEC_NAME = str(FIXTURES / "models" / "fuzzed.yaml")
WORDS = ["relu", "conv2d", "linear", "add", "split", "concat", "chunk", "batch_norm2d", "global_avg_pool",
         "image", "x", "stem", "stages", "parts", "head", "basic", "gate", "dim", "width", "s", "i", "B",
         "input", "forward", "id", "op", "in", "block", "repeat", "as", "if", "shape", "choice", "args",
         "inputs", "nodes", "outputs", "params", "graph", "imports", "$input", "$dim", "${", "}", "[", "]",
         "{", "}", ":", ",", "-", "&a", "*a", "!!int", "!!python/object:os.system", "? ", "|", ">", "#",
         "'", '"', "\t", "..", "parts:7", "x:0", "stem:1", "1e400", "-0", "nan", ".inf", "~", "<<: *a"]
NUMBERS = st.one_of(st.integers(-3, 70), st.sampled_from([0, 2**31, 2**63, 10**30, -(2**40)]),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr))


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A seed spec with one to four mutations."""
    lines = draw(st.sampled_from(SEEDS)).splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            lines = [""]
        i = draw(st.integers(0, len(lines) - 1))
        line = lines[i]
        at = draw(st.integers(0, len(line)))
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "number", "rename", "insert",
                                     "unicode", "cut", "nest"]))
        if kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(draw(st.integers(0, len(lines))), line)
        elif kind == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], line
        elif kind == "number":
            numbers = list(re.finditer(r"-?\d+(\.\d+)?", line))
            if numbers:
                m = draw(st.sampled_from(numbers))
                lines[i] = line[:m.start()] + str(draw(NUMBERS)) + line[m.end():]
        elif kind == "rename":
            words = list(re.finditer(r"[A-Za-z_$][\w.$]*", line))
            if words:
                m = draw(st.sampled_from(words))
                lines[i] = line[:m.start()] + draw(st.sampled_from(WORDS)) + line[m.end():]
        elif kind == "insert":
            lines[i] = line[:at] + draw(st.sampled_from(WORDS)) + line[at:]
        elif kind == "unicode":
            lines[i] = line[:at] + draw(st.text(min_size=1, max_size=3)) + line[at:]
        elif kind == "cut":
            lines[i] = line[:at] + line[at + draw(st.integers(1, 8)):]
        else:  # nest a value deeply in lists or mappings
            depth = draw(st.integers(1, 400))
            opener, closer = draw(st.sampled_from([("[", "]"), ("{a: ", "}")]))
            lines[i] = line[:at] + opener * depth + "1" + closer * depth + line[at:]
    return "\n".join(lines) + "\n"


def check_text(text: str) -> nasforge.Spec | None:
    """Load and check; None when the spec is (correctly) refused with a SpecError."""
    try:
        spec = nasforge.loads(text, SPEC_NAME)
        spec.check()
        spec.summary(depth=2)
        return spec
    except SpecError as err:
        assert err.location.file is not None, err.format()
        err.format()
        return None


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("seed", SEEDS, ids=["resnetish", "mlp", "gated", "tiny"])
def test_seeds_are_valid_and_round_trip(seed: str) -> None:
    spec = check_text(seed)
    assert spec is not None
    again = nasforge.loads(spec.to_yaml(), "again.yaml")
    assert ir_signature(again.graph) == ir_signature(spec.graph)


@FUZZ
@given(mutated())
def test_mutated_specs_fail_only_with_spec_errors(text: str) -> None:
    spec = check_text(text)
    if spec is not None:  # what checks must also write itself back faithfully
        again = nasforge.loads(spec.to_yaml(), "again.yaml")
        assert ir_signature(again.graph) == ir_signature(spec.graph)


@FUZZ
@given(st.one_of(st.text(max_size=300),
                 st.lists(st.sampled_from(WORDS + ["\n", "  ", " "]), max_size=60).map("".join)))
def test_random_text_fails_only_with_spec_errors(text: str) -> None:
    check_text(text)


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(text=mutated())
def test_cli_check_exits_0_or_1_without_traceback(text: str, spec_dir: Path) -> None:
    path = spec_dir / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["check", str(path)])
    assert code in (0, 1), err.getvalue()
    assert "Traceback" not in err.getvalue()
    if code == 1:
        assert err.getvalue().startswith("nasforge: error: ")
