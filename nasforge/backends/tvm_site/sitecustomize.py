"""Hide torch from ``import tvm`` in the processes the TVM compile worker starts (and in the worker itself).

``import tvm`` imports torch when it can (apache-tvm-ffi does, for DLPack), which tripled the start-up of
every MetaSchedule builder and runner process measured here (2.5 s -> 7.7 s on a loaded 2-core machine), and
MetaSchedule starts a fresh builder pool for every batch of candidates. None of these processes uses torch.
Python imports ``sitecustomize`` at start-up from the import path; :func:`nasforge.backends.tvm_worker.worker_env`
puts this directory on the path of the worker process only, and its children inherit it.

Torch is made unfindable (an import finder that says it is not installed) rather than set to None in
``sys.modules``: SciPy (under xgboost, MetaSchedule's cost model) reads any ``torch`` entry there as the module.
"""

import importlib.abc
import sys


class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201 (the finder protocol)
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden in nasforge's TVM worker processes)",
                                      name=name)
        return None


sys.meta_path.insert(0, _NoTorch())
