"""What the op x backend coverage tests share: each backend's column computed once per test session, and
the failures found so far, each routed to the owner of the backend code (strict xfails in the matrix: a fix
makes its test fail until the entry here is removed, so the list cannot go stale)."""

from __future__ import annotations

from functools import lru_cache

from nasforge.backends.coverage import BackendRun, Case, make_cases, run_backend

_ORT_LOAD = ("ONNX Runtime refuses the exported graph ({why}); the SpecError ('ONNX Runtime cannot load the exported "
             "graph') names no op or node (routed to the backend owner)")
KNOWN_DEFECTS: dict[tuple[str, str], str] = {
    ("onnxruntime", "attention_mask"): _ORT_LOAD.format(why="no EyeLike kernel for int64/bool, ex2 and ex3"),
    ("onnxruntime", "einsum"): _ORT_LOAD.format(why="'...ij,...jk' with a rank-2 operand, ex2"),
}
"""(backend, op) -> what goes wrong and where it has been routed: an op that neither matches eager nor is
refused with an error naming the op and its node. Measured with torch 2.13, onnxruntime 1.31, TVM 0.27."""


@lru_cache(maxsize=None)
def cases(ops: tuple[str, ...] | None = None) -> tuple[Case, ...]:
    """The examples of ``ops`` (every registered op for None), built once per session."""
    return tuple(make_cases(ops))


@lru_cache(maxsize=None)
def column(backend: str, ops: tuple[str, ...] | None = None) -> BackendRun:
    """One backend's results for ``ops``: one run per session however many tests read it (TVM and Inductor
    spend minutes on the whole vocabulary)."""
    return run_backend(backend, cases(ops))
