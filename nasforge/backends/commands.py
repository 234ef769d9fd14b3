"""``nasforge compile``, ``nasforge run`` and ``nasforge targets``: the logic behind the thin CLI commands.

``run`` is the deploy path: it imports only the artifact's own runtime (never torch for ONNX Runtime or
TVM artifacts), so this module imports nothing heavy at module level and ``compile`` imports the
compiler inside its function.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from nasforge.backends.base import Latency, TensorSpec
from nasforge.errors import Location, SpecError

VALUES_SHOWN = 64
"""Outputs up to this many elements are printed (and put in --json) whole; larger ones as statistics."""


# -- compile ------------------------------------------------------------------------------------------
def compile_command(args: argparse.Namespace) -> int:
    from nasforge.backends.artifact import check_destination, write_artifact
    from nasforge.backends.auto import agrees, max_abs_error
    from nasforge.backends.registry import CROSS_COMPILERS, get_backend
    from nasforge.backends import tvm_worker
    from nasforge.backends.targets import resolve
    from nasforge.backends.tvm_tuning import describe_progress
    from nasforge.cli import _console, _load

    con = _console()
    spec = _load(args)
    graph = spec.graph
    if graph.choices:
        raise SpecError("a search space cannot be compiled: decide its choices first", location=Location(args.spec),
                        expected="a concrete network", found=f"{len(graph.choices)} choice point(s)",
                        hint="nasforge sample SPEC -o net.yaml (or a search's -o best.yaml) gives a concrete spec")
    backend = get_backend(args.backend)
    profile = resolve(args.target)
    options = backend_options(args)
    check_destination(Path(args.output))  # before minutes of compiling, not after
    with _status(con, args.json) as status:
        import torch

        from nasforge.compiler.fx_builder import example_inputs

        status(f"building {spec.name}")
        gm = spec.build()
        inputs = example_inputs(graph, batch=args.batch)
        with torch.inference_mode():
            reference = [t.numpy() for t in _flat(gm(*inputs))]
        status("optimizing the graph")
        gm, passes = optimize_graph(gm, enabled=not args.no_optimize)
        gm.meta["output_names"] = list(graph.outputs)
        status(f"compiling with {backend.name} for {profile.name}"
               + (" (tuning)" if options.get("tune_trials") or options.get("tune_minutes") else ""))
        with tvm_worker.progress_to(lambda progress: status(describe_progress(progress))):
            compiled = backend.compile(gm, inputs, profile.name, options)
        runs_here, why_not = profile.runs_here() if compiled.backend in CROSS_COMPILERS else (True, "")
        latency: Latency | None = None
        agreement: dict[str, Any] = {"checked": False, "reason": f"target does not run here: {why_not}"}
        if runs_here:
            status("checking outputs against eager")
            arrays = [t.numpy() for t in inputs]
            outputs = compiled.run_numpy(*arrays)
            agreement = {"checked": True, "reference": "eager, before graph passes",
                         "ok": agrees(outputs, reference), "max_abs_err": max_abs_error(outputs, reference)}
            status("measuring latency")
            latency = compiled.latency(repeats=args.repeats, inputs=arrays)
        status(f"writing {args.output}")
        extra = {"graph_passes": passes, "agreement": agreement, "requested_backend": backend.name,
                 "batch": args.batch}
        out = write_artifact(compiled, args.output, spec=spec, extra=extra, latency=latency)
    report = {"ok": True, "artifact": str(out), "name": spec.name, "backend": compiled.backend,
              "requested_backend": backend.name, "target": profile.name, "batch": args.batch,
              "compile_s": compiled.info.compile_s, "tuning_s": compiled.info.tuning_s,
              "tuning": compiled.info.tuning, "notes": compiled.info.notes,
              "latency": latency.as_dict() if latency else None, "agreement": agreement, "graph_passes": passes}
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_compile_report(con, report)
    return 0


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options for the backend: ``--option KEY=VALUE`` pairs, then the tuning flags (which win)."""
    from nasforge.cli import parse_overrides

    options = parse_overrides(args.option or [], flag="--option")
    for flag, key in (("tune_trials", "tune_trials"), ("tune_minutes", "tune_minutes"), ("tuning_db", "tuning_db")):
        value = getattr(args, flag)
        if value is not None:
            if isinstance(value, (int, float)) and value < 0:
                raise SpecError(f"--{flag.replace('_', '-')} must not be negative", location=Location(f"--{flag}"),
                                expected="a number >= 0", found=str(value))
            options[key] = value
    if getattr(args, "retune", False):
        options["retune"] = True
    return options


