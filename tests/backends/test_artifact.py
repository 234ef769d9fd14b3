"""Artifacts: what metadata.json records, what loading checks, and atomic replacement under SIGKILL."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from nasforge import backends
from nasforge.backends.artifact import FORMAT_VERSION, PAUSE_ENV, load_artifact, read_metadata, write_artifact
from nasforge.errors import SpecError
from tests.backends.nets import MLP, inputs_for, spec_and_module


@pytest.fixture(scope="module")
def two_versions() -> dict[str, tuple]:
    """Two eager compiles of one network with different weights ("old" and "new"), with the outputs
    each gives on a fixed input: what an artifact holds tells which one it is."""
    out = {}
    for label, seed in (("old", 1), ("new", 2)):
        spec, gm = spec_and_module(MLP, seed=seed)
        x = inputs_for(spec)
        compiled = backends.compile(gm, x, "eager", "x86")
        out[label] = (spec, compiled, compiled.run_numpy(x[0].numpy())[0])
    out["input"] = x[0].numpy()
    return out


def write(versions: dict, label: str, path: Path) -> Path:
    spec, compiled, _ = versions[label]
    latency = compiled.latency(warmup=1, repeats=3)
    return write_artifact(compiled, path, spec=spec, extra={"label": label}, latency=latency)


def which(versions: dict, path: Path) -> str:
    """Load the artifact at ``path`` and say which version it is (checking its outputs agree)."""
    loaded = load_artifact(path)
    label = read_metadata(path)[1]["label"]
    np.testing.assert_array_equal(loaded.run_numpy(versions["input"])[0], versions[label][2])
    return label


def test_metadata_records_what_a_deployer_needs(two_versions, tmp_path) -> None:
    art = write(two_versions, "old", tmp_path / "art")
    meta = json.loads((art / "metadata.json").read_text())
    spec_text = (art / "spec.yaml").read_text()
    assert meta["format"] == "nasforge-artifact" and meta["format_version"] == FORMAT_VERSION
    assert meta["spec"]["sha256"] == hashlib.sha256(spec_text.encode()).hexdigest()
    assert "tiny_mlp" in spec_text and meta["name"] == "tiny_mlp"
    assert meta["backend"] == "eager" and meta["target"]["name"] == "x86" and meta["target"]["runs_here"]
    assert meta["inputs"] == [{"name": "x", "shape": [2, 8], "dtype": "float32"}]
    assert meta["outputs"] == [{"name": "logits", "shape": [2, 3], "dtype": "float32"}]
    assert {"nasforge", "python", "torch", "onnxruntime", "apache-tvm"} <= set(meta["versions"])
    assert meta["latency"]["repeats"] == 3 and meta["latency"]["median_ms"] > 0
    assert set(meta["compile"]) == {"compile_s", "tuning_s", "tuning", "notes"}
    assert set(meta["files"]) == {"spec.yaml", "weights.safetensors"}
    assert meta["host"]["cores"] >= 1


def test_load_checks_every_file_hash(two_versions, tmp_path) -> None:
    art = write(two_versions, "old", tmp_path / "art")
    weights = art / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(SpecError, match="does not match its recorded sha256"):
        load_artifact(art)
    weights.unlink()
    with pytest.raises(SpecError, match="weights.safetensors is missing"):
        load_artifact(art)


@pytest.mark.parametrize("edit, message", [
    (lambda m: {**m, "format_version": FORMAT_VERSION + 1}, "unsupported artifact format version"),
    (lambda m: {**m, "format": "something-else"}, "is not a nasforge artifact's"),
    (lambda m: {**m, "backend": "tvmm"}, "unknown backend 'tvmm'"),
])
def test_load_refuses_metadata_it_cannot_trust(two_versions, tmp_path, edit, message) -> None:
    art = write(two_versions, "old", tmp_path / "art")
    meta = json.loads((art / "metadata.json").read_text())
    (art / "metadata.json").write_text(json.dumps(edit(meta)))
    with pytest.raises(SpecError, match=message):
        load_artifact(art)


def test_not_an_artifact(tmp_path) -> None:
    with pytest.raises(SpecError, match="is not a nasforge artifact"):
        load_artifact(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metadata.json").write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_artifact(tmp_path / "bad")


def test_never_replaces_what_is_not_an_artifact(two_versions, tmp_path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.txt").write_text("mine")
    with pytest.raises(SpecError, match="refusing to replace it"):
        write(two_versions, "old", tmp_path / "work")
    assert (tmp_path / "work" / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert which(two_versions, write(two_versions, "old", tmp_path / "empty")) == "old"
    with pytest.raises(ValueError, match="reserved"):
        write_artifact(two_versions["old"][1], tmp_path / "x", spec=two_versions["old"][0], extra={"backend": "x"})


def test_replacing_an_artifact_leaves_no_debris(two_versions, tmp_path) -> None:
    write(two_versions, "old", tmp_path / "art")
    write(two_versions, "new", tmp_path / "art")
    assert which(two_versions, tmp_path / "art") == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".art.lock", "art"]


STEPS = ["wrote spec", "wrote backend files", "staged", "moved old artifact aside",
         "renamed new artifact into place", "removed old artifact"]
FOUND_AFTER_KILL = {"wrote spec": "old", "wrote backend files": "old", "staged": "old",
                    "moved old artifact aside": "old", "renamed new artifact into place": "new",
                    "removed old artifact": "new"}


def kill_writer_at(versions: dict, out: Path, step: str) -> None:
    """Fork a writer of the "new" version that stops at ``step``, and SIGKILL it there: a crash at
    exactly that point of the write."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer: announce steps on the pipe, stop at `step`
        try:
            os.close(read_end)
            sys.stderr = os.fdopen(write_end, "w")  # the announcements go to the parent
            os.environ[PAUSE_ENV] = step
            write(versions, "new", out)
        finally:
            os._exit(0)
    os.close(write_end)
    seen = []
    with os.fdopen(read_end) as announcements:
        for line in announcements:
            if line.startswith("nasforge-artifact-step: "):
                seen.append(line.split(": ", 1)[1].strip())
                if seen[-1] == step:
                    os.kill(pid, signal.SIGKILL)
                    break
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, seen
    assert seen == STEPS[:STEPS.index(step) + 1]


@pytest.mark.parametrize("step", STEPS)
def test_a_writer_killed_at_any_step_leaves_the_old_or_the_new_artifact(two_versions, tmp_path, step) -> None:
    out = tmp_path / "art"
    write(two_versions, "old", out)
    kill_writer_at(two_versions, out, step)
    assert which(two_versions, out) == FOUND_AFTER_KILL[step]
    # The next write recovers whatever the killed one left and leaves a clean directory.
    write(two_versions, "new", out)
    assert which(two_versions, out) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".art.lock", "art"]
