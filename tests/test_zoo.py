"""docs/model-zoo.md is generated from the specs (``nasforge zoo --markdown``), never edited by hand."""

from __future__ import annotations

from pathlib import Path

from nasforge.cli import main
from nasforge.zoo import collect, to_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_model_zoo_doc_is_up_to_date(monkeypatch):
    monkeypatch.chdir(ROOT)
    entries = collect(Path("specs/models"))
    expected = to_markdown(entries)
    current = (ROOT / "docs" / "model-zoo.md").read_text()
    assert current == expected, "regenerate with: nasforge zoo --markdown -o docs/model-zoo.md"
    members = [(e.spec, e.name) for e in entries]
    assert len(members) == len(set(members)), "every family member is listed once"
    assert all(e.reference for e in entries), "every entry says what it was checked against"


def test_zoo_command_writes_markdown(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "zoo.md"
    specs = tmp_path / "models"
    specs.mkdir()
    (specs / "mlp.yaml").write_text((ROOT / "specs" / "models" / "mlp.yaml").read_text())
    assert main(["zoo", str(specs), "--markdown", "-o", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Model zoo") and "| mlp |" in text
    assert main(["zoo", str(tmp_path / "missing")]) == 1
    assert "not a directory" in capsys.readouterr().err