def optimize_graph(gm: Any, enabled: bool) -> tuple[Any, dict[str, Any]]:
    """Run the graph passes (:mod:`nasforge.compiler.passes`) unless disabled; what ran, for the metadata.

    ``applied`` tells the eager and inductor loaders to run the same passes after rebuilding the network
    from the spec, so the saved (folded) weights fit it.
    """
    if not enabled:
        return gm, {"applied": False, "reason": "--no-optimize"}
    from nasforge.compiler.passes import optimize_with_report

    gm, report = optimize_with_report(gm)
    return gm, {"applied": True, **report.to_dict()}


def _flat(result: Any) -> list[Any]:
    return [t for item in result for t in _flat(item)] if isinstance(result, (tuple, list)) else [result]


def print_compile_report(con: Any, r: dict[str, Any]) -> None:
    from nasforge.cli import escape

    chosen = r["backend"] if r["requested_backend"] == r["backend"] else f"{r['backend']} (chosen by auto)"
    con.print(f"[green]compiled[/green] {escape(r['name'])} with {chosen} for {r['target']} at batch {r['batch']}")
    con.print(f"  compile {r['compile_s']:.2f} s, tuning {r['tuning_s']:.2f} s")
    auto = r["tuning"].get("auto")
    if auto:
        for row in auto["candidates"]:
            result = (f"{row['median_ms']:.3f} ms median (p10 {row['p10_ms']:.3f}, p90 {row['p90_ms']:.3f})"
                      if row["status"] == "ok" else f"{row['status']}: {row['reason']}")
            con.print(escape(f"    {row['backend']:<12} {result}"))
    lat = r["latency"]
    if lat:
        con.print(f"  latency {lat['median_ms']:.3f} ms median (p10 {lat['p10_ms']:.3f}, p90 {lat['p90_ms']:.3f}, "
                  f"min {lat['min_ms']:.3f} ms; {lat['repeats']} runs)")
    agreement = r["agreement"]
    if not agreement["checked"]:
        con.print(escape(f"  latency and outputs not checked: {agreement['reason']}"))
    elif agreement["ok"]:
        con.print(f"  outputs agree with eager (max abs error {agreement['max_abs_err']:.2g})")
    else:
        con.print(f"  [red]outputs differ from eager[/red] (max abs error {agreement['max_abs_err']:.3g}): "
                  "this backend mis-compiled the network; please report it")
    passes = r["graph_passes"]
    if passes["applied"]:
        done = [f"{p['name']} ({', '.join(f'{k} {v}' for k, v in p['counts'].items() if v)})"
                for p in passes["passes"] if any(p["counts"].values())]
        con.print(escape(f"  graph passes: {'; '.join(done) or 'nothing to change'}; parameters "
                         f"{passes['params_before']:,} -> {passes['params_after']:,}"))
    else:
        con.print(escape(f"  graph passes: not applied ({passes['reason']})"))
    for note in r["notes"]:
        if not note.startswith("auto"):
            con.print(escape(f"  note: {note}"))
    con.print(f"  wrote {escape(r['artifact'])}")


@contextmanager
def _status(con: Any, quiet: bool) -> Iterator[Any]:
    """A spinner with the current phase and the elapsed time (on a terminal; silent otherwise)."""
    import sys

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=con,
                  transient=True, disable=quiet or not sys.stdout.isatty()) as progress:
        task = progress.add_task("starting", total=None)
        yield lambda text: progress.update(task, description=text)


# -- run ----------------------------------------------------------------------------------------------
def run_command(args: argparse.Namespace) -> int:
    from nasforge.backends.artifact import load_artifact

    compiled = load_artifact(args.artifact)
    arrays = read_inputs(args.input, compiled.inputs) if args.input else compiled.example_arrays()
    started = time.perf_counter()
    outputs = compiled.run_numpy(*arrays)
    first_ms = (time.perf_counter() - started) * 1e3
    if args.output:
        save_outputs(Path(args.output), outputs, compiled.outputs)
    latency = compiled.latency(repeats=args.repeats, inputs=arrays) if args.bench else None
    report = {"ok": True, "artifact": args.artifact, "backend": compiled.backend, "target": compiled.target,
              "inputs": "files" if args.input else "random (seed 0) of the recorded shapes",
              "first_call_ms": first_ms, "outputs": [describe_output(s, o) for s, o in zip(compiled.outputs, outputs)],
              "output_file": args.output, "latency": latency.as_dict() if latency else None}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    from rich.console import Console

    con = Console(highlight=False, soft_wrap=True)
    con.print(f"ran {args.artifact} ({compiled.backend}, {compiled.target}) on {report['inputs']}")
    for out in report["outputs"]:
        shown = out.get("values", f"min {out.get('min', float('nan')):.4g} max {out.get('max', float('nan')):.4g} "
                                  f"mean {out.get('mean', float('nan')):.4g}")
        con.print(f"  {out['name']} {out['shape']} {out['dtype']}: {shown}", markup=False)
    if args.output:
        con.print(f"  wrote {args.output}", markup=False)
    if latency:
        con.print(f"  latency {latency.median_ms:.3f} ms median (p10 {latency.p10_ms:.3f}, p90 {latency.p90_ms:.3f}; "
                  f"{latency.repeats} runs)")
    return 0


