"""The TVM compile/tune worker: TVM's code generation and tuning run in a child process.

Why a process: TVM installs its own fatal-signal handling, and an abort inside codegen or MetaSchedule kills
the process it runs in. In a child that is a failed compile the parent reports (naming the stage it died in);
in the CLI or a search driver it would be a dead program. The parent (:func:`run_worker`) hands over the
Relax module as TVM JSON plus a small request, and reads back ``result.json``; the child writes its current
stage to a file before each step, so even a segfault is reported as "TVM aborted while linking for arm64".

The child and the MetaSchedule processes it starts never import torch (``import tvm`` would; see
:mod:`nasforge.backends.tvm_site`): they need none, and they start three times faster without it.
``TVM_NUM_THREADS`` is set to the host's cores before TVM starts (TVM's default is half).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from nasforge.backends.base import host_cores
from nasforge.backends.turns import PARENT
from nasforge.errors import SpecError

STAGES = {
    "start": "starting the worker",
    "load": "loading the Relax module",
    "lower": "lowering (legalize, fuse) for the target",
    "tune": "tuning with MetaSchedule",
    "apply": "applying the tuning database",
    "build": "generating code for the target",
    "link": "linking the shared library",
    "cuda": "compiling CUDA kernels with nvcc",
    "probe": "building spec node",
}


PROGRESS = "progress.json"
"""The child rewrites this file (atomically) after each tuning round; the parent polls it."""
POLL_S = 1.0
_listener: ContextVar[Callable[[dict[str, Any]], None] | None] = ContextVar("tvm_progress", default=None)


@contextlib.contextmanager
def progress_to(listener: Callable[[dict[str, Any]], None]) -> Iterator[None]:
    """Within the block, every TVM compile or tune in this thread reports its tuning progress to ``listener``
    (a dict: trials, budget, tasks, the task being tuned, the estimated kernel time): how the CLI's status line
    follows a tuning run of many minutes without the backend interface growing a callback argument."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def write_progress(work: Path, progress: dict[str, Any]) -> None:
    """In the child: replace the progress file at once (the parent never reads half of one)."""
    tmp = work / (PROGRESS + ".tmp")
    tmp.write_text(json.dumps(progress))
    tmp.replace(work / PROGRESS)


def _wait(proc: subprocess.Popen[str], work: Path) -> tuple[str, str]:
    """The child's output once it exits; meanwhile (and once more at the end) its progress goes to the
    listener, if one is set."""
    listener, seen = _listener.get(), None
    while True:
        try:
            output = proc.communicate(timeout=POLL_S if listener else None)
        except subprocess.TimeoutExpired:
            output = None
        if listener is not None:
            seen = _relay(work / PROGRESS, seen, listener)
        if output is not None:
            return output


