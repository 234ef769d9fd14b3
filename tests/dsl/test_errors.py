"""Every user mistake nasforge recognises, one fixture spec each, with where and how it is reported.

Each file in ``fixtures/errors/`` is a small spec with one mistake and a header that states the
expected report::

    # mistake: unknown op, with a did-you-mean          (what the fixture shows; required)
    # error: unknown op 'conv2dd'                       (a fragment of the message; required)
    # at: 8:18                                          (LINE:COL, 1-based; or FILE:LINE:COL for
    #                                                    another fixture file, relative to errors/)
    # node: stem                                        (the node path, or - when there is none)
    # hint: did you mean 'conv2d'                       (optional fragments of hint / found / expected)
    # set: width=128                                    (optional --set override, repeatable)
    # choices: {stem.out: 24}                           (optional with_choices assignment, YAML)

Header values are literal text (quotes included), except ``choices``, a YAML mapping. The
fixtures in ``errors/imports/`` are imported by others and are not cases themselves. The same cases run
through the CLI, which must print ``file:line:col`` and exit 1 without a traceback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

import nasforge
from nasforge.cli import main, parse_overrides
from nasforge.errors import SpecError

ERRORS = Path(__file__).parent / "fixtures" / "errors"
HEADER = re.compile(r"^# (\w+): (.*)$")
AT = re.compile(r"^(?:(?P<file>[\w./-]+\.yaml):)?(?P<line>\d+):(?P<column>\d+)$")


@dataclass
class Case:
    """One fixture and the report its header promises."""

    path: Path
    mistake: str
    error: str
    file: Path
    line: int
    column: int
    node: str | None
    fragments: dict[str, str] = field(default_factory=dict)  # hint / found / expected
    sets: list[str] = field(default_factory=list)  # --set NAME=VALUE overrides
    choices: dict[str, Any] = field(default_factory=dict)

    @property
    def overrides(self) -> dict[str, Any]:
        return parse_overrides(self.sets)

    def run(self) -> SpecError:
        """Load, decide choices, check: the SpecError it must raise."""
        with pytest.raises(SpecError) as info:
            spec = nasforge.load(self.path, **self.overrides)
            if self.choices:
                spec = spec.with_choices(self.choices)
            spec.check()
        return info.value


def parse_case(path: Path) -> Case:
    """Read a fixture's header comment (the leading ``# key: value`` lines)."""
    fields: dict[str, Any] = {"fragments": {}, "sets": [], "choices": {}}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        match = HEADER.match(line)
        if not match:  # a continuation line of the mistake's description
            continue
        key, raw = match.groups()
        value = yaml.safe_load(raw) if key == "choices" else raw.strip()
        if key in ("hint", "found", "expected"):
            fields["fragments"][key] = value
        elif key == "set":
            fields["sets"].append(value)
        elif key == "choices":
            fields["choices"] = value
        elif key == "at":
            at = AT.match(value)
            assert at, f"{path.name}: bad 'at: {value}'"
            fields["file"] = ERRORS / at["file"] if at["file"] else path
            fields["line"], fields["column"] = int(at["line"]), int(at["column"])
        elif key == "node":
            fields["node"] = None if value == "-" else value
        else:
            fields[key] = value
    missing = {"mistake", "error", "file", "node"} - set(fields)
    assert not missing, f"{path.name}: header lacks {sorted(missing)}"
    return Case(path, **fields)


CASES = [parse_case(p) for p in sorted(ERRORS.glob("*.yaml"))]


def test_the_catalogue_is_large_and_distinct() -> None:
    assert len(CASES) >= 35
    assert len({c.mistake for c in CASES}) == len(CASES), "each fixture shows a different mistake"


@pytest.mark.parametrize("case", CASES, ids=[c.path.stem for c in CASES])
def test_mistake_is_reported_where_it_is(case: Case) -> None:
    err = case.run()
    assert case.error in err.message
    assert err.location.file is not None
    assert Path(err.location.file).resolve() == case.file.resolve()
    assert (err.location.line, err.location.column) == (case.line, case.column), err.format()
    assert err.node_path == case.node
    for key, fragment in case.fragments.items():
        assert fragment in (getattr(err, key) or ""), f"{key}: {getattr(err, key)!r}"
    text = err.format()
    assert text.startswith(f"{err.location.file}:{case.line}:{case.column}: ")
    if case.node:
        assert f": {case.node}: " in text.splitlines()[0]
    assert "\n  expected: " in text and "\n  found:    " in text, text


CLI_CASES = [c for c in CASES if not c.choices]  # choices are decided through the API, not the CLI


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.path.stem for c in CLI_CASES])
def test_cli_reports_mistake_without_traceback(case: Case, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["check", str(case.path), *(arg for item in case.sets for arg in ("--set", item))]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("nasforge: error: ") and "Traceback" not in err
    assert f"{case.file.name}:{case.line}:{case.column}: " in err
    assert case.error in err
