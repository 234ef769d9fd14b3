"""The ``nasforge`` command.

Exit codes mean something: 0 success, 1 a mistake in a spec or its overrides (a located message, never a
traceback), 2 a command-line usage error, 3 an internal error in nasforge (a bug: please report it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from nasforge.errors import Location, SpecError

EXIT_OK, EXIT_SPEC_ERROR, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3

EPILOG = """\
examples:
  nasforge check specs/models/resnet.yaml
  nasforge check specs/models/resnet.yaml --set num_classes=10 --set depths=[2,2,2,2]
  nasforge show  specs/models/vit.yaml --depth 2
  nasforge show  specs/models/resnet.yaml --json > resnet18.json
  nasforge graph specs/models/lenet5.yaml -o lenet5.svg
  nasforge ops conv2d
  nasforge compile specs/models/lenet5.yaml --backend onnxruntime -o lenet5-ort/
  nasforge run lenet5-ort/ --input x.npy -o y.npy --bench

exit codes: 0 ok, 1 spec error (file:line:col: node.path: message), 2 usage error, 3 internal error
"""


def human(n: float, unit: str = "") -> str:
    """1_234_567 -> '1.23M' (for tables; --json gives exact integers)."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{int(n)}{unit}"


def escape(text: str) -> str:
    """Spec text for rich: brackets in names and shapes (``[b, 3]``) are shown, not read as markup."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def parse_overrides(items: Sequence[str], flag: str = "--set") -> dict[str, Any]:
    """``--set name=value`` pairs (or another ``flag``'s); values are YAML (``[2,2,6,2]``, ``0.1``,
    ``true``), parsed safely."""
    from nasforge.dsl.yaml_loader import load_yaml_text
    from nasforge.dsl.serialize import plain

    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise SpecError("an override must look like name=value", location=Location(flag),
                            expected=f"{flag} name=value, e.g. {flag} depths=[2,2,6,2]", found=repr(item))
        out[name.strip()] = plain(load_yaml_text(text, f"{flag} {name.strip()}"))
    return out


def _load(args: argparse.Namespace):
    import nasforge

    return nasforge.load(args.spec, variant=args.variant, **parse_overrides(args.set or []))


def _bindings(args: argparse.Namespace) -> dict[str, int]:
    return {"B": args.batch}


def _console():
    from rich.console import Console

    # Piped output (CI logs, files) gets a wide fixed width instead of rich's 80-column default.
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def cmd_check(args: argparse.Namespace) -> int:
    spec = _load(args)
    report = spec.check(_bindings(args))
    graph, t = report.graph, report.totals
    if args.strict and report.warnings:
        raise SpecError(report.warnings[0].split(": ", 1)[-1], location=Location(args.spec),
                        expected="no unused nodes or inputs (--strict)", found=f"{len(report.warnings)} warning(s)")
    space = None
    if graph.choices:
        from nasforge.search.space import check_space

        space = check_space(spec, args.samples)
    if args.json:
        print(json.dumps({
            "ok": space is None or space.ok, "name": graph.name, "totals": t.as_dict(), "warnings": report.warnings,
            "inputs": {k: str(v) for k, v in graph.inputs.items()},
            "outputs": {k: str(graph.type_of(v)) for k, v in graph.outputs.items()},
            "choices": len(graph.choices), "paper": graph.meta.get("paper"),
            "space": space.as_dict() if space else None,
        }, indent=2, default=str))
        return EXIT_OK if space is None or space.ok else EXIT_SPEC_ERROR
    con = _console()
    outs = ", ".join(f"{k} {graph.type_of(v)}" for k, v in graph.outputs.items())
    # spec text (names, shapes like [b, 3], file names) is printed as is, never read as rich markup
    if space is not None and not space.ok:
        report_space(con, space)
        raise space_error(spec, space)
    con.print(f"[green]ok[/green] {escape(graph.name)}: {len(graph.nodes)} nodes, {t.params:,} params, "
              f"{human(t.macs)} MACs ({human(t.flops)} FLOPs) per sample; outputs {escape(outs)}")
    if space is not None:
        report_space(con, space)
    for w in report.warnings:
        con.print(f"[yellow]warning[/yellow] {escape(w)}")
    return EXIT_OK


def report_space(con: Any, report: Any) -> None:
    """Print what checking a search space found (see :func:`nasforge.search.space.check_space`)."""
    size = f"{report.size:,} networks" if report.size is not None else "size not countable (continuous or too conditional)"
    structural = f", {len(report.structural)} of them structural" if report.structural else ""
    con.print(f"   a search space: {len(report.choices)} choice point(s) at the defaults{structural}; {size}")
    for problem in report.problems:
        con.print("[red]problem[/red] " + escape(f"option {problem.label} = {problem.value!r} never type-checks with "
                                                 f"the other choices at their defaults: {problem.error.message}"))
    for assignment, err in report.failed_samples:
        con.print("[red]problem[/red] " + escape(f"sample {assignment}: {err.message}"))
    if report.samples:
        con.print(f"   {report.samples - len(report.failed_samples)}/{report.samples} random samples type-check")


def space_error(spec: Any, report: Any) -> SpecError:
    first = report.problems[0].describe() if report.problems else report.failed_samples[0][1].message
    return SpecError(f"{len(report.problems)} option(s) and {len(report.failed_samples)} sample(s) of the space "
                     "do not type-check", location=Location(spec.document.file), expected="every option usable",
                     found=first)


def cmd_sample(args: argparse.Namespace) -> int:
    import random

    from nasforge.search.space import Space

    spec = _load(args)
    space = Space(spec)
    assignment = space.sample(random.Random(args.seed))
    chosen = space.concrete(assignment)
    chosen.graph  # noqa: B018 (a sample that does not type-check is an error, not a file)
    text = chosen.to_yaml()
    if args.json:
        print(json.dumps({"seed": args.seed, "choices": assignment, "spec": text}, indent=2, default=str))
    elif args.output:
        _write(Path(args.output), text)
        print(f"wrote {args.output} ({len(assignment)} choice(s) decided, seed {args.seed})")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    spec = _load(args)
    summary = spec.summary(depth=args.depth or None, bindings=_bindings(args), fold_blocks=args.depth is None)
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2, default=str))
        return EXIT_OK
    from rich.table import Table

    t = summary.totals
    graph = summary.graph
    table = Table(title=escape(f"{graph.name}  (batch {args.batch})"), title_justify="left")
    for col, justify in (("node", "left"), ("op", "left"), ("output", "left"), ("params", "right"),
                         ("MACs", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in summary.rows:
        table.add_row(escape(row.path), row.op, escape(row.output), f"{row.params:,}", human(row.macs))
    table.add_section()
    table.add_row("total", "", "", f"{t.params:,}", human(t.macs))
    con = _console()
    con.print(table)
    con.print(f"FLOPs {human(t.flops)} (2 x MACs + element-wise); activations {human(t.activation_bytes, 'B')} "
              f"(all outputs), peak {human(t.peak_bytes, 'B')} (inference, live tensors)")
    paper = graph.meta.get("paper") or {}
    if paper:
        con.print(escape(f"paper: {paper.get('title', '?')}"
                         + "".join(f", {paper[k]}" for k in ("venue", "year") if k in paper)))
        for line in paper_comparison(paper, t):
            con.print("  " + escape(line))
    return EXIT_OK


def paper_comparison(paper: dict[str, Any], t: Any) -> list[str]:
    """Published params/MACs next to what nasforge counts, with the relative difference."""
    lines = []
    for key, ours in (("params", t.params), ("macs", t.macs)):
        published = paper.get(key)
        if isinstance(published, (int, float)) and not isinstance(published, bool) and published > 0:
            diff = (ours - published) / published
            verdict = "exact" if ours == published else f"{diff:+.2%}"
            lines.append(f"{key}: published {human(published)} ({published:,}), counted {ours:,} ({verdict})")
    return lines


def cmd_graph(args: argparse.Namespace) -> int:
    from nasforge.compiler.render import to_dot

    spec = _load(args)
    dot = to_dot(spec.graph, depth=args.depth)
    out = Path(args.output) if args.output else None
    if out is None or out.suffix == ".dot":
        if out is None:
            print(dot)
        else:
            _write(out, dot)
        return EXIT_OK
    fmt = out.suffix.lstrip(".")
    if fmt not in ("svg", "png", "pdf"):
        raise SpecError("unsupported picture format", location=Location(str(out)),
                        expected=".svg, .png, .pdf or .dot", found=out.suffix or "(none)")
    if shutil.which("dot") is None:
        fallback = out.with_suffix(".dot")
        _write(fallback, dot)
        print(f"graphviz 'dot' is not installed; wrote DOT to {fallback} "
              f"(apt-get install graphviz to render {fmt})", file=sys.stderr)
        return EXIT_OK
    result = subprocess.run(["dot", f"-T{fmt}", "-o", str(out)], input=dot, text=True, capture_output=True)
    if result.returncode:
        print(f"nasforge: graphviz failed: {result.stderr.strip()}", file=sys.stderr)
        return EXIT_INTERNAL
    print(f"wrote {out}")
    return EXIT_OK


def _write(path: Path, text: str) -> None:
    """Write an output file; a path that cannot be written is the user's mistake, not a crash."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise SpecError(f"cannot write {path}: {err.strerror or err}", location=Location(str(path)),
                        expected="a writable file path", found=type(err).__name__) from None


