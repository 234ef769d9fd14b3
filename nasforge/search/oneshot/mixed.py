"""The modules a supernet's graph calls where a space has choices: mixed ops and mixed nodes.

A :class:`MixedOp` holds every candidate of one site (each a small ``torch.fx.GraphModule`` built by the
compiler from the candidate's subgraph) and combines them as the supernet's mode says:

* ``mixed`` (DARTS): the sum of all candidates weighted by softmax(alpha);
* ``gumbel`` (GDAS): one candidate per forward, picked by a hard Gumbel-softmax sample whose weight is 1
  in value and carries the sample's gradient (straight-through);
* ``partial`` (PC-DARTS): the weighted sum on 1/K of the channels, the rest passed by, then a channel
  shuffle; candidates run narrower by slicing their weights (:func:`make_elastic`);
* ``single_path`` (SPOS): only the candidates of the chosen path.

A :class:`MixedNode` replaces a node that sums several sites (a DARTS intermediate node): it sums its
edges (each a :class:`MixedOp`), weighted by softmax(beta) in ``partial`` mode (PC-DARTS's edge
normalization), and in ``single_path`` mode runs only the edges the path wires. Both read the weights of
the current forward from a :class:`Control` that the supernet fills once per forward, so that every cell
sharing a choice sees the same weights (and the same Gumbel sample).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nasforge.types import Sym, TensorType

MODES = ("mixed", "gumbel", "partial", "single_path")


@dataclass
class Control:
    """What every mixed module of one supernet reads during a forward (a plain object, not a module)."""

    mode: str = "mixed"
    partial_k: int = 4
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per architecture key, the weight of each of its options in this forward."""


