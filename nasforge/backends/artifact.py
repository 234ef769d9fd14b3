"""Artifacts: a compiled module on disk, with everything needed to trust it and run it again.

An artifact is a directory: the backend's own files (a shared library, an ``.onnx`` model, safetensors
weights), ``spec.yaml`` (the concrete spec the module was compiled from) and ``metadata.json``: format
version, backend, target, input and output shapes and dtypes, versions, compile and tuning summary,
measured latency, and the sha256 of every file, which :func:`load_artifact` checks.

Atomic replacement (the choice, and why). A crash at any instant must leave either the old complete
artifact or the new complete one. The new artifact is written into a hidden sibling staging directory
(``.OUT.staging-PID-XXXX``) on the same file system, every file and the directory are fsynced, and only
then does it take the artifact's place with two renames: the old directory to ``.OUT.previous``, the
staging directory to ``OUT``. Each rename is atomic; between the two, ``OUT`` is briefly absent and
``.OUT.previous`` is the complete old artifact, which :func:`load_artifact` then reads and the next
write puts back before starting. A symlink swapped with ``os.replace`` would avoid the gap, but would turn
``OUT`` into a link (surprising to ``rm -r``, ``rsync``, copies); Linux's ``RENAME_EXCHANGE`` is not
portable. Writers to one ``OUT`` take an exclusive lock (``.OUT.lock``, left in place) so two never
interleave, and a writer clears what a killed one left (a ``.OUT.previous``, staging directories).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from nasforge.backends.base import CompiledModule, Latency, host_cores
from nasforge.errors import Location, SpecError

FORMAT = "nasforge-artifact"
FORMAT_VERSION = 1
METADATA = "metadata.json"
SPEC_FILE = "spec.yaml"
PAUSE_ENV = "NASFORGE_ARTIFACT_PAUSE_AT"
"""Test hook: with this set, a writer announces each step on stderr (``nasforge-artifact-step: NAME``) and
stops at the step it names (sleeping until killed), so a test can SIGKILL it at exactly that point."""
RESERVED = ("format", "format_version", "created", "name", "backend", "target", "inputs", "outputs", "spec",
            "compile", "latency", "versions", "host", "backend_files", "files")
PACKAGES = ("torch", "apache-tvm", "apache-tvm-ffi", "onnxruntime", "onnx", "numpy", "safetensors")


def _step(name: str) -> None:
    pause_at = os.environ.get(PAUSE_ENV)
    if pause_at:
        print(f"nasforge-artifact-step: {name}", file=sys.stderr, flush=True)
        while name == pause_at:
            time.sleep(3600)


def _sibling(out: Path, role: str) -> Path:
    return out.parent / f".{out.name}.{role}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for directory, _, names in os.walk(root):
        for name in names:
            _fsync(Path(directory) / name)
        _fsync(Path(directory))


def is_artifact(path: Path) -> bool:
    """Whether ``path`` is a directory holding an artifact's metadata (of any format version)."""
    try:
        return json.loads((path / METADATA).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    with open(_sibling(out, "lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _recover(out: Path) -> None:
    """Finish what an interrupted writer left (the caller holds the lock, so no writer is alive): put a
    moved-aside old artifact back, or drop it if the new one made it into place; drop staging dirs."""
    previous = _sibling(out, "previous")
    if previous.exists():
        if out.exists():
            shutil.rmtree(previous)
        else:
            os.rename(previous, out)
    for stale in out.parent.glob(f".{out.name}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)


def check_destination(out: Path) -> None:
    """Refuse to replace anything that is not an artifact (or an empty directory): ``-o .`` must not
    wipe a working directory."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_dir() and not out.is_symlink() and (is_artifact(out) or not any(out.iterdir())):
        return
    raise SpecError(f"{out} exists and is not a nasforge artifact; refusing to replace it", location=Location("-o"),
                    expected="a new path, an empty directory or an earlier artifact",
                    found="a file" if out.is_file() else "a non-empty directory without metadata.json",
                    hint="choose another output directory")


def write_artifact(compiled: CompiledModule, out_dir: str | Path, spec: Any = None,
                   extra: dict[str, Any] | None = None, latency: Latency | None = None) -> Path:
    """Write ``compiled`` as an artifact at ``out_dir``, atomically replacing an earlier artifact there.

    ``spec`` is a :class:`nasforge.Spec` or concrete YAML text; ``extra`` adds top-level metadata keys
    (graph passes, agreement with eager, ...); ``latency`` is the measurement to record. Returns the path.
    """
    out = Path(out_dir)
    spec_text = spec if spec is None or isinstance(spec, str) else spec.to_yaml()
    if compiled.rebuilds_from_spec and spec_text is None:
        raise SpecError(f"a {compiled.backend} artifact rebuilds its network from the spec, and none was given",
                        location=Location("write_artifact"), expected="write_artifact(compiled, out, spec=...)",
                        found="spec=None")
    clash = sorted(set(extra or {}) & set(RESERVED))
    if clash:
        raise ValueError(f"extra metadata keys {clash} are reserved")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SpecError(f"cannot create {out.parent}: {err.strerror or err}", location=Location("-o"),
                        expected="a writable directory", found=type(err).__name__) from None
    with _locked(out):
        _recover(out)
        check_destination(out)
        staging = out.parent / f".{out.name}.staging-{os.getpid()}-{os.urandom(4).hex()}"
        staging.mkdir()
        try:
            _stage(compiled, staging, spec_text, getattr(spec, "name", None), extra or {}, latency)
            _swap(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out


def _stage(compiled: CompiledModule, staging: Path, spec_text: str | None, name: str | None,
           extra: dict[str, Any], latency: Latency | None) -> None:
    if spec_text is not None:
        (staging / SPEC_FILE).write_text(spec_text, encoding="utf-8")
        _step("wrote spec")
    backend_files = compiled.save(staging)
    _step("wrote backend files")
    files = {str(p.relative_to(staging)): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()}
    metadata = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "name": name, "backend": compiled.backend, "target": target_details(compiled.target),
        "inputs": [s.as_dict() for s in compiled.inputs], "outputs": [s.as_dict() for s in compiled.outputs],
        "spec": None if spec_text is None else {"file": SPEC_FILE, "sha256": files[SPEC_FILE]},
        "compile": compiled.info.as_dict(), "latency": latency.as_dict() if latency else None,
        "versions": versions(), "host": host(), "backend_files": backend_files, "files": files, **extra,
    }
    (staging / METADATA).write_text(json.dumps(metadata, indent=2, default=str) + "\n", encoding="utf-8")
    _fsync_tree(staging)
    _step("staged")


def _swap(staging: Path, out: Path) -> None:
    previous = _sibling(out, "previous")
    if out.exists() or out.is_symlink():
        os.rename(out, previous)
        _fsync(out.parent)
        _step("moved old artifact aside")
    os.rename(staging, out)
    _fsync(out.parent)
    _step("renamed new artifact into place")
    shutil.rmtree(previous, ignore_errors=True)
    _step("removed old artifact")


def target_details(name: str) -> dict[str, Any]:
    """The target profile as ``nasforge targets`` shows it: description, TVM target, runs here or not
    (only name and description where TVM, which resolves the host CPU and sees GPUs, is not installed)."""
    from nasforge.backends import targets

    profile = targets.resolve(name)
    try:
        return profile.as_dict()
    except ImportError as err:
        return {"name": profile.name, "description": profile.description, "note": f"details need TVM: {err}"}


def versions() -> dict[str, str | None]:
    """Versions of nasforge, Python and the packages a backend may use (None: not installed)."""
    from importlib import metadata

    from nasforge import __version__

    found: dict[str, str | None] = {"nasforge": __version__, "python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def host() -> dict[str, Any]:
    """The machine the artifact was compiled (and its latency measured) on."""
    return {"machine": platform.machine(), "system": platform.system(), "cpu": cpu_model(), "cores": host_cores(),
            "hostname": platform.node()}


def cpu_model() -> str:
    """The CPU's marketing name (Linux ``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_metadata(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The artifact directory to read (``.OUT.previous`` during an interrupted swap) and its metadata,
    with the format version and every file's sha256 checked."""
    root = Path(path)
    directory = root
    if not root.exists() and is_artifact(_sibling(root, "previous")):
        directory = _sibling(root, "previous")  # a writer died between its two renames: the old one is whole
    meta_path = directory / METADATA
    where = Location(str(meta_path))
    if not meta_path.is_file():
        raise SpecError(f"{root} is not a nasforge artifact", location=Location(str(root)),
                        expected="a directory written by `nasforge compile -o`, with metadata.json",
                        found="no such directory" if not root.exists() else "no metadata.json")
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise SpecError("metadata.json is not valid JSON", location=where, expected="JSON", found=str(err)) from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise SpecError("metadata.json is not a nasforge artifact's", location=where,
                        expected=f"format: {FORMAT}", found=repr(metadata.get("format") if isinstance(metadata, dict)
                                                                 else type(metadata).__name__))
    version = metadata.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise SpecError("unsupported artifact format version", location=where,
                        expected=f"1..{FORMAT_VERSION}", found=repr(version),
                        hint="written by a newer nasforge: upgrade nasforge or recompile")
    for name, digest in metadata.get("files", {}).items():
        file = directory / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not file.is_file():
            raise SpecError(f"artifact file {name} is missing", location=where, expected="every file listed",
                            found="missing or outside the artifact")
        actual = sha256_file(file)
        if actual != digest:
            raise SpecError(f"artifact file {name} does not match its recorded sha256", location=Location(str(file)),
                            expected=digest, found=actual, hint="the artifact was altered or damaged: recompile it")
    return directory, metadata


def load_artifact(path: str | Path) -> CompiledModule:
    """Load an artifact in any process: no spec, no compiler, no torch for the ONNX Runtime and TVM
    backends (only the backend's own runtime)."""
    from nasforge.backends.registry import compiled_class

    directory, metadata = read_metadata(path)
    return compiled_class(str(metadata.get("backend"))).load(directory, metadata)
