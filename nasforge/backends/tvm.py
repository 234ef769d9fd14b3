"""The TVM backend: torch.export -> Relax -> (MetaSchedule tuning) -> a shared library per target profile.

Compiling (:class:`TVMBackend`): :mod:`nasforge.backends.tvm_export` turns the GraphModule into a Relax module
with the weights as runtime inputs (or a SpecError naming the spec node TVM cannot take), then a worker
process (:mod:`nasforge.backends.tvm_worker`) tunes if asked, applies the persistent tuning database
(:mod:`nasforge.backends.tvm_tuning`) and builds and links the library for the profile
(:mod:`nasforge.backends.targets`): ``module.so`` (``module_sm_80.so``... for cuda), plus the C or CUDA source
and the PTX/cubin where the profile has them, and ``weights.safetensors``.

Running (:class:`TVMModule`): the library and the weights load in a process that has never imported torch:
this module imports neither at import time, and the loader hides torch from ``import tvm`` (which imports it
otherwise). A module built for a profile this machine cannot run (arm64 on x86, cuda without a GPU) loads,
reports its files and metadata, and refuses to run with the reason.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nasforge.backends.base import Backend, CompileInfo, CompiledModule, TensorSpec
from nasforge.backends.registry import require_available
from nasforge.backends.targets import TargetProfile, import_tvm, resolve
from nasforge.backends.tvm_prepack import default_for as prepack_default
from nasforge.errors import Location, SpecError

WEIGHTS = "weights.safetensors"
INSTALL_HINT = "pip install 'nasforge[tvm]' (apache-tvm 0.27 with apache-tvm-ffi 0.1.14.post1)"


class TVMModule(CompiledModule):
    """A compiled TVM library plus its weights, run by the Relax virtual machine."""

    backend = "tvm"

    def __init__(self, directory: Path, files: dict[str, Any], target: str, inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec], info: CompileInfo | None = None) -> None:
        super().__init__(target, inputs, outputs, info)
        self.directory = Path(directory)
        self.files = files
        self.profile: TargetProfile = resolve(target)
        self._vm: Any = None
        self._params: list[Any] = []
        self._device: Any = None

    # -- running ----------------------------------------------------------------------------------------
    def _library(self, tvm: Any) -> tuple[str, Any, str | None]:
        """The library for this machine's device and, for cuda, the arch whose kernels it loads: the newest
        build not newer than the GPU (a cubin runs on GPUs of its major version; PTX on any newer one)."""
        libraries: dict[str, str] = self.files["libraries"]
        if self.profile.kind != "cuda":
            return next(iter(libraries.values())), tvm.cpu(), None
        device = tvm.cuda()
        have = int(str(device.compute_version).replace(".", ""))
        usable = sorted((int(arch.removeprefix("sm_")), arch) for arch in libraries
                        if int(arch.removeprefix("sm_")) <= have)
        if not usable:
            raise SpecError(f"no CUDA build in this artifact runs on sm_{have}", location=Location(str(self.directory)),
                            expected="one of " + ", ".join(libraries), found=f"sm_{have}")
        number, arch = usable[-1]
        return libraries[arch], device, f"kernels_{arch}.{'cubin' if number // 10 == have // 10 else 'ptx'}"

    def _load_library(self, tvm: Any, name: str, kernels: str | None) -> Any:
        """Load the library; for cuda, hand TVM the artifact's own kernel binary when it compiles the
        embedded CUDA source at load (TVM would otherwise need nvcc or NVRTC on the deploy machine)."""
        if kernels is None or kernels not in self.files.get("binaries", []):
            return tvm.runtime.load_module(str(self.directory / name))
        import tvm_ffi

        callback = "tvm_callback_cuda_compile"
        binary = (self.directory / kernels).read_bytes()
        previous = tvm_ffi.get_global_func(callback, allow_missing=True)
        tvm_ffi.register_global_func(callback, lambda *_: bytearray(binary), override=True)
        try:
            return tvm.runtime.load_module(str(self.directory / name))
        finally:
            if previous is not None:
                tvm_ffi.register_global_func(callback, previous, override=True)
            else:
                tvm_ffi.remove_global_func(callback)

    def _ensure_loaded(self) -> None:
        if self._vm is not None:
            return
        runs, why = self.profile.runs_here()
        if not runs:
            raise SpecError(f"this module was built for target {self.profile.name!r}, which does not run here",
                            location=Location(str(self.directory)), expected="a target this machine runs",
                            found=why, hint="copy the artifact to a machine of that kind, or compile for 'x86'")
        tvm = import_tvm()
        from safetensors.numpy import load_file
        from tvm import relax

        name, self._device, kernels = self._library(tvm)
        self._vm = relax.VirtualMachine(self._load_library(tvm, name, kernels), self._device)
        weights = load_file(str(self.directory / self.files["weights"]))
        params = [tvm.runtime.tensor(weights[n], self._device) for n in self.files["param_names"]]
        # What depends on the weights alone was lifted out of ``main`` at compile time: run it once here (a
        # chain of functions; artifacts written before prepacking say ``true`` for the one transform).
        chain = self.files.get("transform_params") or []
        for name in ["main_transform_params"] if chain is True else chain:
            params = list(self._vm[name](params))
        self._params = params

    def run_numpy(self, *arrays: np.ndarray) -> list[np.ndarray]:
        self._ensure_loaded()
        import tvm

        args = [tvm.runtime.tensor(np.ascontiguousarray(a), self._device) for a in arrays]
        result = self._vm["main"](*args, *self._params)
        items = [result] if hasattr(result, "numpy") else list(result)
        return [item.numpy() for item in items]

    # -- files --------------------------------------------------------------------------------------------
    def save(self, directory: Path) -> dict[str, Any]:
        """Copy the libraries, the weights, and the generated C/CUDA sources and GPU binaries."""
        files = self.files
        for name in [*files["libraries"].values(), files["weights"], *files["sources"], *files["binaries"]]:
            shutil.copyfile(self.directory / name, directory / name)
        return dict(files)

    @classmethod
    def load(cls, directory: Path, metadata: dict[str, Any]) -> "TVMModule":
        return cls(directory, metadata["backend_files"], metadata["target"]["name"],
                   [TensorSpec.from_dict(d) for d in metadata["inputs"]],
                   [TensorSpec.from_dict(d) for d in metadata["outputs"]], CompileInfo(**metadata["compile"]))


class TVMBackend(Backend):
    name = "tvm"
    compiles_in_child = True
    description = ("torch.export -> TVM Relax -> MetaSchedule-tuned library (persistent tuning database); "
                   "cross-compiles for every target profile")
    option_names = ("tune_trials", "tune_minutes", "tuning_db", "trials_per_task", "retune", "dynamic_batch",
                    "winograd", "prepack")

    def availability(self, target: str) -> tuple[bool, str]:
        if importlib.util.find_spec("tvm") is None:
            return False, f"TVM is not installed ({INSTALL_HINT})"
        return resolve(target).builds_here()

    def check_options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        """This backend's options, validated: budgets are numbers >= 0 (0 or absent: no tuning), retune,
        winograd and prepack booleans."""
        own = {k: v for k, v in (options or {}).items() if k in self.option_names and v is not None}
        for key, kind in (("tune_trials", int), ("tune_minutes", float), ("trials_per_task", int)):
            if key in own:
                value = own[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                        or (kind is int and int(value) != value):
                    raise SpecError(f"option {key!r} must be a {'whole ' if kind is int else ''}number >= 0",
                                    location=Location(f"--{key.replace('_', '-')}"),
                                    expected=f"{kind.__name__} >= 0", found=repr(value))
                own[key] = kind(value)
        for key in ("retune", "winograd", "prepack"):
            if key in own and not isinstance(own[key], bool):
                raise SpecError(f"option {key!r} must be true or false", location=Location(f"--option {key}"),
                                expected="true or false", found=repr(own[key]))
        return own

    def compile(self, graph_module: Any, example_inputs: Sequence[Any], target: str,
                options: dict[str, Any] | None = None) -> CompiledModule:
        from nasforge.backends import tvm_export, tvm_tuning, tvm_worker
        from nasforge.backends.torchio import describe_io
        from nasforge.ops.fft import direct_note

        require_available(self, target)
        own = self.check_options(options)
        profile = resolve(target)
        budget = {"trials": own.get("tune_trials") or None, "minutes": own.get("tune_minutes") or None,
                  "trials_per_task": own.get("trials_per_task"), "retune": bool(own.get("retune"))}
        tuning = budget["trials"] is not None or budget["minutes"] is not None
        dynamic = bool(own.get("dynamic_batch"))
        if tuning:
            tvm_tuning.check_tunable(profile)
            if dynamic:
                raise SpecError("tuning needs static shapes", location=Location("--option dynamic_batch"),
                                expected="dynamic_batch off when tuning", found="dynamic_batch with a tuning budget",
                                hint="tune at the batch you deploy; a dynamic-batch build runs untuned code")
        gm = graph_module.cpu().eval()
        examples = tuple(x.cpu() for x in example_inputs)
        inputs, outputs, _ = describe_io(gm, examples)
        started = time.perf_counter()
        program = tvm_export.to_relax(tvm_export.export(gm, examples, dynamic), gm)
        export_s = time.perf_counter() - started
        out = Path(tempfile.mkdtemp(prefix="nasforge-tvm-module-"))
        try:
            request = {"mode": "compile", "target": profile.name, "db_root": own.get("tuning_db"),
                       "tune": budget if tuning else None, "winograd": bool(own.get("winograd")),
                       "prepack": own.get("prepack", prepack_default(profile.kind))}
            try:
                result = tvm_worker.run_worker(request, [program.module_json], out)
            except tvm_worker.StageError as err:
                if err.stage in ("build", "link"):
                    raise self._codegen_error(gm, examples, request, err) from None
                raise
            from safetensors.numpy import save_file

            save_file(dict(zip(program.param_names, program.params)), str(out / WEIGHTS))
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        files = {**result["files"], "weights": WEIGHTS, "param_names": program.param_names,
                 "tvm_targets": result["targets"], "dynamic_batch": dynamic}
        summary = {**result["tuning"], "applied": result.get("database", {})}
        info = CompileInfo(compile_s=export_s + result["compile_s"],
                           tuning_s=float(result["tuning"].get("tuning_s", 0.0)),
                           tuning=summary, notes=result["notes"] + self._notes(profile, result))
        info.notes.extend(filter(None, [direct_note(gm, "TVM 0.27")]))
        ignored = sorted(k for k, v in (options or {}).items() if k not in self.option_names and v is not None)
        if ignored:
            info.notes.append(f"tvm ignores options it has no use for: {', '.join(ignored)}")
        compiled = TVMModule(out, files, profile.name, inputs, outputs, info)
        weakref.finalize(compiled, shutil.rmtree, str(out), True)
        return compiled

    @staticmethod
    def _codegen_error(gm: Any, examples: Sequence[Any], request: dict[str, Any],
                       err: SpecError) -> SpecError:
        """Name the spec node a target cannot generate code for: TVM's error names a fused TIR function, so
        build the distinct nodes one by one until one fails the same way."""
        from nasforge.backends import tvm_export, tvm_worker
        from nasforge.ops import all_ops

        probes = tvm_export.node_probes(gm, examples)
        index, why = tvm_worker.probe(request, [p.module_json for p in probes])
        if index is None:
            return err  # every node builds alone: the failure needs their combination; say what TVM said
        node = probes[index]
        limits = getattr(all_ops().get(node.op), "backend_limits", {}) or {}
        return SpecError(f"the tvm backend cannot generate {request['target']} code for op {node.op!r}",
                         node_path=node.path, expected=f"ops TVM compiles for {request['target']!r}", found=why,
                         hint=limits.get("tvm") or "compile for another target, or with another backend")

    @staticmethod
    def _notes(profile: TargetProfile, result: dict[str, Any]) -> list[str]:
        notes = []
        tuning = result["tuning"]
        if tuning:
            notes.append(f"tuning: {tuning['tasks_tuned']} of {tuning['tasks_total']} tasks tuned in "
                         f"{tuning['trials']} trials ({tuning['tuning_s']:.0f} s), {tuning['tasks_from_database']} "
                         f"already in the database, {tuning['tasks_left_untuned']} left untuned by the budget")
        for label, applied in result.get("database", {}).items():
            notes.append(f"{applied['tasks_from_database']} of {applied['tasks_total']} tasks"
                         f"{' for ' + label if label else ''} use tuned schedules from {applied['path']}")
        runs, why = profile.runs_here()
        if not runs:
            notes.append(f"built for {profile.name!r}, which does not run here: {why}")
        return notes
