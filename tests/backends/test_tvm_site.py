"""The start-up fixes of the TVM worker's processes (:mod:`nasforge.backends.tvm_site`), in a process started
with the worker's environment: torch is hidden, and ``inspect.getmodule`` answers as before, without the scans
that made ``tvm.s_tir.tensor_intrin`` slow to import."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from nasforge.backends.tvm_worker import worker_env

pytest.importorskip("tvm")

CHECK = """
import inspect
import sys

import sitecustomize

assert inspect.getmodule is sitecustomize._getmodule
try:
    import torch
except ModuleNotFoundError as err:
    assert "hidden in nasforge's TVM worker processes" in str(err)
else:
    raise AssertionError("torch imported in a TVM worker process")

# every frame the TVMScript decorators look at while the tensor intrinsics import: same module as before
seen = []
def recording(obj, _filename=None):
    found = sitecustomize._getmodule(obj, _filename)
    seen.append((obj, _filename, found))
    return found
inspect.getmodule = recording
import tvm.s_tir.tensor_intrin
inspect.getmodule = sitecustomize._getmodule
pseudo = [entry for entry in seen if (entry[1] or "").startswith("<")]
assert pseudo, "no frame in a pseudo-file was looked up"
for obj, filename, found in seen[::97] + pseudo[::97]:
    assert found is sitecustomize._scanning_getmodule(obj, filename), (obj, filename)
print("OK", len(seen), len(pseudo))
"""


def test_worker_processes_hide_torch_and_look_modules_up_as_inspect_does() -> None:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(CHECK)], env=worker_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("OK")