def cmd_ops(args: argparse.Namespace) -> int:
    from nasforge.ops.registry import all_ops, get_op

    ops = {args.name: get_op(args.name)} if args.name else all_ops()
    if args.category:
        ops = {k: v for k, v in ops.items() if v.category == args.category}
    if args.json:
        print(json.dumps({name: {
            "category": op.category, "doc": (op.__doc__ or "").strip(), "arity": list(op.arity),
            "train_only": op.train_only,
            "attrs": [{"name": a.name, "type": a.type, "required": a.required,
                       "default": None if a.required else a.default, "choices": a.choices, "doc": a.doc}
                      for a in op.attrs]} for name, op in ops.items()}, indent=2, default=str))
        return EXIT_OK
    con = _console()
    if args.name:
        op = ops[args.name]
        con.print(f"[bold]{op.name}[/bold]  ({op.category}; inputs {op.arity[0]}"
                  f"{'+' if op.arity[1] is None else '' if op.arity[0] == op.arity[1] else '-' + str(op.arity[1])})")
        con.print(escape((op.__doc__ or "").strip()))
        for a in op.attrs:
            con.print(escape(f"  {a.describe():<48} {a.doc}"))
        for backend, note in op.backend_limits.items():
            con.print(escape(f"  backend {backend}: {note}"))
        return EXIT_OK
    from rich.table import Table

    table = Table(title=f"{len(ops)} ops", title_justify="left")
    table.add_column("op")
    table.add_column("category")
    table.add_column("attributes")
    for name, op in ops.items():
        table.add_row(name, op.category, ", ".join(a.name for a in op.attrs))
    con.print(table)
    return EXIT_OK


