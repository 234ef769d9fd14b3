"""wn_conv1d / wn_conv_transpose1d beyond the generic harness: numerics and state_dicts against torch's
weight normalization (the legacy hook, whose weight_g / weight_v names the entries keep, and the
parametrization), the transposed kernel's per-input-channel lengths, padding modes, errors, FLOPs, and
torch.export of a spec that uses them."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.export import Dim

import nasforge
from nasforge.errors import ShapeError, SpecError
from nasforge.ops import get_op
from nasforge.ops.registry import OpContext
from nasforge.types import TensorType


def lowered(name: str, attrs: dict, shape: tuple[int, ...]):
    op = get_op(name)
    ctx = OpContext(op.validate_attrs(attrs), [TensorType(shape)])
    ctx.outputs = op.infer(ctx)
    return op, ctx, op.lower(ctx)


def legacy(module: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(module)


def random_state(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("attrs, torch_kwargs, pad", [
    ({"out": 6, "kernel": 3}, {}, None),
    ({"out": 6, "kernel": 3, "dilation": 3, "padding": 3, "padding_mode": "reflect"}, {"dilation": 3},
     ((3, 3), "reflect")),
    ({"out": 4, "kernel": 5, "stride": 2, "padding": 2, "groups": 2, "bias": False},
     {"stride": 2, "padding": 2, "groups": 2, "bias": False}, None),
    ({"out": 5, "kernel": 4, "padding": "same"}, {}, ((1, 2), "constant")),      # the odd pad goes last
])
def test_wn_conv1d_is_torchs_weight_norm(attrs, torch_kwargs, pad):
    """Same parameter names and shapes as nn.utils.weight_norm(nn.Conv1d), same output for the same
    state_dict (the reflect case is MelGAN's ReflectionPad1d + conv)."""
    _, _, module = lowered("wn_conv1d", attrs, (2, 4, 16))
    ref = legacy(nn.Conv1d(4, attrs["out"], attrs["kernel"], **torch_kwargs))
    assert {k: v.shape for k, v in module.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    state = random_state(ref)
    module.load_state_dict(state)
    ref.load_state_dict(state)
    x = torch.randn(2, 4, 16)
    expected = ref(nn.functional.pad(x, pad[0], mode=pad[1]) if pad else x)
    torch.testing.assert_close(module(x), expected)


def test_wn_conv_transpose1d_normalizes_per_input_channel():
    """torch's dim=0 is axis 0 of the transposed kernel [in, out, k]: one length per input channel."""
    op, ctx, module = lowered("wn_conv_transpose1d", {"out": 3, "kernel": 16, "stride": 8, "padding": 4},
                              (2, 6, 5))
    assert op.params(ctx) == {"weight_g": (6, 1, 1), "weight_v": (6, 3, 16), "bias": (3,)}
    ref = legacy(nn.ConvTranspose1d(6, 3, 16, stride=8, padding=4))
    state = random_state(ref)
    module.load_state_dict(state)
    ref.load_state_dict(state)
    x = torch.randn(2, 6, 5)
    out = module(x)
    assert out.shape == (2, 3, 40)
    torch.testing.assert_close(out, ref(x))


def test_parametrization_state_dict_maps_onto_g_and_v():
    """The newer parametrizations.weight_norm stores the same tensors as original0 (g) / original1 (v)."""
    _, _, module = lowered("wn_conv1d", {"out": 5, "kernel": 3, "padding": 1}, (1, 2, 9))
    ref = nn.utils.parametrizations.weight_norm(nn.Conv1d(2, 5, 3, padding=1))
    state = random_state(ref)
    module.load_state_dict({"weight_g": state["parametrizations.weight.original0"],
                            "weight_v": state["parametrizations.weight.original1"], "bias": state["bias"]})
    ref.load_state_dict(state)
    x = torch.randn(1, 2, 9)
    torch.testing.assert_close(module(x), ref(x))


def test_fresh_module_has_unit_direction_and_torch_default_kernel():
    _, _, module = lowered("wn_conv1d", {"out": 4, "kernel": 3}, (1, 3, 8))
    torch.testing.assert_close(module.weight(), module.weight_v)
    norms = module.weight_v.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()
    torch.testing.assert_close(module.weight_g, norms)


def test_scaling_v_does_not_change_the_output():
    _, _, module = lowered("wn_conv1d", {"out": 4, "kernel": 3}, (1, 3, 8))
    x = torch.randn(1, 3, 8)
    before = module(x)
    with torch.no_grad():
        module.weight_v.mul_(7.5)
    torch.testing.assert_close(module(x), before)


def test_counts():
    op, ctx, _ = lowered("wn_conv1d", {"out": 6, "kernel": 7, "padding": 3, "padding_mode": "reflect"}, (1, 4, 10))
    assert op.macs(ctx) == 10 * 6 * 4 * 7                         # the conv's; FlopCounterMode agrees
    assert op.flops(ctx) == 2 * op.macs(ctx) + 3 * 6 * 4 * 7 + 2 * 6
    op, ctx, _ = lowered("wn_conv_transpose1d", {"out": 3, "kernel": 16, "stride": 8, "padding": 4}, (1, 6, 5))
    assert op.macs(ctx) == 5 * 6 * 3 * 16


def test_errors_are_the_conv_rules():
    with pytest.raises(ShapeError, match="wn_conv1d needs a rank-3 input"):
        lowered("wn_conv1d", {"out": 4, "kernel": 3}, (2, 4, 8, 8))
    with pytest.raises(ShapeError, match="reflect padding 9 is too large"):
        lowered("wn_conv1d", {"out": 4, "kernel": 3, "dilation": 9, "padding": 9, "padding_mode": "reflect"},
                (1, 4, 8))
    with pytest.raises(SpecError, match="output channels must be divisible by groups"):
        lowered("wn_conv_transpose1d", {"out": 3, "kernel": 2, "groups": 2}, (1, 4, 8))
    with pytest.raises(SpecError, match="has no attribute 'weight_norm_dim'"):
        get_op("wn_conv1d").validate_attrs({"out": 4, "kernel": 3, "weight_norm_dim": 1})


SPEC = """
nasforge: 1
inputs: {mel: [B, 8, 12]}
graph:
  - {id: conv, op: wn_conv1d, out: 16, kernel: 7, padding: 3, padding_mode: reflect}
  - {id: act, op: leaky_relu, slope: 0.2}
  - {id: up, op: wn_conv_transpose1d, out: 4, kernel: 8, stride: 4, padding: 2}
  - {id: out, op: tanh}
"""


def test_spec_builds_counts_and_exports_with_a_dynamic_batch():
    spec = nasforge.loads(SPEC, "wn.yaml")
    totals = spec.check().totals
    assert totals.params == (16 + 16 * 8 * 7 + 16) + (16 + 16 * 4 * 8 + 4)
    gm = spec.build()
    assert list(gm.state_dict()) == ["conv.weight_g", "conv.weight_v", "conv.bias", "up.weight_g", "up.weight_v",
                                     "up.bias"]
    x = torch.randn(2, 8, 12)
    program = torch.export.export(gm, (x,), dynamic_shapes=({0: Dim("batch", min=1, max=16)},))
    other = torch.randn(3, 8, 12)
    torch.testing.assert_close(program.module()(other), gm(other))
    assert gm(x).shape == (2, 4, 48)
