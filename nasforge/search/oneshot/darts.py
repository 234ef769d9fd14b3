"""DARTS (Liu, Simonyan, Yang, ICLR 2019): softmax-relaxed mixed ops, first and second order.

First order (``darts``) takes alpha's gradient of the validation loss at the current weights. Second
order (``darts2``) takes it at the weights one virtual SGD step ahead, w' = w - eta (momentum + grad + wd w),
and adds the implicit term -eta * d2L_train/(dalpha dw) . dL_val/dw', whose Hessian-vector product is a
central finite difference: (grad_alpha L_train(w + r v) - grad_alpha L_train(w - r v)) / 2r with
v = dL_val/dw' and r = 0.01 / ||v|| (the paper's eq. 7-8, train_search.py's Architect). The weights are
moved in place and restored exactly, so no copy of the supernet is needed. Under several processes each
gradient is averaged over them before it is used (:mod:`.distributed`), so the step is the global batch's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nasforge.search.oneshot.method import Batch, OneShotMethod


class Darts(OneShotMethod):
    """DARTS with the first-order approximation (alpha's gradient at the current weights)."""

    name = "darts"


class DartsSecondOrder(Darts):
    """DARTS with the unrolled (second-order) architecture gradient."""

    name = "darts2"

    def arch_step(self, train: Batch, val: Batch, w_opt: torch.optim.Optimizer,
                  a_opt: torch.optim.Optimizer) -> float:
        net, hp = self.net, self.hp
        weights = net.weight_parameters()
        alphas = net.arch_parameters()
        eta = w_opt.param_groups[0]["lr"]
        saved = [w.detach().clone() for w in weights]
        average = self.group.average  # each gradient is the global batch's before it is used
        grads = average(torch.autograd.grad(F.cross_entropy(net(train[0]), train[1]), weights, allow_unused=True),
                        weights)
        with torch.no_grad():  # the virtual step w' = w - eta (momentum + grad + wd w)
            for w, g in zip(weights, grads):
                if g is None:
                    continue
                buffer = w_opt.state.get(w, {}).get("momentum_buffer")
                step = g + hp.weight_decay * w
                if buffer is not None:
                    step = step + hp.momentum * buffer
                w.sub_(eta * step)
        val_loss = F.cross_entropy(net(val[0]), val[1])
        found = average(torch.autograd.grad(val_loss, alphas + weights, allow_unused=True), alphas + weights)
        d_alpha, d_w = found[:len(alphas)], found[len(alphas):]
        norm = torch.sqrt(sum((g * g).sum() for g in d_w if g is not None))
        r = hp.unrolled_r / float(norm.clamp_min(1e-12))
        implicit = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for w, s, g in zip(weights, saved, d_w):
                    w.copy_(s if g is None else s + sign * r * g)
            implicit.append(average(torch.autograd.grad(F.cross_entropy(net(train[0]), train[1]), alphas,
                                                        allow_unused=True), alphas))
        with torch.no_grad():
            for w, s in zip(weights, saved):
                w.copy_(s)
        a_opt.zero_grad(set_to_none=True)
        for a, direct, plus, minus in zip(alphas, d_alpha, *implicit):
            grad = torch.zeros_like(a) if direct is None else direct.clone()
            if plus is not None and minus is not None:
                grad -= eta * (plus - minus) / (2 * r)
            a.grad = grad
        a_opt.step()
        return val_loss.item()