def cmd_zoo(args: argparse.Namespace) -> int:
    from nasforge.zoo import collect, to_markdown

    directory = Path(args.directory)
    if not directory.is_dir():
        raise SpecError(f"not a directory: {directory}", location=Location(str(directory)),
                        expected="a folder of spec files, e.g. specs/models", found="no such folder")
    entries = collect(directory)
    if args.json:
        text = json.dumps([e.as_dict() for e in entries], indent=2, default=str) + "\n"
    elif args.markdown:
        text = to_markdown(entries)
    else:
        from rich.table import Table

        table = Table(title=f"{len(entries)} models in {directory}", title_justify="left")
        for col in ("model", "spec", "params", "published", "MACs", "published"):
            table.add_column(col, justify="left" if col in ("model", "spec") else "right")
        for e in entries:
            table.add_row(e.name, e.spec, f"{e.params:,}", f"{e.paper_params:,}" if e.paper_params else "",
                          human(e.macs), human(e.paper_macs) if e.paper_macs else "")
        _console().print(table)
        return EXIT_OK
    if args.output:
        _write(Path(args.output), text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    from nasforge.search.oneshot import ONESHOT_STRATEGIES

    if args.strategy in ONESHOT_STRATEGIES:  # one supernet instead of many trials
        from nasforge.search.oneshot.command import cmd_oneshot

        return cmd_oneshot(args)
    if args.nproc > 1:
        from nasforge.search.oneshot.command import refuse_nproc

        refuse_nproc(args)
    from nasforge.search.objectives import Constraint, Evaluator, Objective
    from nasforge.search.study import Search, best_trials

    import torch

    # Candidates are small networks: one intra-op thread trains them faster than several (and several
    # threads on a shared or busy machine slow each other down many times over).
    torch.set_num_threads(args.threads)
    spec = _load(args)
    objectives = [Objective.parse(o) for o in (args.objective or ["params:min"])]
    constraints = [Constraint.parse(c) for c in (args.constraint or [])]
    evaluator = make_evaluator(args, spec, objectives, constraints)
    from nasforge.search.storage import redact
    from nasforge.search.worker import run_local, settings_of

    search = Search(spec, args.strategy, objectives, constraints, args.budget, args.storage, args.study, args.seed,
                    evaluator, settings=settings_of(args))
    con = _console()
    if not args.json:
        con.print(f"searching {escape(spec.name)} with {args.strategy}: "
                  f"{', '.join(map(str, objectives))}"
                  + (f" subject to {', '.join(map(str, constraints))}" if constraints else "")
                  + f"; study {escape(search.study_name or '')} in {escape(redact(args.storage))}"
                  + (f" with {args.workers} worker processes" if args.workers > 1 else ""))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[best]}"))
    with Progress(*columns, console=con, disable=args.json or not sys.stdout.isatty()) as progress:
        task = progress.add_task("trials", total=args.budget, best="")
        shown = [0.0]

        def on_trial(study, trial) -> None:
            from nasforge.search.study import completed

            if progress.disable or time.monotonic() - shown[0] < 0.5:  # a front costs O(trials^2) to find
                return
            shown[0] = time.monotonic()
            top = best_trials(study, 1)
            best = f"best {', '.join(f'{o.metric} {v:.4g}' for o, v in zip(objectives, top[0].values))}" if top else ""
            progress.update(task, completed=min(completed(study), args.budget), best=best)

        if args.workers > 1:
            study = run_local(search, args.workers, lambda done: progress.update(task, completed=done))
        else:
            study = search.run(on_trial)
            shown[0] = 0.0
            on_trial(study, None)  # the last trials may have come faster than the display
    return report_study(con, study, objectives, args)


