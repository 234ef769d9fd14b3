"""Structural re-parameterization as a pass: sums of parallel conv / BN / identity branches become one conv.

The folding itself is :func:`nasforge.compiler.reparam.reparameterize` (RepVGG's deploy form); this module
only runs it in place on the module :func:`~nasforge.compiler.passes.optimize` works on and counts what it
folded. It runs before BatchNorm folding, which would otherwise take the BatchNorms of the branches one by
one and leave three convolutions where one suffices.
"""

from __future__ import annotations

from torch import fx

from nasforge.compiler.reparam import find_branch_sums, reparameterize


def fold_branches(gm: fx.GraphModule) -> dict[str, int]:
    """Fold every sum of parallel linear branches in ``gm`` in place; counts sums and branches."""
    sums = find_branch_sums(gm)
    if sums:
        reparameterize(gm, inplace=True)
    return {"sums": len(sums), "branches": sum(len(s.branches) for s in sums)}