def _relay(path: Path, seen: str | None, listener: Callable[[dict[str, Any]], None]) -> str | None:
    """Hand the progress file to the listener if it changed since ``seen``; returns its text."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return seen
    if text != seen:
        listener(json.loads(text))
    return text


def worker_env() -> dict[str, str]:
    """The child's environment: every core for TVM's pool, this nasforge first on the import path, and
    :mod:`nasforge.backends.tvm_site` (torch hidden) for the child and the builder/runner processes it starts."""
    import nasforge

    package = Path(nasforge.__file__).resolve().parent
    env = dict(os.environ)
    env.setdefault("TVM_NUM_THREADS", str(host_cores()))
    paths = [str(package / "backends" / "tvm_site"), str(package.parent)]
    env["PYTHONPATH"] = os.pathsep.join([*paths, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    return env


@dataclass(eq=False)
class StageError(SpecError):
    """A failure in the worker, with the stage it happened in (``build``, ``probe 3``...)."""

    stage: str = "start"


def run_worker(request: dict[str, Any], modules: Sequence[str], out_dir: Path | None = None) -> dict[str, Any]:
    """Run one request on Relax modules (TVM JSON) in a child process: its result, or a StageError."""
    with tempfile.TemporaryDirectory(prefix="nasforge-tvm-") as tmp:
        work = Path(tmp)
        paths = []
        for k, text in enumerate(modules):
            paths.append(str(work / f"module{k}.json"))
            Path(paths[-1]).write_text(text)
        full = {**request, "modules": paths, "work": str(work), "out": str(out_dir) if out_dir else None}
        (work / "request.json").write_text(json.dumps(full))
        command = [sys.executable, "-m", "nasforge.backends.tvm_worker", str(work / "request.json")]
        child = subprocess.Popen(command, env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            with PARENT.waiting():  # another compiling thread may export meanwhile (nasforge.backends.turns)
                stdout, stderr = _wait(child, work)
        except BaseException:  # Ctrl-C or an error in the listener: no orphaned tuner
            child.kill()
            child.wait()
            raise
        proc = subprocess.CompletedProcess(command, child.returncode, stdout, stderr)
        result_file = work / "result.json"
        result = json.loads(result_file.read_text()) if result_file.is_file() else None
        if result is not None and result.get("ok"):
            return result
        stage_file = work / "stage"
        stage = stage_file.read_text().strip() if stage_file.is_file() else "start"
        raise _failure(request, stage, proc, result)


def _doing(stage: str) -> str:
    name, _, index = stage.partition(" ")
    return STAGES.get(name, stage) + (f" {index}" if index else "")


def _failure(request: dict[str, Any], stage: str, proc: subprocess.CompletedProcess[str],
             result: dict[str, Any] | None) -> StageError:
    doing = _doing(stage)
    target = request.get("target")
    if result is not None:
        verb = "tune" if request["mode"] == "tune" else "compile"
        return StageError(f"TVM failed while {doing} for target {target!r}",
                          expected=f"the network to {verb} for {target!r}",
                          found=_summary(result.get("error", "")), hint=result.get("hint"), stage=stage)
    if proc.returncode < 0:
        how = f"killed by {signal.Signals(-proc.returncode).name}"
    else:
        how = f"exited with status {proc.returncode}"
    tail = "\n".join((proc.stderr or "").strip().splitlines()[-12:])
    return StageError(f"TVM aborted while {doing} for target {target!r} (the worker process {how})",
                      expected="TVM to finish or raise an error", found=tail or "no output",
                      hint="a TVM crash, isolated from this process; try another target or backend, and report it",
                      stage=stage)


def _summary(error: str) -> str:
    """TVM's error in one line: its first line says what failed; the rest is IR dumps and C++ frames."""
    first = next((line.strip() for line in error.splitlines() if line.strip()), "unknown error")
    return first if len(first) <= 600 else first[:600] + " ..."


def probe(request: dict[str, Any], modules: Sequence[str]) -> tuple[int | None, str]:
    """Build each one-node module alone for the request's target; the index of the first that fails
    (even by crashing the worker) and why, or (None, "") if all build."""
    try:
        result = run_worker({**request, "mode": "probe"}, modules)
    except StageError as err:
        name, _, index = err.stage.partition(" ")
        if name == "probe" and index.isdigit():
            return int(index), err.found or err.message
        raise
    return result["failed"], result.get("error", "")


# -- the child ---------------------------------------------------------------------------------------------

class _Stage:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = "start"

    def __call__(self, name: str) -> None:
        self.name = name
        self.path.write_text(name)


TRANSFORM_PARAMS = "main_transform_params"
"""The function ``LiftTransformParams`` splits off: what depends on the weights alone (transposed linear
weights, reshaped biases, BatchNorm folded into a scale and shift), run once when the weights load."""


