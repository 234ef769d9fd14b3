"""PC-DARTS (Xu et al., ICLR 2020): partial channel connections and edge normalization.

Each mixed op sends 1/K of its input channels (K = 4) through the candidates and passes the rest by
(max-pooled on reducing edges), then shuffles the channels, which cuts the memory and time of the mixed
ops about K-fold and lets the search use batch 256; the candidates run narrower on slices of their own
weights. Every node that sums edges weights them by softmax(beta) (one beta per edge of the node), which
steadies the edge choice, and the derived cell ranks edges by op weight times edge weight. The paper's
schedule: SGD at 0.1 annealed to 0, alpha's Adam at 6e-4, 50 epochs, alpha frozen for the first 15.
"""

from __future__ import annotations

from nasforge.search.oneshot.method import OneShotMethod


class PcDarts(OneShotMethod):
    """PC-DARTS: partial mode with K channel groups; architecture updates after a warm-up."""

    name = "pcdarts"
    defaults = {"batch_size": 256, "lr": 0.1, "lr_min": 0.0, "arch_lr": 6e-4, "warmup": 0.3}

    def start_epoch(self, epoch: int) -> dict[str, float]:
        self.net.set_mode("partial", k=self.hp.partial_k)
        return {}
