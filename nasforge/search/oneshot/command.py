"""``nasforge search SPACE --strategy darts|darts2|gdas|pcdarts|spos``: the command line of one-shot searches.

The same flags as a multi-trial search where they mean the same (``--dataset``, ``--study``, ``--storage``,
``--seed``, ``--threads``, ``-o``, ``--json``; ``--epochs``, ``--batch-size``, ``--lr``, ``--momentum`` and
``--weight-decay`` set the supernet's training), plus ``--hparam NAME=VALUE`` for any other hyperparameter
(:class:`~.method.HParams`), ``--eval-set NAME=VALUE`` for the size of the network ``-o`` writes (DARTS's
evaluation network: ``--eval-set C=36 --eval-set layers=20``) and ``--run-dir`` for the checkpoint folder.
``--nproc N`` trains the supernet in N processes (:mod:`.distributed`; ``--batch-size`` stays the global
batch); started by torchrun (``RANK`` and ``WORLD_SIZE`` set), each process joins the launcher's group instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasforge.errors import Location, SpecError

if TYPE_CHECKING:
    from nasforge.search.oneshot.distributed import Group

TRAINING_FLAGS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "label_smoothing")
"""Multi-trial training flags that mean the same for a supernet (given ones become hyperparameters)."""
FOREIGN_FLAGS = ("optimizer", "schedule", "warmup_epochs")
"""Multi-trial training flags a one-shot method fixes itself (its paper's optimizer and schedule)."""


def cmd_oneshot(args: argparse.Namespace) -> int:
    from nasforge.cli import EXIT_OK
    from nasforge.search.oneshot.distributed import SOLO, joined, launched_world, spawn

    check_flags(args)
    world = launched_world()
    if world is not None:  # torchrun started this process: join its group
        if args.nproc not in (1, world):
            raise SpecError("--nproc disagrees with the launcher's number of processes", location=Location("--nproc"),
                            expected=f"no --nproc, or --nproc {world} (WORLD_SIZE)", found=str(args.nproc))
        with joined() as group:
            return run_command(group, args)
    if args.nproc > 1:
        spawn(args.nproc, run_command, (args,))  # rank 0 prints; the processes' errors come back here
        return EXIT_OK
    return run_command(SOLO, args)


def run_command(group: Group, args: argparse.Namespace) -> int:
    """The search as one process of ``group`` runs it: every rank searches, rank 0 alone prints and writes."""
    import torch

    from nasforge.cli import EXIT_OK, _console, _load, _write, escape, make_evaluator, parse_overrides
    from nasforge.search.data import load_dataset
    from nasforge.search.objectives import Constraint
    from nasforge.search.oneshot.discretize import evaluation_spec, genotype_text
    from nasforge.search.oneshot.distributed import SOLO
    from nasforge.search.oneshot.runner import run_oneshot

    torch.set_num_threads(args.threads)
    spec = _load(args)
    dataset = load_dataset(args.dataset, next(iter(spec.expanded.inputs.values())), seed=args.seed)
    hparams = parse_overrides(args.hparam or [], "--hparam")
    hparams.update({k: getattr(args, k) for k in TRAINING_FLAGS if getattr(args, k, None) is not None})
    evaluation = parse_overrides(args.eval_set or [], "--eval-set")
    constraints = [Constraint.parse(c) for c in (args.constraint or [])]
    con = _console()
    if not args.json and group.lead:
        con.print(f"searching {escape(spec.name)} with {args.strategy} (one-shot) on {escape(dataset.description)}"
                  + (f" in {group.world} processes ({group.backend}, {group.device.type})" if group.world > 1 else ""))

    def on_epoch(record: dict[str, Any]) -> None:
        if args.json:
            return
        shown = [f"{record.get('stage', 'epoch')} {record['epoch'] + 1}:"]
        shown += [f"{name} {record[key]:.4g}" for key, name in (("train_loss", "loss"), ("val_accuracy", "accuracy"),
                                                                 ("tau", "tau")) if isinstance(record.get(key), float)]
        con.print(escape(" ".join(shown)))
        if record.get("genotype"):
            con.print("   " + escape(record["genotype"]))
        if record.get("warning"):
            con.print("[yellow]warning[/yellow] " + escape(record["warning"]))

    result = run_oneshot(spec, args.strategy, dataset, hparams=hparams, storage=args.storage, study_name=args.study,
                         seed=args.seed, run_dir=Path(args.run_dir) if args.run_dir else None,
                         progress=not args.json and sys.stdout.isatty(), on_epoch=on_epoch, constraints=constraints,
                         evaluator=make_evaluator(args, spec, [], constraints) if constraints else None, group=group)
    if not group.lead:
        return EXIT_OK
    final = evaluation_spec(spec, result.assignment, evaluation)
    totals = final.check().totals
    if args.output:
        _write(Path(args.output), final.to_yaml())
    if args.json:
        print(json.dumps({**result.as_dict(), "params": totals.params, "macs": totals.macs, "output": args.output,
                          "device": group.device.type, "backend": group.backend if group is not SOLO else None},
                         indent=2, default=str))
        return EXIT_OK
    con.print(f"study {escape(result.study_name)}: {len(result.records)} records"
              + (f" ({result.resumed_epochs} epochs resumed from the checkpoint)" if result.resumed_epochs else "")
              + f" in {result.seconds:.1f} s; run folder {escape(str(result.run_dir))}")
    con.print("genotype: " + escape(genotype_text(result.assignment)))
    con.print(f"derived network: {totals.params:,} params, {totals.macs:,} MACs"
              + (f" (with {escape(', '.join(f'{k}={v}' for k, v in evaluation.items()))})" if evaluation else ""))
    if result.records[-1].get("warning"):
        con.print("[yellow]warning[/yellow] " + escape(result.records[-1]["warning"]))
    for path in result.files:
        con.print(f"wrote {escape(str(path))}")
    if args.output:
        con.print(f"wrote the derived network to {escape(args.output)}")
    return EXIT_OK


def refuse_nproc(args: argparse.Namespace) -> None:
    """``--nproc`` splits one supernet's batches; a multi-trial search has none to split."""
    from nasforge.search.oneshot import ONESHOT_STRATEGIES

    raise SpecError("--nproc trains one supernet in several processes", location=Location("--nproc"),
                    expected="a one-shot --strategy (" + ", ".join(ONESHOT_STRATEGIES) + ")",
                    found=f"--strategy {args.strategy}", hint="a multi-trial search runs in parallel with --workers N")


def check_flags(args: argparse.Namespace) -> None:
    """Flags of multi-trial searches that a one-shot search cannot honour are errors, not silence."""
    if not args.dataset:
        raise SpecError("a one-shot search trains a supernet and needs data", location=Location("--dataset"),
                        expected="--dataset digits, synthetic[:N], npz:PATH, folder:PATH or cifar10:PATH",
                        found="no --dataset")
    given = [f"--{name.replace('_', '-')}" for name in FOREIGN_FLAGS if getattr(args, name, None) is not None]
    if given:
        raise SpecError("one-shot methods train with their paper's optimizer and schedule", location=Location(given[0]),
                        expected="no " + ", ".join(f"--{n.replace('_', '-')}" for n in FOREIGN_FLAGS),
                        found=" ".join(given), hint="tune them with --hparam (lr, lr_min, momentum, warmup, ...)")
    if getattr(args, "workers", 1) > 1:
        raise SpecError("a one-shot search trains one supernet", location=Location("--workers"),
                        expected="no --workers", found=f"--workers {args.workers}",
                        hint="--nproc N trains it in N processes (torch.distributed)")
    objectives = args.objective or []
    if any(o.replace(" ", "") not in ("accuracy:max", "accuracy:maximize") for o in objectives):
        raise SpecError("a one-shot search maximizes the supernet's accuracy", location=Location("--objective"),
                        expected="no --objective, or accuracy:max", found=" ".join(objectives),
                        hint="for other objectives use a multi-trial strategy; spos takes --constraint")