def lower(mod: Any, target: Any, request: dict[str, Any]) -> Any:
    """Legalize and fuse the Relax module for ``target`` (the form tuning tasks and the database refer to),
    with the weight-only computations lifted out of ``main`` into :data:`TRANSFORM_PARAMS`. The request's
    ``winograd`` computes the eligible 3x3 convolutions with Winograd's algorithm
    (:mod:`nasforge.backends.tvm_winograd`); its ``prepack`` leaves the weights' layout to tuning
    (:mod:`nasforge.backends.tvm_prepack`)."""
    import tvm
    from tvm import relax

    from nasforge.backends.tvm_fastmath import fast_gelu_pass
    from nasforge.backends.tvm_group_norm import two_pass_group_norm_pass
    from nasforge.backends.tvm_prepack import mark_layout_free
    from nasforge.backends.tvm_winograd import winograd_pass

    with target:
        return tvm.transform.Sequential([fast_gelu_pass(), two_pass_group_norm_pass(),
                                         *([winograd_pass()] if request.get("winograd") else []),
                                         relax.transform.DecomposeOpsForInference(),
                                         relax.transform.CanonicalizeBindings(),
                                         relax.transform.LiftTransformParams(),
                                         relax.get_pipeline("zero"),
                                         *([mark_layout_free()] if request.get("prepack") else [])])(mod)


def _modules(module: Any) -> list[Any]:
    """A runtime module and everything it imports, depth first."""
    found = [module]
    for child in module.imports:
        found.extend(_modules(child))
    return found


def _probe(request: dict[str, Any], modules: list[Any], stage: _Stage) -> dict[str, Any]:
    """Lower and build each module alone (one spec node each): which one the target cannot generate."""
    import tvm

    from nasforge.backends import targets

    profile = targets.resolve(request["target"])
    for index, mod in enumerate(modules):
        stage(f"probe {index}")
        for arch in profile.variants():
            target = profile.tvm_target(arch)
            try:
                tvm.compile(lower(mod, target, request), target=target)
            except Exception as err:  # TVM's own error types: this node is the one
                return {"failed": index, "error": _summary(f"{type(err).__name__}: {err}")}
    return {"failed": None}


def _compile(request: dict[str, Any], modules: list[Any], stage: _Stage) -> dict[str, Any]:
    """Tune (if asked), apply the database and build one library per variant of the target profile."""
    import tvm

    from nasforge.backends import targets, tvm_prepack, tvm_tuning, tvm_winograd

    (mod,) = modules
    profile = targets.resolve(request["target"])
    result: dict[str, Any] = {"files": {"libraries": {}, "sources": [], "binaries": []}, "notes": [],
                              "tuning": {}, "targets": {}, "database": {}, "compile_s": 0.0}
    for arch in profile.variants():
        target = profile.tvm_target(arch)
        database = tvm_tuning.TuningDatabase(tvm_tuning.database_dir(profile, request.get("db_root"), arch))
        started = time.monotonic()
        stage("lower")
        prepack, forms, known = request.get("prepack"), {}, None
        if prepack is None:  # the database decides: the form to tune in now, each kernel's form below
            prepack, forms, why, known = tvm_prepack.choose(
                lambda flag: lower(mod, target, {**request, "prepack": flag}), target, database,
                bool(request.get("tune")), Path(request["work"]) / f"choose-{arch or 'cpu'}")
            lowered = forms[prepack]
            _note(result, why)
        else:
            lowered = lower(mod, target, request)
        _note(result, tvm_winograd.summary(lowered))
        if request.get("tune"):
            stage("tune")
            work = Path(request["work"])
            result["tuning"] = tvm_tuning.tune_module(lowered, target, database, tvm_tuning.Budget(**request["tune"]),
                                                      work / "tune", host_cores(),
                                                      report=lambda progress: write_progress(work, progress))
        if request["mode"] == "tune":
            return result
        stage("apply")
        if known is None or request.get("tune"):  # tuning added records: read the database again
            known = database.snapshot(Path(request["work"]) / f"apply-{arch or 'cpu'}") if database.exists() else None
        if True in forms and known is not None:
            lowered, mixed = tvm_prepack.per_kernel(forms[True], known, prepack)
            _note(result, mixed)
        lowered, applied = tvm_tuning.apply_database(lowered, target, known)
        # the weight transforms to run at load, with the layout changes of prepacked kernels (if any) lifted
        lowered, chain = tvm_prepack.lift_layouts(lowered, TRANSFORM_PARAMS)
        stage("build")
        executable = tvm.compile(lowered, target=target)
        _write_library(executable, profile, arch, target, Path(request["out"]), stage, result)
        result["files"]["transform_params"] = chain
        result["targets"][arch or ""] = profile.target_dict(arch)
        result["database"][arch or ""] = {"path": str(database.directory), **applied}
        result["compile_s"] += time.monotonic() - started - result["tuning"].get("tuning_s", 0.0)
    return result


