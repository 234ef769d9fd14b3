"""Structural re-parameterization (nasforge.compiler.reparam): RepVGG's training-time blocks fold into
one 3x3 convolution with bias, with the same outputs in eval mode, found from the graph's structure.

The RepVGG-A0 spec is held to the paper's deploy parameter count (8,309,384 = the authors'
create_RepVGG_A0(deploy=True)) and to the spec's own deploy form (deploy=true: the authors' rbr_reparam
keys). The other tests trace small torch modules written here - with meaningless names, branches in any
order, grouped, asymmetric (ACNet-style 1x3 / 3x1) and 1-D kernels - to show the pass is not tied to
nasforge's node names, and check the cases it must leave alone.
"""

from __future__ import annotations

import operator
from pathlib import Path

import pytest
import torch
from torch import fx, nn

import nasforge
from nasforge.compiler.reparam import find_branch_sums, reparameterize

ROOT = Path(__file__).resolve().parents[2]
REPVGG = ROOT / "specs" / "models" / "repvgg_a0.yaml"
MOBILENET_V2 = ROOT / "specs" / "models" / "mobilenet_v2.yaml"

PAPER_DEPLOY_PARAMS = 8_309_384     # RepVGG-A0, Table 4 (8.30M); the authors' deploy=True model
TRAIN_PARAMS = 9_108_968


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics (every BN a non-trivial affine map), scaled so that activations
    stay of order one through RepVGG's 22 blocks (He-normal kernels, BN weights in [0.3, 0.6]); eval mode."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if not value.is_floating_point():
            state[key] = value
        elif "running_var" in key:
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif "running_mean" in key or key.endswith("bias"):
            state[key] = 0.1 * torch.randn(value.shape, generator=gen)
        elif value.dim() == 1:     # BN weight
            state[key] = 0.3 + 0.3 * torch.rand(value.shape, generator=gen)
        else:                      # conv / linear weight
            state[key] = torch.randn(value.shape, generator=gen) * (2 / value[0].numel()) ** 0.5
    module.load_state_dict(state)
    return module.eval()


def params_of(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def modules_of(gm: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in gm.modules() if isinstance(m, kind)]


def outputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


# -- RepVGG-A0 -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def repvgg_pair() -> tuple[fx.GraphModule, fx.GraphModule]:
    train = randomize(nasforge.load(REPVGG).build())
    return train, reparameterize(train, name="rbr_reparam")


def test_repvgg_a0_deploy_form_has_the_papers_parameter_count(repvgg_pair):
    train, deploy = repvgg_pair
    assert params_of(train) == TRAIN_PARAMS
    assert params_of(deploy) == PAPER_DEPLOY_PARAMS
    assert params_of(nasforge.load(REPVGG, variant="repvgg_a0_deploy").build()) == PAPER_DEPLOY_PARAMS
    # every one of the 22 blocks is one 3x3 conv with bias; no BatchNorm and no addition is left
    convs = modules_of(deploy, nn.Conv2d)
    assert len(convs) == 22
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is not None for c in convs)
    assert modules_of(deploy, nn.BatchNorm2d) == []
    assert not [n for n in deploy.graph.nodes if n.target in (operator.add, torch.add)]
    assert deploy.training is False


def test_repvgg_a0_deploy_outputs_equal_the_training_form(repvgg_pair):
    train, deploy = repvgg_pair
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    expected = outputs(train, x)
    assert expected.abs().max() > 0.1       # not a degenerate comparison
    torch.testing.assert_close(outputs(deploy, x), expected, rtol=1e-5, atol=1e-5)


def test_repvgg_a0_deploy_state_dict_is_the_authors_deploy_layout(repvgg_pair):
    """Named rbr_reparam, the folded weights load into deploy=true (the authors' deploy=True keys)."""
    train, deploy = repvgg_pair
    spec_deploy = nasforge.load(REPVGG, deploy=True).build()
    assert [(k, v.shape) for k, v in deploy.state_dict().items()] == \
           [(k, v.shape) for k, v in spec_deploy.state_dict().items()]
    assert "stage3.13.rbr_reparam.weight" in deploy.state_dict()
    spec_deploy.load_state_dict(deploy.state_dict())
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(outputs(spec_deploy, x), outputs(train, x), rtol=1e-5, atol=1e-5)


