"""Zero-cost proxies: scores of an untrained network that rank architectures without training them.

Each proxy takes one forward (and at most one backward) pass over a fixed batch at initialization, so a
search can score thousands of candidates in the time one short training takes. They follow the
reference definitions as benchmarked by Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS"
(ICLR 2021):

* ``synflow`` -- Tanaka et al., "Pruning neural networks without any data by iteratively conserving
  synaptic flow" (NeurIPS 2020),
* ``naswot`` -- Mellor et al., "Neural Architecture Search without Training" (ICML 2021),
* ``snip`` -- Lee et al., "SNIP: Single-shot Network Pruning based on Connection Sensitivity" (ICLR 2019),
* ``grad_norm`` -- the norm of the loss gradient at initialization (Abdelfattah et al.'s baseline).

Every proxy sees the network as ``torch.manual_seed(seed); spec.build()`` initializes it, works on its own
copy, and runs inside a forked RNG state with gradients enabled: scores are a function of (spec, batch,
seed), and the caller's RNG, grad mode, spec and tensors are left as they were. Higher is better for all.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from nasforge.api import Spec
from nasforge.errors import Location, SpecError, did_you_mean
from nasforge.ops.registry import get_op
from nasforge.search.data import Dataset
from nasforge.search.training import check_classifier

Proxy = Callable[[fx.GraphModule, torch.Tensor, torch.Tensor], float]
RECTIFIERS = frozenset({"relu", "relu6", "leaky_relu", "elu", "gelu", "silu", "mish", "hardswish"})
"""Activations whose output is positive exactly where their input is: the sign of the pre-activation says
which side of the unit's kink a sample falls on. Mellor et al. code ReLUs; the smooth rectifiers are coded
the same way, so networks that use GELU or SiLU get a score rather than none."""
PROXY_BATCH = 64
"""Samples in the fixed batch of :func:`make_proxy_fn` (NASWOT's kernel is batch x batch)."""


def connection_parameters(model: fx.GraphModule) -> list[nn.Parameter]:
    """Parameters of the network's connections: every parameter except those of normalization layers,
    whose affine scales are not connections between units (Abdelfattah et al. score only conv/linear
    weights; excluding norms keeps every other layer nasforge can build)."""
    norms = {id(p) for node in model.graph.nodes
             if node.op == "call_module" and "nasforge_op" in node.meta
             and get_op(node.meta["nasforge_op"]).category == "normalization"
             for p in model.get_submodule(node.target).parameters()}
    return [p for p in model.parameters() if id(p) not in norms]


def synflow(model: fx.GraphModule, images: torch.Tensor, labels: torch.Tensor) -> float:
    """SynFlow (Tanaka et al. 2020): ``sum |theta * dR/dtheta|`` over connection parameters, where
    ``R = 1^T f_|theta|(1)`` is the output sum of the network with absolute weights on an all-ones input
    (one sample of the batch's shape; no data and no labels are used). In float64, as products of many
    weights overflow float32, and in eval mode: batch norm then applies its initial running statistics,
    the identity, which is how Abdelfattah et al. skip it."""
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    dtype = torch.float64 if images.is_floating_point() else images.dtype
    model(torch.ones((1, *images.shape[1:]), dtype=dtype)).sum().backward()
    params = connection_parameters(model)
    return _saliency(params, [p.grad for p in params])


def snip(model: fx.GraphModule, images: torch.Tensor, labels: torch.Tensor) -> float:
    """SNIP (Lee et al. 2019): connection sensitivity ``sum |g * w|``, ``g`` the gradient of the batch's
    cross-entropy loss (train mode, as a training step would see it) with respect to connection weights."""
    params = connection_parameters(model)
    return _saliency(params, _loss_gradients(model, images, labels, params))


def grad_norm(model: fx.GraphModule, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The L2 norm of the gradient of the batch's cross-entropy loss with respect to all parameters at
    initialization (train mode): how strongly the first training step would move the network."""
    grads = _loss_gradients(model, images, labels, list(model.parameters()))
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads if g is not None))


def naswot(model: fx.GraphModule, images: torch.Tensor, labels: torch.Tensor) -> float:
    """NASWOT (Mellor et al. 2021): ``log |K|`` with ``K[i, j]`` the number of rectifier units whose
    binary code (pre-activation > 0) agrees between samples ``i`` and ``j``, i.e. ``c c^T + (1-c)(1-c)^T``
    over the concatenated codes ``c`` (train mode, as in the paper's code). A network that separates the
    batch's samples into distinct linear regions scores high; ``-inf`` when ``K`` is singular: no
    rectifier, or two samples the network cannot tell apart. Only rectifiers that are nodes of the spec's
    graph are coded (not ones inside a fused op's module)."""
    recorder = _CodeKernel(model.train(), len(images))
    with torch.no_grad():
        recorder.run(images)
    sign, logdet = torch.linalg.slogdet(recorder.kernel)
    return float(logdet) if sign > 0 else -math.inf


PROXIES: dict[str, Proxy] = {"synflow": synflow, "naswot": naswot, "snip": snip, "grad_norm": grad_norm}


class _CodeKernel(fx.Interpreter):
    """Runs a nasforge GraphModule node by node, adding each rectifier input's binary codes to the
    NASWOT kernel as it goes, so no activation outlives its node."""

    def __init__(self, module: fx.GraphModule, batch: int) -> None:
        super().__init__(module)
        self.kernel = torch.zeros(batch, batch, dtype=torch.float64)

    def run_node(self, n: fx.Node) -> Any:
        if n.meta.get("nasforge_op") in RECTIFIERS:
            args, _ = self.fetch_args_kwargs_from_env(n)
            codes = (args[0].reshape(len(self.kernel), -1) > 0).double()
            self.kernel += codes @ codes.T + (1 - codes) @ (1 - codes).T
        return super().run_node(n)


def _loss_gradients(model: fx.GraphModule, images: torch.Tensor, labels: torch.Tensor,
                    params: list[nn.Parameter]) -> Sequence[torch.Tensor | None]:
    model.train()
    loss = F.cross_entropy(model(images), labels)
    return torch.autograd.grad(loss, params, allow_unused=True)


def _saliency(params: list[nn.Parameter], grads: Sequence[torch.Tensor | None]) -> float:
    """``sum |theta * g|`` in float64; parameters the output does not depend on (no gradient) add nothing."""
    return sum(float((p.detach().double() * g.double()).abs().sum())
               for p, g in zip(params, grads) if g is not None)


def compute_proxies(spec: Spec, batch: tuple[torch.Tensor, torch.Tensor], names: list[str], *,
                    seed: int = 0) -> dict[str, float]:
    """The named proxies of ``spec`` initialized with ``seed``, on ``batch`` = (inputs, integer labels).

    The spec must map the batch's inputs to logits ``[B, K]`` with every label below ``K``. Each proxy
    gets its own copy of one initialization and the same seed for what it draws (dropout), so a score
    does not depend on which other proxies were asked for or in what order.
    """
    unknown = [n for n in names if n not in PROXIES]
    if unknown:
        raise SpecError(f"unknown zero-cost proxy {unknown[0]!r}", location=Location("--objective"),
                        expected=" or ".join(PROXIES), found=repr(unknown[0]),
                        hint=did_you_mean(unknown[0], list(PROXIES)))
    images, labels = batch
    classes = check_classifier(spec, tuple(images.shape[1:]), None)
    fits = labels.dtype == torch.int64 and labels.shape == (len(images),) and len(labels) > 0
    if not (fits and 0 <= int(labels.min()) and int(labels.max()) < classes):
        span = f", range [{int(labels.min())}, {int(labels.max())}]" if labels.numel() else ""
        raise SpecError("the batch's labels do not fit the spec's classes", location=spec.graph.outputs_location,
                        expected=f"{len(images)} int64 labels in [0, {classes})",
                        found=f"{labels.dtype} {list(labels.shape)}{span}")
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)
        model = spec.build()
        scores = {}
        for name in names:
            torch.manual_seed(seed)
            scores[name] = PROXIES[name](copy.deepcopy(model), images, labels)
    return scores


def make_proxy_fn(dataset: Dataset, seed: int = 0,
                  batch_size: int = PROXY_BATCH) -> Callable[[Spec, list[str]], dict[str, float]]:
    """The ``proxies`` callable of an :class:`~nasforge.search.objectives.Evaluator`: every candidate is
    scored on one batch of ``batch_size`` training samples drawn once with ``seed``, so scores compare
    networks, not batches."""
    images, labels = dataset.train.tensors
    chosen = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:batch_size]
    batch = (images[chosen], labels[chosen])

    def proxies(spec: Spec, names: list[str]) -> dict[str, float]:
        check_classifier(spec, dataset.input_shape, dataset.num_classes)
        return compute_proxies(spec, batch, names, seed=seed)

    return proxies