def read_inputs(paths: Sequence[str], specs: Sequence[TensorSpec]) -> list[np.ndarray]:
    """The ``--input`` files as arrays, one ``.npy`` per input in order, checked against the recorded
    shapes and dtypes. Never unpickles: object arrays are refused."""
    if len(paths) != len(specs):
        raise SpecError(f"{len(paths)} --input file(s) for a network with {len(specs)} input(s)",
                        location=Location("--input"), expected=", ".join(_describe(s) for s in specs),
                        found=", ".join(paths))
    arrays = []
    for path, spec in zip(paths, specs):
        where = Location(path)
        if Path(path).suffix != ".npy":
            raise SpecError("an --input must be a .npy file", location=where, expected=f".npy with {_describe(spec)}",
                            found=Path(path).suffix or "no suffix", hint="numpy.save('x.npy', array)")
        try:
            array = np.load(path, allow_pickle=False)
        except OSError as err:
            raise SpecError(f"cannot read {path}: {err.strerror or err}", location=where,
                            expected="a readable .npy file", found=type(err).__name__) from None
        except ValueError as err:  # object arrays (pickles) and files that are not .npy at all
            raise SpecError(f"{path} is not a plain numeric .npy array", location=where,
                            expected=_describe(spec), found=str(err)) from None
        if tuple(array.shape) != tuple(spec.shape) or str(array.dtype) != spec.dtype:
            raise SpecError(f"--input {path} does not fit input {spec.name!r}", location=where,
                            expected=_describe(spec), found=f"shape {list(array.shape)} {array.dtype}",
                            hint=f"the artifact was compiled for this shape; convert with array.astype('{spec.dtype}')"
                            if tuple(array.shape) == tuple(spec.shape) else "recompile with --batch to change the batch")
        arrays.append(array)
    return arrays


def _describe(spec: TensorSpec) -> str:
    return f"{spec.name}: shape {list(spec.shape)} {spec.dtype}"


def save_outputs(path: Path, outputs: Sequence[np.ndarray], specs: Sequence[TensorSpec]) -> None:
    """``.npy`` for a single output, ``.npz`` (keyed by output name) for any number; written atomically."""
    if path.suffix not in (".npy", ".npz") or (path.suffix == ".npy" and len(outputs) != 1):
        raise SpecError("unsupported output file", location=Location(str(path)),
                        expected=".npz (any outputs)" + (" or .npy (one output)" if len(outputs) == 1 else ""),
                        found=f"{path.suffix or 'no suffix'} for {len(outputs)} output(s)")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        if path.suffix == ".npy":
            np.save(tmp, outputs[0], allow_pickle=False)
        else:
            np.savez(tmp, **{s.name: o for s, o in zip(specs, outputs)})
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise SpecError(f"cannot write {path}: {err.strerror or err}", location=Location(str(path)),
                        expected="a writable file path", found=type(err).__name__) from None


def describe_output(spec: TensorSpec, array: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {"name": spec.name, "shape": list(array.shape), "dtype": str(array.dtype)}
    if array.size <= VALUES_SHOWN:
        out["values"] = array.tolist()
    elif array.dtype.kind in "biuf":
        values = array.astype(np.float64)
        out.update(min=float(values.min()), max=float(values.max()), mean=float(values.mean()))
    return out


# -- targets ------------------------------------------------------------------------------------------
def targets_command(args: argparse.Namespace) -> int:
    from nasforge.backends.registry import available_backends
    from nasforge.backends.targets import PROFILES

    rows = []
    for profile in PROFILES.values():
        row = profile.as_dict()
        status = available_backends(profile.name)
        row["backends"] = [name for name, (ok, _) in status.items() if ok]
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    from nasforge.cli import _console, escape

    table = Table(title=f"{len(rows)} target profiles", title_justify="left")
    for column in ("target", "runs here", "backends here", "description"):
        table.add_column(column)
    for row in rows:
        runs = "yes" if row["runs_here"] else f"no: {row['run_note']}"
        if not row["builds_here"]:
            runs += f"; cannot build: {row['build_note']}"
        table.add_row(row["name"], escape(runs), ", ".join(row["backends"]) or "-", escape(row["description"]))
    _console().print(table)
    return 0