def test_repvgg_a0_sums_are_found_from_the_structure():
    gm = nasforge.load(REPVGG).build()
    sums = find_branch_sums(gm)
    assert len(sums) == 22
    # the first block of each of the five stages changes the shape: no identity branch there
    assert sorted(len(s.branches) for s in sums) == [2] * 5 + [3] * 17
    assert all(s.others == [] and s.constants == [] for s in sums)
    # the training-time module is left untouched (the pass works on a copy by default)
    assert params_of(gm) == TRAIN_PARAMS


def test_repvgg_grouped_variant_folds_with_grouped_identity():
    train = randomize(nasforge.load(REPVGG, variant="repvgg_b1g2", image_size=32).build())
    deploy = reparameterize(train)
    assert params_of(deploy) == 41_360_104          # the paper's 41.36M; the authors' deploy B1g2
    assert {c.groups for c in modules_of(deploy, nn.Conv2d)} == {1, 2}
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(outputs(deploy, x), outputs(train, x), rtol=1e-4, atol=1e-5)


def test_repvgg_deploy_form_exports():
    deploy = reparameterize(nasforge.load(REPVGG, depths=[1, 1, 2, 1]).build())
    x = torch.randn(2, 3, 64, 64)
    program = torch.export.export(deploy, (x,))
    torch.testing.assert_close(program.module()(x), outputs(deploy, x))


# -- generality: traced torch modules ------------------------------------------------------------------

class ThreeBranch(nn.Module):
    """A RepVGG block written with meaningless names and the branches summed in another order."""

    def __init__(self, cin: int, cout: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.p = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout))
        self.q = nn.Conv2d(cin, cout, 1, stride, 0, groups=groups, bias=False)
        self.r = nn.BatchNorm2d(cout)
        self.s = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None

    def forward(self, x):
        y = self.r(self.q(x))
        if self.s is not None:
            y = torch.add(self.s(x), y)
        return torch.relu(y + self.p(x))


def fold_and_compare(module: nn.Module, x: torch.Tensor, **kwargs) -> fx.GraphModule:
    gm = fx.symbolic_trace(randomize(module))
    folded = reparameterize(gm, **kwargs)
    torch.testing.assert_close(outputs(folded, x), outputs(gm, x), rtol=1e-5, atol=1e-5)
    return folded


@pytest.mark.parametrize("cin, cout, stride, groups", [
    (8, 8, 1, 1), (8, 16, 1, 1), (8, 8, 2, 1), (8, 8, 1, 4), (8, 8, 1, 8),
])
def test_traced_block_with_other_names_and_order_folds(cin, cout, stride, groups):
    folded = fold_and_compare(ThreeBranch(cin, cout, stride, groups), torch.randn(2, cin, 9, 9))
    convs = modules_of(folded, nn.Conv2d)
    assert len(convs) == 1 and convs[0].kernel_size == (3, 3) and convs[0].groups == groups
    assert convs[0].stride == (stride, stride)
    assert modules_of(folded, nn.BatchNorm2d) == []
    assert dict(folded.named_children()).keys() == {"reparam"}     # no common prefix: top level


class Asymmetric(nn.Module):
    """ACNet-style branches: 3x3, 1x3 and 3x1 (each + BN), a plain conv with bias, identity, a constant."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.square = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.hor = nn.Sequential(nn.Conv2d(c, c, (1, 3), padding=(0, 1), bias=False), nn.BatchNorm2d(c))
        self.ver = nn.Sequential(nn.Conv2d(c, c, (3, 1), padding=(1, 0), bias=False), nn.BatchNorm2d(c))
        self.plain = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return self.square(x) + self.hor(x) + self.ver(x) + self.plain(x) + x + 0.5


def test_asymmetric_kernels_identity_and_constants_fold():
    folded = fold_and_compare(Asymmetric(6), torch.randn(2, 6, 7, 5))
    (conv,) = modules_of(folded, nn.Conv2d)
    assert conv.kernel_size == (3, 3) and conv.padding == (1, 1)


class Wide(nn.Module):
    """5x5 and 3x3 branches (centred: padding 2 and 1) - the fused kernel is 5x5."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(c, c, 5, padding=2, bias=False), nn.BatchNorm2d(c))
        self.b = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return self.a(x) + self.b(x)


