"""One-shot search: supernets built from the same space files, trained by DARTS (first and second order),
GDAS, PC-DARTS or SPOS, and discretized into concrete specs.

The names here are the ``--strategy`` values of ``nasforge search`` that run one supernet instead of many
trials; everything else lives in the submodules (importing this package does not import torch).
"""

ONESHOT_STRATEGIES = ("darts", "darts2", "gdas", "pcdarts", "spos")

__all__ = ["ONESHOT_STRATEGIES"]
