"""GDAS (Dong and Yang, CVPR 2019): one sampled op per edge and forward, by a hard Gumbel-softmax.

Each forward samples, per architecture key, a one-hot choice from softmax((log_softmax(alpha) + Gumbel
noise) / tau); only the chosen candidate runs, multiplied by its weight, which is 1 in value but carries
the soft sample's gradient (straight-through), so alpha learns from single paths. tau falls linearly
from 10 to 0.1 over the search (250 epochs in the paper); the weights are updated before alpha in each
step (the reference's search loop), both with the DARTS optimizers. Evaluation uses the argmax path.
"""

from __future__ import annotations

from nasforge.search.oneshot.method import OneShotMethod


class Gdas(OneShotMethod):
    """GDAS: gumbel mode with an annealed temperature."""

    name = "gdas"
    defaults = {"epochs": 250}
    arch_first = False

    def tau(self, epoch: int) -> float:
        hp = self.hp
        return hp.tau_max - (hp.tau_max - hp.tau_min) * epoch / max(1, hp.epochs - 1)

    def start_epoch(self, epoch: int) -> dict[str, float]:
        tau = self.tau(epoch)
        self.net.set_mode("gumbel", tau=tau)
        return {"tau": round(tau, 6)}