class MixedOp(nn.Module):
    """The candidates of one site, combined according to :class:`Control`.

    ``keys`` are the architecture keys whose options decide the site; ``combos[i]`` lists one option index
    per key and ``combo_candidate[i]`` the candidate that combination gives, so a candidate's weight is the
    sum over its combinations of the product of the keys' weights (one key: its weight). ``routes[c]``
    picks candidate ``c``'s inputs among the site's inputs. A candidate that is ``None`` is the zero op the
    DARTS relaxation adds: it takes weight but computes nothing.
    """

    def __init__(self, control: Control, candidates: dict[str, nn.Module | None], routes: Sequence[Sequence[int]],
                 keys: Sequence[str], combos: Sequence[Sequence[int]], combo_candidate: Sequence[int],
                 output: TensorType, partial_ok: bool) -> None:
        super().__init__()
        self.control = control
        self.names = list(candidates)
        self.candidates = nn.ModuleDict({k: m for k, m in candidates.items() if m is not None})
        self.routes = [list(r) for r in routes]
        self.keys = list(keys)
        self.register_buffer("combos", torch.tensor(combos, dtype=torch.long).reshape(len(combos), len(keys)),
                             persistent=False)
        self.register_buffer("combo_candidate", torch.tensor(combo_candidate, dtype=torch.long), persistent=False)
        self.output = output
        self.partial_ok = partial_ok
        self.selected: list[int] = []
        self.direct = len(keys) == 1 and [list(c) for c in combos] == [[k] for k in range(len(self.names))] and list(
            combo_candidate) == list(range(len(self.names)))
        """One key whose options are the candidates in order (the usual case): its weights are theirs."""
        self.runs = [(self.candidates[n] if n in self.candidates else None, self.routes[k])
                     for k, n in enumerate(self.names)]
        """Per candidate, its module (None: the zero op) and routes, looked up once rather than per call."""

    def weights(self) -> torch.Tensor:
        """The weight of each candidate in this forward."""
        w = self.control.weights
        if self.direct:
            return w[self.keys[0]]
        per_combo = w[self.keys[0]][self.combos[:, 0]]
        for k in range(1, len(self.keys)):
            per_combo = per_combo * w[self.keys[k]][self.combos[:, k]]
        return per_combo.new_zeros(len(self.names)).index_add(0, self.combo_candidate, per_combo)

    def run(self, index: int, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        module, routes = self.runs[index]
        if module is None:
            return zeros_like_output(self.output, inputs[0])
        return module(*[inputs[i] for i in routes])

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        mode = self.control.mode
        if mode == "single_path":
            return sum_of([self.run(c, inputs) for c in self.selected])
        w = self.weights()
        if mode == "gumbel":  # GDAS: the sampled candidate only; the others' (zero) weights keep their gradient
            c = int(w.argmax())
            return w[c] * self.run(c, inputs) + (w.sum() - w[c])
        if mode == "partial" and self.partial_ok:
            return self.partial(inputs[0], w)
        return self.mix(inputs, w)

    def mix(self, inputs: Sequence[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
        return sum_of([w[c] * self.run(c, inputs) for c, (module, _) in enumerate(self.runs) if module is not None])

    def partial(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """PC-DARTS: mix on the first 1/K of the channels, pass the rest by (max-pooled where the site
        halves the resolution), concatenate and shuffle the channels in K groups."""
        k = self.control.partial_k
        part = x.shape[1] // k
        mixed = self.mix([x[:, :part]], w)
        rest = x[:, part:]
        if mixed.shape[2:] != rest.shape[2:]:
            rest = F.max_pool2d(rest, 2, 2, ceil_mode=True)
        return F.channel_shuffle(torch.cat([mixed, rest], dim=1), k)


class MixedNode(nn.Module):
    """A node that sums mixed edges; ``routes[e]`` picks edge ``e``'s inputs among the node's inputs,
    ``beta_key`` names the edge-normalization weights (PC-DARTS) of the node's kind and ``sites`` are the
    paths of the sites the node stands for (in a member, the ops it sums)."""

    def __init__(self, control: Control, edges: Sequence[MixedOp], routes: Sequence[Sequence[int]],
                 beta_key: str, sites: Sequence[str]) -> None:
        super().__init__()
        self.control = control
        self.edges = nn.ModuleList(edges)
        self.routes = [list(r) for r in routes]
        self.beta_key = beta_key
        self.sites = list(sites)
        self.active: list[int] = list(range(len(edges)))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        mode = self.control.mode
        terms = []
        beta = self.control.weights[self.beta_key] if mode == "partial" else None
        for e in (self.active if mode == "single_path" else range(len(self.edges))):
            out = self.edges[e](*(inputs[i] for i in self.routes[e]))
            terms.append(out if beta is None else beta[e] * out)
        return sum_of(terms)


def sum_of(terms: list[torch.Tensor]) -> torch.Tensor:
    """The sum of a non-empty list of tensors (``sum()`` would start from the int 0)."""
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def zeros_like_output(output: TensorType, x: torch.Tensor) -> torch.Tensor:
    """Zeros of a site's output type, its batch taken from ``x`` (the zero op that GDAS may sample)."""
    shape = [x.shape[0] if isinstance(d, Sym) else int(d) for d in output.shape]
    return x.new_zeros(shape)


class ElasticConv2d(nn.Conv2d):
    """A conv that runs on fewer input channels than it was built for by slicing its weights (the first
    channels, as once-for-all's elastic width does): the output narrows by the same ratio and a depthwise
    conv stays depthwise. At full width it is ``nn.Conv2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        if channels == self.in_channels:
            return super().forward(x)
        groups = channels if self.groups == self.in_channels else self.groups
        out = self.out_channels * channels // self.in_channels
        weight = self.weight[:out, :channels // groups]
        bias = self.bias[:out] if self.bias is not None else None
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return F.conv2d(x, weight, bias, self.stride, padding, self.dilation, groups)


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the first channels of its statistics and affine parameters when the input is
    narrower than it was built for; the running statistics of those channels are updated in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)

        def first(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[:c]

        use_batch = self.training or not self.track_running_stats
        momentum = 0.1 if self.momentum is None else self.momentum
        return F.batch_norm(x, first(self.running_mean), first(self.running_var), first(self.weight),
                            first(self.bias), use_batch, momentum, self.eps)


ELASTIC = {nn.Conv2d: ElasticConv2d, nn.BatchNorm2d: ElasticBatchNorm2d}


def make_elastic(module: nn.Module) -> None:
    """Let ``module``'s 2-D convs and batch norms run narrower (PC-DARTS's partial channels) by switching
    them to their elastic subclasses in place: same parameters, buffers and ``state_dict``, no extra state."""
    for m in module.modules():
        elastic = ELASTIC.get(type(m))
        if elastic is not None:
            m.__class__ = elastic
