"""Random state_dicts for comparing a built spec with an independent reference implementation.

Both sides load the same random weights; batch-norm statistics are randomized too, so a BN that is
wired wrongly (or left as the identity) shows up in the outputs.
"""

from __future__ import annotations

import torch
from torch import nn


def small_random_state(module: nn.Module, seed: int = 0, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """Small random weights (std ``scale``) and BN variances in [0.5, 1.5)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if not value.is_floating_point():
            state[key] = value
        elif "running_var" in key:
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        else:
            state[key] = scale * torch.randn(value.shape, generator=gen)
    return state


def fan_in_random_state(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights scaled by fan-in (deep nets neither explode nor vanish), affine weights near 1, biases and
    BN statistics random."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if not value.is_floating_point():
            state[key] = value
        elif "running_var" in key:
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif value.dim() > 1:
            state[key] = torch.randn(value.shape, generator=gen) * (value[0].numel() ** -0.5)
        elif key.endswith("weight"):
            state[key] = 1.0 + 0.1 * torch.randn(value.shape, generator=gen)
        else:
            state[key] = 0.1 * torch.randn(value.shape, generator=gen)
    return state


def params_of(module: nn.Module) -> int:
    """Parameters of a built module, counted independently of nasforge's analysis."""
    return sum(p.numel() for p in module.parameters())


def rows_of(spec, depth: int | None = None) -> dict[str, tuple[int, int]]:
    """``show``'s rows as {path: (params, MACs)}."""
    return {r.path: (r.params, r.macs) for r in spec.summary(depth=depth).rows}


def shape_of(spec, path: str) -> tuple[int, ...]:
    """One sample's output shape of node ``path``."""
    return tuple(spec.graph.nodes[path].outputs[0].concrete_shape({"B": 1}))