def _note(result: dict[str, Any], note: str | None) -> None:
    """Add a note to the compile's report once (the variants of a target profile repeat them)."""
    if note and note not in result["notes"]:
        result["notes"].append(note)


def _write_library(executable: Any, profile: Any, arch: str | None, target: Any, out: Path, stage: _Stage,
                   result: dict[str, Any]) -> None:
    """Link the library (with the profile's cross compiler) and write the generated C/CUDA source beside it,
    plus the PTX and cubin of CUDA kernels."""
    stage("link")
    name = f"module_{arch}.so" if arch else "module.so"
    executable.export_library(str(out / name), **({"cc": profile.cross_compiler} if profile.cross_compiler else {}))
    result["files"]["libraries"][arch or ""] = name
    for module in _modules(executable.mod):
        if module.kind not in ("c", "cuda"):
            continue
        source = f"kernels_{arch}.cu" if module.kind == "cuda" else "module.c"
        (out / source).write_text(module.inspect_source())
        result["files"]["sources"].append(source)
        if module.kind == "cuda":
            stage("cuda")
            with target:  # nvcc's wrapper reads the arch of the current target
                result["files"]["binaries"] += _cuda_binaries(module.inspect_source(), arch, out, result["notes"])


def _cuda_binaries(source: str, arch: str, out: Path, notes: list[str]) -> list[str]:
    """PTX and cubin of the generated CUDA kernels for ``arch`` (nvcc), so the artifact holds machine code
    for the GPU generation (the CPU-only TVM wheel embeds CUDA source only)."""
    import shutil

    from tvm.support import nvcc

    if shutil.which("nvcc") is None:
        notes.append(f"nvcc not found: the {arch} kernels are CUDA source only (no PTX/cubin)")
        return []
    written = []
    for fmt in ("ptx", "cubin"):
        name = f"kernels_{arch}.{fmt}"
        (out / name).write_bytes(bytes(nvcc.compile_cuda(source, target_format=fmt, arch=arch, compiler="nvcc")))
        written.append(name)
    return written


def main(argv: list[str] | None = None) -> int:
    """Child entry: ``python -m nasforge.backends.tvm_worker REQUEST.json``; always writes ``result.json``."""
    request = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    work = Path(request["work"])
    stage = _Stage(work / "stage")
    try:
        import tvm

        stage("load")
        modules = [tvm.ir.load_json(Path(path).read_text()) for path in request["modules"]]
        run = _probe if request["mode"] == "probe" else _compile
        result = {"ok": True, **run(request, modules, stage)}
    except SpecError as err:
        result = {"ok": False, "stage": stage.name, "error": err.message + (f" ({err.found})" if err.found else ""),
                  "hint": err.hint}
    except Exception as err:  # TVM raises its own error types; the parent reports them with the stage
        result = {"ok": False, "stage": stage.name, "error": f"{type(err).__name__}: {err}"}
    tmp = work / "result.json.tmp"
    tmp.write_text(json.dumps(result, default=str))
    tmp.replace(work / "result.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