TRAINING_FLAGS = ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup_epochs",
                  "label_smoothing")
"""`nasforge search` options that set how candidates train (None when not given: the spec's section decides)."""


def make_evaluator(args: argparse.Namespace, spec: Any, objectives: list, constraints: list) -> Any:
    """An evaluator with training and proxies when a dataset is given (needed for accuracy and proxies), and
    latency measured on the chosen backend and kept in the machine's latency cache (networks and workloads)."""
    from nasforge.search.latency_cache import LatencyCache
    from nasforge.search.latency_lut import LatencyMeter
    from nasforge.search.objectives import PROXY_METRICS, Evaluator

    metrics = {o.metric for o in objectives} | {c.metric for c in constraints}
    latency = {"latency": LatencyMeter(args.latency_backend, args.latency_target)}
    if metrics & {"latency_ms", "latency_lut_ms"}:
        latency["latency"].check()
        latency["latency_cache"] = LatencyCache()  # ~/.cache/nasforge/latency.sqlite, or $NASFORGE_CACHE_DIR
    if not args.dataset:
        return Evaluator(**latency)
    from nasforge.search.data import load_dataset
    from nasforge.search.proxies import make_proxy_fn
    from nasforge.search.training import Trainer

    dataset = load_dataset(args.dataset, next(iter(spec.expanded.inputs.values())), seed=args.seed)
    trainer = Trainer.for_spec(dataset, spec, {name: getattr(args, name) for name in TRAINING_FLAGS}, seed=args.seed)
    proxies = make_proxy_fn(dataset, args.seed) if metrics & set(PROXY_METRICS) else None
    return Evaluator(trainer=trainer, proxies=proxies, **latency)


def report_study(con: Any, study: Any, objectives: list, args: argparse.Namespace) -> int:
    from nasforge.search.study import best_trials, completed, failed, recorded_spec

    top = best_trials(study, args.top if hasattr(args, "top") else 5)
    if getattr(args, "json", False):
        print(json.dumps({"study": study.study_name, "completed": completed(study), "failed": failed(study),
                          "best": [{"number": t.number, "values": t.values, "metrics": t.user_attrs.get("metrics"),
                                    "choices": json.loads(t.user_attrs.get("assignment", "{}"))} for t in top]},
                         indent=2, default=str))
        return EXIT_OK
    from rich.table import Table

    title = "Pareto front" if len(objectives) > 1 else "leaderboard"
    table = Table(title=f"{study.study_name}: {title} ({completed(study)} trials, {failed(study)} failed)",
                  title_justify="left")
    table.add_column("trial", justify="right")
    for o in objectives:
        table.add_column(str(o), justify="right")
    table.add_column("params", justify="right")
    for t in top:
        metrics = t.user_attrs.get("metrics", {})
        table.add_row(str(t.number), *[f"{v:.4g}" for v in t.values], f"{int(metrics.get('params', 0)):,}"
                      if "params" in metrics else "")
    con.print(table)
    out = getattr(args, "output", None)
    if out and top:
        best = top[0]
        _write(Path(out), recorded_spec(study, best))
        con.print(f"wrote the best network (trial {best.number}) to {escape(out)}")
    return EXIT_OK


