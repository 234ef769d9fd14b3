"""The README's quick start is run as written: its spec checks and prints exactly the line shown."""

from __future__ import annotations

import re
from pathlib import Path

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
