"""Start-up fixes for the processes the TVM compile worker starts (and the worker itself): torch hidden, and
``inspect.getmodule`` spared a scan that made TVM's tensor-intrinsic import quadratic.

``import tvm`` imports torch when it can (apache-tvm-ffi does, for DLPack), which tripled the start-up of
every MetaSchedule builder and runner process measured here (2.5 s -> 7.7 s on a loaded 2-core machine), and
MetaSchedule starts a fresh builder pool for every batch of candidates. None of these processes uses torch.
Python imports ``sitecustomize`` at start-up from the import path; :func:`nasforge.backends.tvm_worker.worker_env`
puts this directory on the path of the worker process only, and its children inherit it.

Torch is made unfindable (an import finder that says it is not installed) rather than set to None in
``sys.modules``: SciPy (under xgboost, MetaSchedule's cost model) reads any ``torch`` entry there as the module.

Every MetaSchedule tuning process, and every builder process (MetaSchedule starts a fresh pool for every batch
of candidates), imports ``tvm.s_tir.tensor_intrin``: some 500 TVMScript functions, each decorator calling
``inspect.stack()``. For each frame that reads the frame's source, and for the import machinery's frames (files
named ``<frozen importlib._bootstrap>``, which no module has as its ``__file__``) ``inspect.getmodule`` misses its
cache and scans all of ``sys.modules``, on every call: the import took 12 s on a loaded 2-core machine, and
3 s once those hopeless scans are skipped (:func:`_getmodule`). Only these processes are patched.
"""

import importlib.abc
import inspect
import sys
from typing import Any


class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201 (the finder protocol)
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden in nasforge's TVM worker processes)",
                                      name=name)
        return None


sys.meta_path.insert(0, _NoTorch())

_scanning_getmodule = inspect.getmodule


def _getmodule(obj: Any, _filename: str | None = None) -> Any:
    """``inspect.getmodule``, answering None at once for an object with no name of its own (a frame, a code
    object) in a pseudo-file such as ``<frozen importlib._bootstrap>``: the scan of ``sys.modules`` it would
    otherwise repeat matches module files, which are never such names, so its answer is None too."""
    if (_filename is not None and _filename.startswith("<") and _filename.endswith(">")
            and not inspect.ismodule(obj) and not hasattr(obj, "__module__") and not hasattr(obj, "__name__")):
        return None
    return _scanning_getmodule(obj, _filename)


inspect.getmodule = _getmodule