def cmd_study(args: argparse.Namespace) -> int:
    import optuna

    from nasforge.search.storage import open_storage, redact
    from nasforge.search.study import GRACE_S, HEARTBEAT_S, MAX_RETRY, best_trials, recorded_spec

    try:
        study = optuna.load_study(study_name=args.name,
                                  storage=open_storage(args.storage, HEARTBEAT_S, GRACE_S, MAX_RETRY))
    except KeyError:
        raise SpecError(f"no study named {args.name!r} in {redact(args.storage)}", location=Location("--study"),
                        expected="a study name that `nasforge search --study NAME` created",
                        found=repr(args.name)) from None
    from nasforge.search.objectives import Objective

    objectives = [Objective.parse(o) for o in study.user_attrs.get("objectives", ["value:min"])]
    con = _console()
    if args.action == "show":
        return report_study(con, study, objectives, args)
    if args.action == "export":
        directory = Path(args.output or f"{args.name}-top")
        directory.mkdir(parents=True, exist_ok=True)
        for rank, t in enumerate(best_trials(study, args.top)):
            _write(directory / f"rank{rank}-trial{t.number}.yaml", recorded_spec(study, t))
        con.print(f"wrote {min(args.top, len(best_trials(study, args.top)))} spec(s) to {escape(str(directory))}")
        return EXIT_OK
    from nasforge.search.plots import plot_study

    for path in plot_study(study, Path(args.output or f"{args.name}-plots")):
        con.print(f"wrote {escape(str(path))}")
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    from nasforge.search.worker import print_report, run_worker

    print_report(run_worker(args.storage, args.study, args.name), args.json)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nasforge",
        description="A declarative architecture compiler and NAS engine: write a network as a YAML graph of "
                    "primitive ops; nasforge checks shapes, counts params and FLOPs, and builds it.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from nasforge import __version__

    parser.add_argument("--version", action="version", version=f"nasforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def spec_command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("spec", help="path to a spec YAML file")
        p.add_argument("--set", action="append", metavar="NAME=VALUE",
                       help="override a declared parameter (YAML value), e.g. --set depths=[2,2,6,2]; repeatable")
        p.add_argument("--variant", metavar="NAME",
                       help="a family member the spec names under 'variants:' (e.g. resnet50)")
        p.add_argument("--batch", type=int, default=1, metavar="N",
                       help="value of the batch symbol B for counts (default 1: per-sample numbers)")
        return p

    p = spec_command("check", "validate a spec: shapes, params, MACs",
                     "Expand the spec, infer every tensor's shape and count parameters and MACs.\n"
                     "Prints one line on success; a located error (file:line:col: node.path) and exit 1 "
                     "otherwise.")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.add_argument("--strict", action="store_true", help="treat warnings (unused nodes/inputs) as errors")
    p.add_argument("--samples", type=int, default=0, metavar="N",
                   help="for a search space: also take N random members through shape inference")
    p.set_defaults(func=cmd_check)

    p = spec_command("sample", "decide a search space's choices at random and write the concrete spec",
                     "Sample one network of a search space (uniformly at each choice point, in discovery order)\n"
                     "and write it as a concrete spec that `nasforge check/show/build` take as it is.")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the spec to FILE instead of stdout")
    p.add_argument("--json", action="store_true", help="the decisions and the spec as JSON")
    p.set_defaults(func=cmd_sample)

    p = spec_command("show", "print the layer table (node path, op, output shape, params, MACs)",
                     "Print every node with its output shape, parameters and MACs, then totals.\n"
                     "By default each block instance is one row (layer1.0, blocks.3); --depth N folds nodes\n"
                     "into their first N path components instead (stages.2.block -> stages), --depth 0 lists\n"
                     "every node.")
    p.add_argument("--depth", type=int, metavar="N",
                   help="fold nodes at path depth N (0: every node; default: one row per block instance)")
    p.add_argument("--json", action="store_true", help="machine-readable table")
    p.set_defaults(func=cmd_show)

    p = spec_command("graph", "draw the graph (SVG/PNG/PDF with graphviz, DOT otherwise)",
                     "Write a picture of the graph. Without graphviz's 'dot' program, writes DOT text.")
    p.add_argument("-o", "--output", metavar="FILE", help="output file (.svg, .png, .pdf, .dot); stdout if absent")
    p.add_argument("--depth", type=int, metavar="N", help="draw blocks folded at path depth N")
    p.set_defaults(func=cmd_graph)

    from nasforge.search.storage import STORAGE_ENV
    from nasforge.search.study import DEFAULT_STORAGE

    storage_help = f"Optuna storage URL (default ${STORAGE_ENV} if set, else {DEFAULT_STORAGE})"
    storage_default = os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
    from nasforge.search.strategies import STRATEGIES

    p = spec_command("search", "search a space: strategies, objectives, constraints, a resumable study",
                     "Search a space (a spec with choice points) and record every trial in an Optuna study.\n"
                     "A killed search resumes with the same --study; the best network is a concrete spec.\n\n"
                     "example:\n  nasforge search specs/spaces/nas_bench_201.yaml --strategy evolution \\\n"
                     "      --objective accuracy:max --objective latency_ms:min --budget 30 --dataset digits \\\n"
                     "      --constraint 'params<=1e6' --study nb201-digits -o best.yaml")
    from nasforge.search.oneshot import ONESHOT_STRATEGIES

    p.add_argument("--strategy", default="evolution", choices=[*STRATEGIES, *ONESHOT_STRATEGIES],
                   help=f"search strategy: multi-trial ({', '.join(STRATEGIES)}) or one-shot, training one supernet "
                        f"({', '.join(ONESHOT_STRATEGIES)})")
    p.add_argument("--objective", action="append", metavar="METRIC:DIR",
                   help="params, macs, flops, memory_mb, latency_ms, latency_lut_ms, accuracy, train_loss, synflow, "
                        "naswot, snip, grad_norm with :min or :max (repeatable: several give a Pareto front)")
    p.add_argument("--constraint", action="append", metavar="EXPR", help="e.g. 'params<=5e6' (repeatable)")
    p.add_argument("--budget", type=int, default=20, help="completed trials to reach (default 20)")
    p.add_argument("--dataset", help="digits, synthetic[:N], npz:PATH, folder:PATH or cifar10:PATH")
    from nasforge.dsl.training_section import OPTIMIZERS, SCHEDULES

    training = p.add_argument_group("training (accuracy); defaults from the spec's training: section, else as shown")
    training.add_argument("--epochs", type=int, help="training epochs per candidate (default 3)")
    training.add_argument("--batch-size", type=int, help="training batch size (default 64)")
    training.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer (default sgd, Nesterov momentum)")
    training.add_argument("--lr", type=float, help="learning rate (default 0.1 for sgd, 1e-3 for adam/adamw)")
    training.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    training.add_argument("--weight-decay", type=float, help="weight decay (default 5e-4)")
    training.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule (default cosine)")
    training.add_argument("--warmup-epochs", type=float, help="linear warmup before the schedule (default 0)")
    training.add_argument("--label-smoothing", type=float, help="label smoothing of the loss (default 0)")
    p.add_argument("--latency-backend", default="eager", metavar="NAME",
                   help="backend latency_ms and latency_lut_ms are measured on: eager (default), inductor, "
                        "onnxruntime, tvm")
    p.add_argument("--latency-target", default="x86", metavar="NAME",
                   help="target profile they are measured for (default x86: this CPU; `nasforge targets`)")
    p.add_argument("--storage", default=storage_default, help=storage_help)
    p.add_argument("--study", help="study name (resumes an existing one; default derived from space and strategy)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training candidates (default 1)")
    p.add_argument("--top", type=int, default=5, help="rows in the final leaderboard")
    p.add_argument("-o", "--output", metavar="FILE", help="write the best network's concrete spec to FILE")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="evaluate in N local worker processes (default 1: this process); other machines join "
                        "with `nasforge worker`")
    oneshot = p.add_argument_group("one-shot strategies (--epochs, --batch-size, --lr, --momentum, --weight-decay "
                                   "set the supernet's training; the method's paper's defaults otherwise)")
    oneshot.add_argument("--hparam", action="append", metavar="NAME=VALUE",
                         help="a hyperparameter of the one-shot method, e.g. --hparam arch_lr=6e-4 (repeatable)")
    oneshot.add_argument("--eval-set", action="append", metavar="NAME=VALUE",
                         help="a space parameter of the network -o writes, e.g. --eval-set C=36 --eval-set layers=20 "
                              "(DARTS's evaluation network; default: the searched size)")
    oneshot.add_argument("--run-dir", metavar="DIR", help="checkpoint, log and plot folder (default "
                                                          "nasforge-runs/STUDY beside a SQLite study)")
    oneshot.add_argument("--nproc", type=int, default=1, metavar="N",
                         help="train the supernet in N processes (torch.distributed: gloo on CPU, NCCL with one GPU "
                              "each); --batch-size stays the global batch. Under torchrun the processes join its group")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("worker", help="join a stored study and evaluate its trials until its budget is met",
                       description="Join a study that `nasforge search` created (SQLite on this machine, PostgreSQL "
                                   "from any machine) and evaluate trials until it has its budget of completed "
                                   "trials. The study records its space, strategy, objectives and settings.")
    p.add_argument("--storage", default=os.environ.get(STORAGE_ENV),
                   help=f"the study's storage URL (default ${STORAGE_ENV}: a URL with a password on the command "
                        "line is visible to other users of this machine)")
    p.add_argument("--study", required=True, help="the study name")
    p.add_argument("--name", help="this worker's name (default HOST-PID; it seeds the worker's proposals)")
    p.add_argument("--json", action="store_true", help="what this worker did, as JSON")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("study", help="inspect a stored study: show, export the best specs, plot",
                       description="Work with a study that `nasforge search` recorded.")
    p.add_argument("action", choices=["show", "export", "plot"], help="show the leaderboard / Pareto front, export "
                                                                    "the top specs, or plot history and front")
    p.add_argument("name", help="the study name")
    p.add_argument("--storage", default=storage_default, help=storage_help)
    p.add_argument("--top", type=int, default=5, help="how many trials to show or export")
    p.add_argument("-o", "--output", metavar="PATH", help="export/plot folder (show: write the best spec)")
    p.add_argument("--json", action="store_true", help="machine-readable (show)")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("zoo", help="the model zoo: every spec and variant with counted vs published numbers",
                       description="Check every spec in a folder (default specs/models) and each of its variants, "
                                   "and list params and MACs next to the paper's published figures.")
    p.add_argument("directory", nargs="?", default="specs/models", help="folder of spec files")
    p.add_argument("--markdown", action="store_true", help="a markdown table (docs/model-zoo.md)")
    p.add_argument("--json", action="store_true", help="machine-readable entries")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=cmd_zoo)

    p = sub.add_parser("ops", help="list the op vocabulary, or describe one op",
                       description="List every registered op with its attributes, or show one op's documentation.")
    p.add_argument("name", nargs="?", help="an op name, e.g. conv2d")
    p.add_argument("--category", help="only ops of this category (conv, norm, activation, ...)")
    p.add_argument("--json", action="store_true", help="machine-readable vocabulary")
    p.set_defaults(func=cmd_ops)

    # -- backends: compile, run, targets ---------------------------------------------------------
    from nasforge.backends.registry import BACKENDS

    p = spec_command("compile", "compile a spec for a target with a backend and write a deployable artifact",
                     "Build the spec, run the graph passes (BN folding, ...), compile it with a backend for a\n"
                     "target profile, check its outputs against eager and measure its latency (when the target\n"
                     "runs here), and write an artifact directory (atomically replacing an earlier one).\n"
                     "--batch N compiles for batch N (the artifact's input shapes).\n\n"
                     "examples:\n  nasforge compile specs/models/resnet.yaml --backend onnxruntime -o resnet18-ort/\n"
                     "  nasforge compile specs/models/resnet.yaml --backend tvm --target x86 --tune-trials 2000 "
                     "-o resnet18-tvm/\n  nasforge compile net.yaml --backend auto --batch 8 -o net-fastest/")
    p.add_argument("--backend", default="eager", metavar="NAME",
                   help=f"{', '.join(BACKENDS)} (default eager; auto measures each and keeps the fastest)")
    p.add_argument("--target", default="x86", metavar="NAME", help="target profile (default x86: this CPU); "
                                                                 "`nasforge targets` lists them")
    p.add_argument("--tune-trials", type=int, metavar="N", help="tuning budget in measured trials (tvm)")
    p.add_argument("--tune-minutes", type=float, metavar="M", help="tuning budget in minutes (tvm)")
    p.add_argument("--tuning-db", metavar="DIR", help="tuning database to read and extend (tvm; default the "
                                                     "per-target database under ~/.cache/nasforge)")
    p.add_argument("--retune", action="store_true",
                   help="spend the tuning budget on the tasks the database already knows too, hottest first, from "
                        "their best schedules on (tvm; by default a known task is never tuned again)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="a backend option (YAML value), e.g. --option mode=max-autotune (inductor), "
                        "--option opset=17 (onnxruntime), --option prepack=false (tvm: keep weights in their own "
                        "layout; by default the tuning database decides, kernel by kernel), --option winograd=true (tvm: Winograd "
                        "3x3 convolutions); repeatable")
    p.add_argument("--no-optimize", action="store_true", help="skip the graph passes")
    p.add_argument("--repeats", type=int, default=50, metavar="N", help="timed runs for the latency (default 50)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="the artifact directory to write")
    p.add_argument("--json", action="store_true", help="print only a JSON summary")
    p.set_defaults(func=cmd_compile)

    add_run_command(sub)

    p = sub.add_parser("targets", help="list the target profiles and which backends serve each here",
                       description="List the named target profiles (x86, arm64, cuda, ...): what each is, whether "
                                   "code built for it runs on this machine, and which backends can compile for it.")
    p.add_argument("--json", action="store_true", help="machine-readable profiles")
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("coverage", help="run every op's examples through every backend and compare with eager",
                       description="The op x backend coverage table: each op's examples compiled by each backend for "
                                   "the target and compared with eager (max abs error), or refused with an error "
                                   "naming the op and node. The whole vocabulary takes minutes (TVM and Inductor "
                                   "compile); --ops narrows it.\n\nexample:\n"
                                   "  nasforge coverage -o docs/backend-coverage.md\n"
                                   "  nasforge coverage --backends onnxruntime,tvm --ops conv2d,lstm",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="eager,inductor,onnxruntime,tvm", metavar="A,B",
                   help="comma-separated columns (default eager,inductor,onnxruntime,tvm)")
    p.add_argument("--ops", metavar="A,B", help="comma-separated op names (default: every registered op)")
    p.add_argument("--target", default="x86", metavar="NAME", help="target profile (default x86: this CPU)")
    p.add_argument("--chunk", type=int, default=32, metavar="N",
                   help="examples compiled together in one network (default 32)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (atomically) instead of stdout")
    p.add_argument("--json", action="store_true", help="every example's result as JSON instead of markdown")
    p.set_defaults(func=cmd_coverage)
    return parser


def cmd_compile(args: argparse.Namespace) -> int:
    from nasforge.backends.commands import compile_command

    return compile_command(args)


def cmd_run(args: argparse.Namespace) -> int:
    from nasforge.backends.commands import run_command

    return run_command(args)


def cmd_targets(args: argparse.Namespace) -> int:
    from nasforge.backends.commands import targets_command

    return targets_command(args)


def cmd_coverage(args: argparse.Namespace) -> int:
    from nasforge.backends.coverage_report import coverage_command

    return coverage_command(args)


def add_run_command(sub: Any) -> None:
    """Register ``nasforge run`` (shared by the full parser and the torch-free one of :func:`main`)."""
    p = sub.add_parser("run", help="run a compiled artifact on .npy inputs (or random ones); --bench times it",
                       description="Load an artifact that `nasforge compile` wrote and run it. Without --input, "
                                   "runs on random inputs of the recorded shapes. ONNX Runtime and TVM artifacts "
                                   "load without torch.")
    p.add_argument("artifact", help="the artifact directory")
    p.add_argument("--input", action="append", metavar="FILE.npy", help="one .npy per network input, in order")
    p.add_argument("-o", "--output", metavar="FILE", help="write the outputs: .npy (one output) or .npz")
    p.add_argument("--bench", action="store_true", help="also measure the latency (median and spread)")
    p.add_argument("--repeats", type=int, default=50, metavar="N", help="timed runs with --bench (default 50)")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=cmd_run)


