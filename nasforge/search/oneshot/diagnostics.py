"""What researchers look at during a one-shot search: alpha trajectories and the collapse of the cell.

* Trajectories: softmax(alpha) of every architecture key per epoch, drawn as one small plot per key
  (``alphas.png``), from the records the runner keeps (each epoch's :meth:`Supernet.arch_weights`).
* Collapse: DARTS run long on NAS-Bench-201 ends with a cell of skip connections (Dong and Yang 2020,
  Table 5: 54.3 % on CIFAR-10); in the DARTS space, normal cells fill with skip connections (Zela et al.
  2020, Chu et al. 2020). :func:`collapse_report` counts, per family of choices (``normal_op``,
  ``edge``...), the share of the derived ops that are skip connections or zero ops, and flags a family at
  or above the threshold (0.5 by default); the share of parameter-free ops (pools too) is reported beside.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from nasforge.compiler.analysis import totals
from nasforge.search.oneshot.checkpoint import atomic_write
from nasforge.search.oneshot.sites import Candidate
from nasforge.search.oneshot.supernet import Supernet


def family(label: str) -> str:
    """The family of a choice label: its name without the parts that number it (``params.normal_op_3a``
    -> ``normal_op``, ``params.edge_2_1`` -> ``edge``, ``features.3.arch`` -> ``features.arch``)."""
    name = label.removeprefix("params.")
    return re.sub(r"[._]?[^._]*\d[^._]*", "", name).strip("._") or name


@dataclass(frozen=True)
class CollapseReport:
    """Per family: how many ops the derived network chose, and the shares of skip, zero and
    parameter-free ones; ``collapsed`` lists the families whose skip + zero share reaches ``threshold``."""

    families: dict[str, dict[str, float]]
    collapsed: list[str]
    threshold: float

    def as_dict(self) -> dict[str, Any]:
        return {"families": self.families, "collapsed": self.collapsed, "threshold": self.threshold}

    def message(self) -> str | None:
        """A warning line when some family collapsed, else None."""
        if not self.collapsed:
            return None
        parts = [f"{name}: {self.families[name]['skip'] + self.families[name]['none']:.0%} skip/none of "
                 f"{int(self.families[name]['ops'])} ops" for name in self.collapsed]
        return ("the derived cell collapsed to parameter-free ops (" + "; ".join(parts)
                + "), the failure DARTS is known for on NAS-Bench-201")


def chosen_candidates(net: Supernet, assignment: Mapping[str, Any]) -> dict[str, Candidate]:
    """Per op choice (not the input choices, which pick edges), the candidate it puts into the network:
    the one its first site holds under ``assignment``."""
    index = net.option_indexes(assignment)
    op_labels = [*net.own_keys, *(x for c in net.inputs.values() for x in c.op_labels)]
    out = {}
    for label in op_labels:
        site = next(s for s in net.sitemap.sites.values() if label in s.labels)
        out[label] = site.candidates[site.combos[tuple(index[x] for x in site.labels)]]
    return out


def collapse_report(net: Supernet, assignment: Mapping[str, Any], threshold: float) -> CollapseReport:
    counts: dict[str, dict[str, float]] = {}
    for label, candidate in chosen_candidates(net, assignment).items():
        row = counts.setdefault(family(label), {"ops": 0, "skip": 0, "none": 0, "parameter_free": 0})
        row["ops"] += 1
        row["skip"] += candidate.is_identity
        row["none"] += candidate.is_zero
        row["parameter_free"] += totals(candidate.graph).params == 0
    shares = ("skip", "none", "parameter_free")
    families = {name: {"ops": row["ops"], **{k: round(row[k] / row["ops"], 4) for k in shares}}
                for name, row in counts.items()}
    collapsed = [name for name, row in families.items() if row["skip"] + row["none"] >= threshold]
    return CollapseReport(families, collapsed, threshold)


def plot_trajectories(records: Sequence[Mapping[str, Any]], net: Supernet, path: Path) -> Path:
    """Draw softmax(alpha) of every key over the epochs of ``records`` into ``path`` (PNG, written
    atomically), one panel per key, one line per option."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    keys = list(net.keys.values())
    cols = min(4, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False, sharex=True)
    epochs = [r["epoch"] + 1 for r in records]
    for ax, key in zip(axes.flat, keys):
        for k, option in enumerate(key.options):
            ax.plot(epochs, [r["alphas"][key.name][k] for r in records], marker=".", label=option,
                    linestyle="--" if key.zero and k == key.size - 1 else "-")
        ax.set_title(key.name.removeprefix("params."), fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(8, len(labels)), fontsize=7)
    fig.supxlabel("epoch", fontsize=8)
    fig.supylabel("softmax(alpha)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (2.6 * rows)))  # room for the legend (about 0.4 inch)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        plt.close(fig)
    return path
