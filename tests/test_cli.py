"""The ``nasforge`` command: every subcommand, its output forms and its exit codes.

Exit codes: 0 ok, 1 a mistake in a spec or its overrides (``file:line:col: node: message``, no traceback),
2 a command-line usage error, 3 an internal error (never expected here).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nasforge.cli import main

SPEC = """
name: clinet
params: {width: 8, depth: 2}
inputs: {image: [B, 3, 16, 16]}
blocks:
  unit:
    - {id: conv, op: conv2d, out: $width, kernel: 3, padding: 1}
    - {id: bn, op: batch_norm2d}
    - {id: act, op: relu}
graph:
  - {id: stem, op: conv2d, out: $width, kernel: 1}
  - {id: stages, repeat: $depth, block: unit}
  - {id: pool, op: global_avg_pool, keepdim: false}
  - {id: head, op: linear, out: 10}
outputs: {logits: head}
"""
PARAMS = 32 + 2 * (584 + 16) + 90  # stem, two conv+bn units, head
BAD = """
inputs: {image: [B, 3, 16, 16]}
graph:
  - {id: stem, op: conv2d, out: 8, kernel: 3}
  - {id: act, op: relu, in: stme}
"""


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "clinet.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(BAD))
    return path


def run(argv: list[str]) -> int:
    """``main`` as the shell sees it: argparse's own exits become exit codes too."""
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)


# ----------------------------------------------------------------------------------------- check