def build_run_parser() -> argparse.ArgumentParser:
    """A parser for ``nasforge run`` alone: the full parser imports the search engine (and torch), which
    a deploy process running an ONNX Runtime or TVM artifact must not pay for or even have."""
    parser = argparse.ArgumentParser(prog="nasforge")
    add_run_command(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_run_parser() if argv[:1] == ["run"] else build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    if getattr(args, "batch", 1) < 1:
        parser.error("--batch must be >= 1")
    if getattr(args, "depth", None) is not None and args.depth < 0:
        parser.error("--depth must be >= 0")
    if getattr(args, "workers", 1) < 1:
        parser.error("--workers must be >= 1")
    if getattr(args, "nproc", 1) < 1:
        parser.error("--nproc must be >= 1")
    if getattr(args, "repeats", 1) < 1:
        parser.error("--repeats must be >= 1")
    try:
        return args.func(args)
    except SpecError as err:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": error_dict(err)}, indent=2))
        print(f"nasforge: error: {err.format()}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    except KeyboardInterrupt as stop:  # a search says what its study keeps (SearchInterrupted)
        print(f"nasforge: interrupted{f': {stop}' if str(stop) else ''}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # a bug in nasforge, not a user mistake: say so plainly
        import traceback

        traceback.print_exc()
        print(f"nasforge: internal error ({type(exc).__name__}: {exc}); this is a bug in nasforge, please report "
              "it with the spec that triggered it", file=sys.stderr)
        return EXIT_INTERNAL


def error_dict(err: SpecError) -> dict[str, Any]:
    return {"message": err.message, "file": err.location.file, "line": err.location.line,
            "column": err.location.column, "node": err.node_path, "expected": err.expected,
            "found": err.found, "hint": err.hint}


if __name__ == "__main__":
    sys.exit(main())
