"""Pictures of a study: optimization history per objective and, with several objectives, the Pareto front."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna


def plot_study(study: optuna.Study, directory: Path) -> list[Path]:
    """Write PNGs into ``directory`` (created); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on these machines
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    directory.mkdir(parents=True, exist_ok=True)
    names = study.metric_names or [f"objective{i}" for i in range(len(study.directions))]
    written = []
    with warnings.catch_warnings():  # optuna marks its matplotlib backend experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for i, name in enumerate(names):
            ax = ovm.plot_optimization_history(study, target=lambda t, i=i: t.values[i], target_name=name)
            path = directory / f"history_{name}.png"
            ax.figure.savefig(path, dpi=120, bbox_inches="tight")
            plt.close(ax.figure)
            written.append(path)
        if len(study.directions) > 1:
            ax = ovm.plot_pareto_front(study, target_names=names)
            path = directory / "pareto_front.png"
            ax.figure.savefig(path, dpi=120, bbox_inches="tight")
            plt.close(ax.figure)
            written.append(path)
    return written
