"""Backend names -> implementations, resolved lazily.

Each backend lives in its own module and is named here as a ``"module:Class"`` string, never imported
until asked for: loading an ONNX Runtime or TVM artifact must not drag in torch (or TVM's own torch
import) through an eager ``import`` of every backend. ``get_backend`` gives the compiler,
``compiled_class`` the :class:`~nasforge.backends.base.CompiledModule` that loads an artifact.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterable

from nasforge.backends.base import Backend, CompiledModule
from nasforge.errors import Location, SpecError, did_you_mean

BACKENDS: dict[str, str] = {
    "eager": "nasforge.backends.eager:EagerBackend",
    "inductor": "nasforge.backends.inductor:InductorBackend",
    "onnxruntime": "nasforge.backends.onnxruntime:OnnxRuntimeBackend",
    "tvm": "nasforge.backends.tvm:TVMBackend",
    "auto": "nasforge.backends.auto:AutoBackend",
}
"""Every backend ``nasforge compile --backend`` accepts, in the order ``auto`` tries them."""

COMPILED: dict[str, str] = {
    "eager": "nasforge.backends.eager:EagerModule",
    "inductor": "nasforge.backends.inductor:InductorModule",
    "onnxruntime": "nasforge.backends.onnxruntime:OnnxRuntimeModule",
    "tvm": "nasforge.backends.tvm:TVMModule",
}
"""The class that loads each backend's artifacts (``auto`` writes the artifact of the backend it chose)."""


def _resolve(reference: str) -> Any:
    module, _, attr = reference.partition(":")
    return getattr(importlib.import_module(module), attr)


def _check_name(name: str, known: dict[str, str], where: str) -> None:
    if name not in known:
        raise SpecError(f"unknown backend {name!r}", location=Location(where),
                        expected="one of " + ", ".join(known), found=repr(name),
                        hint=did_you_mean(name, list(known)))


def get_backend(name: str) -> Backend:
    """A fresh instance of the backend called ``name`` (SpecError with a did-you-mean otherwise)."""
    _check_name(name, BACKENDS, "--backend")
    return _resolve(BACKENDS[name])()


def compiled_class(name: str) -> type[CompiledModule]:
    """The :class:`CompiledModule` subclass that loads artifacts written by backend ``name``."""
    _check_name(name, COMPILED, "metadata.json: backend")
    return _resolve(COMPILED[name])


def available_backends(target: str, names: Iterable[str] = tuple(BACKENDS)) -> dict[str, tuple[bool, str]]:
    """Each backend (all by default) with whether it can compile for ``target`` here and, if not, why
    (an install hint). A backend whose module cannot even be imported (a missing dependency of the
    module itself) is reported as unavailable with the import error, not raised.
    """
    result: dict[str, tuple[bool, str]] = {}
    for name in names:
        try:
            backend = get_backend(name)
        except ImportError as err:
            result[name] = (False, f"cannot import the {name} backend: {err}")
            continue
        result[name] = backend.availability(target)
    return result


def require_available(backend: Backend, target: str) -> None:
    """Raise a SpecError saying why ``backend`` cannot compile for ``target`` here, if it cannot."""
    ok, why = backend.availability(target)
    if not ok:
        raise SpecError(f"the {backend.name} backend cannot compile for target {target!r} here",
                        location=Location("--backend"), expected=f"a backend that serves {target!r}",
                        found=why, hint=cross_compile_hint(backend.name, target))


CROSS_COMPILERS = ("tvm",)
"""Backends that generate code for machines other than this one; the others compile only for targets
this host runs (:func:`host_target`), so whatever they compiled runs here."""


def cross_compile_hint(backend: str, target: str) -> str | None:
    """Only TVM generates code for a machine other than this one; say so where it would help."""
    if backend in CROSS_COMPILERS:
        return None
    return f"the tvm backend cross-compiles: nasforge compile SPEC --backend tvm --target {target} -o OUT/"


def host_target(target: str) -> tuple[bool, str]:
    """Whether a backend that runs what it compiles (eager, inductor, ONNX Runtime) can serve ``target``.

    Those backends have no code generator of their own: they serve the machine they run on, a CPU
    profile this host can execute or ``cuda``, whose device each backend checks with its own runtime
    (torch, ONNX Runtime's providers), not TVM's. The ``c`` profile is TVM's C source.
    """
    from nasforge.backends import targets

    profile = targets.resolve(target)
    if profile.kind == "c":
        return False, "the 'c' profile is portable C source that only the tvm backend generates"
    if profile.kind == "cuda":
        return True, ""
    ok, why = profile.runs_here()
    if not ok:
        return False, f"target {profile.name!r} does not run on this machine ({why})"
    return True, ""