def test_check_prints_one_ok_line(spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["check", str(spec)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok clinet: 9 nodes, {PARAMS:,} params, ")
    assert "outputs logits [B, 10]" in out


def test_check_json(spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["check", str(spec), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["name"] == "clinet"
    assert report["totals"]["params"] == PARAMS
    assert report["outputs"] == {"logits": "[B, 10]"} and report["choices"] == 0


def test_check_batch_scales_counts(spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    totals = []
    for batch in ("1", "3"):
        assert run(["check", str(spec), "--json", "--batch", batch]) == 0
        totals.append(json.loads(capsys.readouterr().out)["totals"])
    assert totals[1]["macs"] == 3 * totals[0]["macs"] and totals[1]["params"] == totals[0]["params"]


@pytest.mark.parametrize("sets,params", [
    (["width=4"], 3 * 4 + 4 + 2 * (4 * 4 * 9 + 4 + 8) + 4 * 10 + 10),
    (["depth=3"], PARAMS + 600),
    (["width=4", "depth=1"], 3 * 4 + 4 + (4 * 4 * 9 + 4 + 8) + 4 * 10 + 10),
])
def test_set_overrides_params(spec: Path, sets: list[str], params: int,
                              capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["check", str(spec), "--json", *(arg for item in sets for arg in ("--set", item))]
    assert run(argv) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["params"] == params


def test_strict_turns_warnings_into_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "unused.yaml"
    path.write_text("inputs: {x: [B, 4]}\ngraph:\n  - {id: dead, op: relu}\n  - {id: live, op: relu, in: x}\n")
    assert run(["check", str(path)]) == 0
    assert "warning" in capsys.readouterr().out
    assert run(["check", str(path), "--strict"]) == 1
    assert "never used" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ show

def test_show_lists_node_paths(spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["show", str(spec), "--depth", "0"]) == 0
    out = capsys.readouterr().out
    for path in ("stem", "stages.0.conv", "stages.1.bn", "pool", "head", "total"):
        assert path in out
    assert f"{PARAMS:,}" in out


def test_show_folds_block_instances_by_default(spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["show", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "stages.0 " in out and "(3 nodes)" in out and "stages.0.conv" not in out
    assert f"{PARAMS:,}" in out


def test_show_depth_folds_blocks(spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["show", str(spec), "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "stages" in out and "(6 nodes)" in out and "stages.0" not in out
    assert run(["show", str(spec), "--depth", "2"]) == 0
    out = capsys.readouterr().out
    assert "stages.0" in out and "(3 nodes)" in out and "stages.0.conv" not in out


def test_show_json(spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["show", str(spec), "--json", "--depth", "2"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert [row["path"] for row in table["layers"]] == ["stem", "stages.0", "stages.1", "pool", "head"]
    assert sum(row["params"] for row in table["layers"]) == table["totals"]["params"] == PARAMS


def test_show_prints_spec_text_literally(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "markup.yaml"
    path.write_text('name: "[/bold] net"\ninputs: {x: [b, 4]}\ngraph: [{id: r, op: relu}]\n')
    assert run(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "[/bold] net" in out and "[b, 4]" in out  # not read as rich markup


# ----------------------------------------------------------------------------------------- graph

def test_graph_prints_dot(spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["graph", str(spec)]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith('digraph "clinet" {')
    assert '"stages.0.conv" -> "stages.0.bn"' in dot and '"image" -> "stem"' in dot


def test_graph_writes_dot_file_and_folds(spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "net.dot"
    assert run(["graph", str(spec), "-o", str(out), "--depth", "1"]) == 0
    dot = out.read_text()
    assert '"stem" -> "stages"' in dot and "stages.0" not in dot


@pytest.mark.parametrize("target", ["net.txt", "missing_dir/net.dot"])
def test_graph_refuses_unwritable_output(spec: Path, tmp_path: Path, target: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["graph", str(spec), "-o", str(tmp_path / target)]) == 1
    assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- ops

def test_ops_lists_the_vocabulary(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["ops"]) == 0
    out = capsys.readouterr().out
    for name in ("conv2d", "linear", "relu", "split", "global_avg_pool"):
        assert name in out


def test_ops_describes_one_op(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["ops", "conv2d"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("conv2d  (conv; inputs 1)")
    assert "kernel: int|ints" in out and "groups: int = 1" in out


def test_ops_json_and_category(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["ops", "--json", "--category", "conv"]) == 0
    ops = json.loads(capsys.readouterr().out)
    assert "conv2d" in ops and "relu" not in ops
    assert {a["name"] for a in ops["conv2d"]["attrs"]} >= {"out", "kernel", "stride", "groups"}


def test_ops_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["ops", "conv2dd"]) == 1
    assert "did you mean 'conv2d'" in capsys.readouterr().err


# -------------------------------------------------------------------------------- errors and usage

@pytest.mark.parametrize("command", ["check", "show", "graph"])
def test_bad_spec_exits_1_with_location(command: str, bad: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run([command, str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nasforge: error: {bad}:5:29: act: reference to undefined node or input 'stme'")
    assert "expected: " in err and "found: " in err and "did you mean 'stem'?" in err
    assert "Traceback" not in err


def test_bad_spec_json_error(bad: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["check", str(bad), "--json"]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert (error["file"], error["line"], error["column"], error["node"]) == (str(bad), 5, 29, "act")
    assert error["hint"] == "did you mean 'stem'?"


@pytest.mark.parametrize("argv,message", [
    (["check", "{spec}", "--set", "depht=3"], "cannot override unknown parameter 'depht'"),
    (["check", "{spec}", "--set", "width"], "an override must look like name=value"),
    (["check", "{spec}", "--set", "width=[8"], "YAML syntax error"),
    (["check", "{spec}", "--set", "width=eight"], "attribute 'out' has the wrong type"),
    (["check", "{spec}", "--set", "depth=0"], "repeat count must be a positive integer"),
    (["check", "{dir}/missing.yaml"], "file not found"),
    (["check", "{dir}"], "not a file"),
])
def test_override_and_file_mistakes_exit_1(argv: list[str], message: str, spec: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert run([a.format(spec=spec, dir=tmp_path) for a in argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [
    [], ["frobnicate"], ["check"], ["check", "{spec}", "--batch", "0"], ["show", "{spec}", "--depth", "-1"],
    ["show", "{spec}", "--depth", "two"], ["check", "{spec}", "--no-such-flag"],
])
def test_usage_errors_exit_2(argv: list[str], spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run([a.format(spec=spec) for a in argv]) == 2
    captured = capsys.readouterr()
    assert "usage: nasforge" in captured.err + captured.out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.startswith("nasforge ")


def test_console_script_reports_without_traceback(bad: Path) -> None:
    script = shutil.which("nasforge") or str(Path(sys.executable).with_name("nasforge"))
    result = subprocess.run([script, "check", str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"{bad}:5:29: act: reference to undefined node or input 'stme'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
