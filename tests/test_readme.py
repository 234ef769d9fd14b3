"""The README's quick start is run as written: its spec checks and prints exactly the line shown."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from nasforge.cli import main

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_quick_start_output_matches_readme(tmp_path, capsys, monkeypatch):
    spec = re.search(r"```yaml\n# mynet.yaml\n(.*?)```", README, re.S).group(1)
    shown = re.search(r"\$ nasforge check mynet.yaml\n(.*)\n", README).group(1)
    (tmp_path / "mynet.yaml").write_text(spec)
    monkeypatch.chdir(tmp_path)
    assert main(["check", "mynet.yaml"]) == 0
    assert capsys.readouterr().out.strip() == shown.strip()


def test_readme_test_command_is_what_ci_runs():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    command = re.search(r"pip install -e '\.\[test\]' && (.*)\n", README).group(1).strip()
    assert ci.rstrip().splitlines()[-1].strip() == command


@pytest.mark.slow
def test_main_job_runs_as_written_with_a_smaller_budget(tmp_path, monkeypatch):
    """The README's main command, run through the CLI as written except for a smaller budget."""
    found = re.search(r"pip install -e '\.\[tvm\]' && (nasforge search .*?) && nasforge show best.yaml && "
                      r"(nasforge compile best.yaml .*)\n", README)
    command, compile_command = found.group(1), found.group(2)
    argv = shlex.split(command)[1:]
    argv[argv.index("--budget") + 1] = "3"
    root = Path(__file__).resolve().parents[1]
    argv[1] = str(root / argv[1])
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 0
    assert main(["show", "best.yaml"]) == 0
    assert main(shlex.split(compile_command)[1:]) == 0
    assert (tmp_path / "best-tvm" / "metadata.json").is_file()
    assert main(["run", "best-tvm/"]) == 0
    assert main(argv) == 0  # resumed: already complete, prints the leaderboard
