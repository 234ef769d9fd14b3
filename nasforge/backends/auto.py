"""The ``auto`` backend: compile with every backend that serves the target, time each one the same way,
keep the fastest, and say which and why.

A candidate counts only if it compiles and its outputs agree with eager's on the example inputs (a
fast wrong answer is not a winner). Every candidate's outcome (median and spread, compile and tuning
seconds, or the reason it was skipped or rejected) is recorded in the winner's ``info.tuning["auto"]``
and summarized in ``info.notes``; the artifact then stores it in ``metadata.json``. Options pass
through to every candidate (tuning budgets reach tvm); ``auto_backends`` restricts the candidates and
``auto_max_seconds`` caps each candidate's timing loop.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from nasforge.backends.base import Backend, CompiledModule, Latency
from nasforge.backends.registry import BACKENDS, available_backends, get_backend
from nasforge.errors import Location, SpecError

CANDIDATES = tuple(name for name in BACKENDS if name != "auto")
RTOL, ATOL = 1e-3, 1e-4
"""Agreement with eager: |out - ref| <= ATOL * max(1, max|ref|) + RTOL * |ref| (float32 kernels that fuse
and reorder sums differ from eager by ~1e-6 relative; a wrong lowering differs by far more)."""


def max_abs_error(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """The largest absolute difference over all outputs (inf if the outputs do not even line up)."""
    if len(outputs) != len(reference) or any(np.shape(o) != np.shape(r) for o, r in zip(outputs, reference)):
        return float("inf")
    return max((float(np.max(np.abs(np.asarray(o, np.float64) - np.asarray(r, np.float64)), initial=0.0))
                for o, r in zip(outputs, reference)), default=0.0)


def agrees(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> bool:
    """Whether ``outputs`` match ``reference`` within the tolerance above (exactly, for integer outputs)."""
    if max_abs_error(outputs, reference) == float("inf"):
        return False
    for out, ref in zip(outputs, reference):
        ref64 = np.asarray(ref, np.float64)
        scale = max(1.0, float(np.max(np.abs(ref64), initial=0.0)))
        if not np.allclose(np.asarray(out, np.float64), ref64, rtol=RTOL, atol=ATOL * scale, equal_nan=True):
            return False
    return True


class AutoBackend(Backend):
    name = "auto"
    description = "measures every available backend for the target and keeps the fastest that agrees with eager"

    def availability(self, target: str) -> tuple[bool, str]:
        status = available_backends(target, CANDIDATES)
        if any(ok for ok, _ in status.values()):
            return True, ""
        return False, "; ".join(f"{name}: {why}" for name, (_, why) in status.items())

    def compile(self, graph_module: Any, example_inputs: Sequence[Any], target: str,
                options: dict[str, Any] | None = None) -> CompiledModule:
        from nasforge.backends.torchio import describe_io

        options = dict(options or {})
        names = options.pop("auto_backends", None) or CANDIDATES
        unknown = [n for n in names if n not in CANDIDATES]
        if unknown:
            raise SpecError(f"unknown backend(s) for auto: {', '.join(map(str, unknown))}",
                            location=Location("--option auto_backends"), expected="some of " + ", ".join(CANDIDATES),
                            found=repr(unknown))
        max_seconds = float(options.pop("auto_max_seconds", 10.0))
        _, _, reference = describe_io(graph_module.cpu().eval(), [x.cpu() for x in example_inputs])
        rows: list[dict[str, Any]] = []
        best: tuple[Latency, CompiledModule] | None = None
        for name in names:
            row, compiled, latency = self._try(name, graph_module, example_inputs, target, options, reference,
                                               max_seconds)
            rows.append(row)
            if compiled is not None and latency is not None and (best is None or latency.median_ms < best[0].median_ms):
                best = (latency, compiled)
        if best is None:
            raise SpecError(f"no backend compiled this network for target {target!r}", location=Location("--backend"),
                            expected="at least one backend that compiles it and agrees with eager",
                            found="; ".join(f"{r['backend']}: {r['reason']}" for r in rows))
        latency, winner = best
        explain(winner, rows, latency)
        return winner

    def _try(self, name: str, graph_module: Any, example_inputs: Sequence[Any], target: str,
             options: dict[str, Any], reference: list[np.ndarray], max_seconds: float
             ) -> tuple[dict[str, Any], CompiledModule | None, Latency | None]:
        """Compile, check and time one candidate; its row for the table whatever happens."""
        ok, why = available_backends(target, [name])[name]
        if not ok:
            return {"backend": name, "status": "unavailable", "reason": why}, None, None
        try:
            compiled = get_backend(name).compile(graph_module, example_inputs, target, options)
        except SpecError as err:
            return {"backend": name, "status": "failed", "reason": err.message + (f" ({err.found})" if err.found else "")}, None, None
        arrays = [x.detach().cpu().numpy() for x in example_inputs]
        outputs = compiled.run_numpy(*arrays)
        row: dict[str, Any] = {"backend": name, "compile_s": round(compiled.info.compile_s, 3),
                               "tuning_s": round(compiled.info.tuning_s, 3),
                               "max_abs_err": max_abs_error(outputs, reference)}
        if not agrees(outputs, reference):
            return {**row, "status": "rejected", "reason": f"outputs differ from eager (max abs error "
                                                           f"{row['max_abs_err']:.3g})"}, None, None
        latency = compiled.latency(inputs=arrays, max_seconds=max_seconds)
        return {**row, "status": "ok", "median_ms": latency.median_ms, "p10_ms": latency.p10_ms,
                "p90_ms": latency.p90_ms, "repeats": latency.repeats}, compiled, latency


def explain(winner: CompiledModule, rows: list[dict[str, Any]], latency: Latency) -> None:
    """Record the candidates' table and the reason for the choice in the winner's compile info."""
    timed = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["median_ms"])
    runner_up = timed[1] if len(timed) > 1 else None
    reason = f"fastest of {len(timed)} that agree with eager: {latency.median_ms:.3f} ms median"
    if runner_up:
        reason += f", {runner_up['median_ms'] / latency.median_ms:.2f}x faster than {runner_up['backend']}"
    winner.info.tuning["auto"] = {"chosen": winner.backend, "reason": reason, "candidates": rows}
    winner.info.notes.append(f"auto chose {winner.backend}: {reason}")
    for r in rows:
        if r["status"] != "ok":
            winner.info.notes.append(f"auto: {r['backend']} {r['status']}: {r['reason']}")