def test_larger_kernels_and_conv1d_fold():
    folded = fold_and_compare(Wide(4), torch.randn(1, 4, 8, 8))
    assert [c.kernel_size for c in modules_of(folded, nn.Conv2d)] == [(5, 5)]

    class OneD(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.k3 = nn.Sequential(nn.Conv1d(4, 4, 3, padding=1, bias=False), nn.BatchNorm1d(4))
            self.k1 = nn.Sequential(nn.Conv1d(4, 4, 1, bias=False), nn.BatchNorm1d(4))
            self.id = nn.BatchNorm1d(4)

        def forward(self, x):
            return self.k3(x) + self.k1(x) + self.id(x)

    folded = fold_and_compare(OneD(), torch.randn(2, 4, 11))
    assert [c.kernel_size for c in modules_of(folded, nn.Conv1d)] == [(3,)]


class WithExtra(nn.Module):
    """Two branches of x plus a conv of relu(x): the branches fold, the other term stays added."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
        self.b = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4))
        self.c = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        z = self.c(torch.relu(x))
        return self.a(x) + z + self.b(x)


def test_other_terms_stay_in_the_sum():
    folded = fold_and_compare(WithExtra(), torch.randn(2, 4, 6, 6))
    # the fused 3x3 plus the untouched conv c, whose output is a separate term of the sum
    assert len(modules_of(folded, nn.Conv2d)) == 2 and modules_of(folded, nn.BatchNorm2d) == []


class Unfoldable(nn.Module):
    """Sums the pass must leave alone: branches of different inputs, a dilated conv, a sliced term."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.s2 = nn.Conv2d(4, 4, 1)
        self.dil = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
        self.off = nn.Conv2d(4, 4, 3, padding=0)
        self.off1 = nn.Conv2d(4, 4, 1, padding=0)

    def forward(self, x, y):
        u = self.a(x) + self.b(y)                  # branches of different inputs
        v = self.dil(u) + self.s2(u)               # a dilated conv
        w = self.off(v) + self.off1(v)[:, :, 1:-1, 1:-1]     # a slice of a conv is not a branch
        return w


def test_sums_that_are_not_parallel_branches_are_left_alone():
    gm = fx.symbolic_trace(randomize(Unfoldable()))
    assert find_branch_sums(gm) == []
    folded = reparameterize(gm)
    assert len(modules_of(folded, nn.Conv2d)) == len(modules_of(gm, nn.Conv2d))
    x, y = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x, y), gm(x, y))


class Shared(nn.Module):
    """A branch BN whose output is also used elsewhere: folded into the sum, but kept for its other use."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
        self.b = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4))

    def forward(self, x):
        p = self.a(x)
        return (p + self.b(x)) * torch.sigmoid(p)


def test_values_used_elsewhere_are_kept():
    folded = fold_and_compare(Shared(), torch.randn(2, 4, 5, 5))
    assert len(modules_of(folded, nn.BatchNorm2d)) == 1      # the shared BN still feeds the gate


def test_fold_single_folds_every_conv_bn_of_mobilenet_v2():
    """fold_single=True is ordinary conv-BN folding: MobileNetV2 keeps its outputs and loses every BN."""
    gm = randomize(nasforge.load(MOBILENET_V2, image_size=64).build())
    assert find_branch_sums(gm) == []        # its sums add a branch to the block input, not parallel branches
    folded = reparameterize(gm, fold_single=True)
    assert modules_of(folded, nn.BatchNorm2d) == []
    bn_params = sum(params_of(m) for m in modules_of(gm, nn.BatchNorm2d))
    convs = modules_of(gm, nn.Conv2d)
    assert params_of(folded) == params_of(gm) - bn_params + sum(c.out_channels for c in convs if c.bias is None)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(outputs(folded, x), outputs(gm, x), rtol=1e-4, atol=1e-5)
