"""Structural re-parameterization: fold parallel linear branches into one convolution.

RepVGG (Ding et al., CVPR 2021) trains blocks of the form ``BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x)``
and deploys each as a single ``conv3x3(x) + bias``: in inference a BatchNorm is an affine map per
channel, a 1x1 kernel is a 3x3 kernel that is zero off the centre, and the identity is a 1x1 kernel
that is one on the diagonal, so the sum of the branches is one convolution.

:func:`reparameterize` finds that pattern in any ``torch.fx.GraphModule`` - nasforge's or one traced
from other code - from the graph's structure alone, never from node or module names:

* a **sum**: a tree of additions (``operator.add``, ``torch.add``, ``Tensor.add``) whose leaves are
* **branches over one input** ``x``, each of them ``conv(x)``, ``bn(conv(x))``, ``bn(x)`` or ``x`` itself,
  where ``conv`` is a zero-padded, undilated ``nn.Conv1d/2d/3d`` and ``bn`` a BatchNorm with running
  statistics; plain numbers in the sum join the bias. The convolutions must share input/output channels,
  stride and groups, have odd kernels and the same centre (``padding - kernel // 2`` per axis), so that
  their outputs line up; an identity branch needs stride 1, as many outputs as inputs and centre 0.

Each sum with at least one convolution among two or more such branches becomes one convolution whose
kernel is the largest branch kernel (3x3 for RepVGG) and whose bias collects every BN shift and bias;
leaves of the sum that are not branches of that input (another tensor, a broadcast bias) stay added to
it. Intermediate results used elsewhere are never folded. With ``fold_single=True`` a lone
``bn(conv(x))`` outside any sum is folded too (ordinary conv-BN folding).

The folded network computes the same function as the original *in eval mode* (BatchNorm with its running
statistics); the result is returned in eval mode. Arithmetic is done in float64 and cast back to the
convolution's dtype.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["Branch", "BranchSum", "find_branch_sums", "reparameterize"]

_ADD_FUNCTIONS = (operator.add, torch.add)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class Branch:
    """One linear branch of a sum: ``bn(conv(x))`` with either part optional (neither: ``x`` itself)."""

    leaf: fx.Node                    # the value added into the sum
    conv: fx.Node | None = None      # call_module node of an nn.ConvNd, input x
    bn: fx.Node | None = None        # call_module node of a BatchNorm, input conv (or x)


@dataclass
class BranchSum:
    """A foldable sum: its root addition, the shared input, the branches and what else is added."""

    root: fx.Node
    input: fx.Node
    branches: list[Branch]
    adds: list[fx.Node]                                   # the addition nodes of the tree, root last
    constants: list[float] = field(default_factory=list)  # numbers added in the tree
    others: list[fx.Node] = field(default_factory=list)   # tensors added that are not branches of input

    @property
    def nodes(self) -> list[fx.Node]:
        """Every node the fold replaces (additions and branch modules)."""
        inner = [n for b in self.branches for n in (b.bn, b.conv) if n is not None]
        return [*self.adds, *inner]


def _module(gm: fx.GraphModule, node: Any) -> nn.Module | None:
    if isinstance(node, fx.Node) and node.op == "call_module":
        return gm.get_submodule(str(node.target))
    return None


def _is_add(node: Any) -> bool:
    if not isinstance(node, fx.Node) or node.kwargs.get("alpha", 1) != 1 or len(node.args) != 2:
        return False
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        return set(node.kwargs) <= {"alpha"}
    return node.op == "call_method" and node.target == "add" and set(node.kwargs) <= {"alpha"}


def _only_user(node: fx.Node, user: fx.Node) -> bool:
    return list(node.users) == [user]


def _foldable_conv(module: nn.Module | None) -> bool:
    return (isinstance(module, _CONVS) and module.padding_mode == "zeros" and not isinstance(module.padding, str)
            and all(d == 1 for d in module.dilation) and all(k % 2 == 1 for k in module.kernel_size))


def _foldable_bn(module: nn.Module | None) -> bool:
    return isinstance(module, _BatchNorm) and module.running_mean is not None and module.running_var is not None


def _readings(gm: fx.GraphModule, leaf: fx.Node) -> list[tuple[fx.Node, Branch]]:
    """The ways ``leaf`` can be read as a branch, deepest first, each with the input it starts from."""
    out: list[tuple[fx.Node, Branch]] = []
    inner, bn = leaf, None
    if _foldable_bn(_module(gm, leaf)) and len(leaf.args) == 1 and isinstance(leaf.args[0], fx.Node):
        bn, inner = leaf, leaf.args[0]
        if (_foldable_conv(_module(gm, inner)) and _only_user(inner, leaf) and len(inner.args) == 1
                and isinstance(inner.args[0], fx.Node)):
            out.append((inner.args[0], Branch(leaf, conv=inner, bn=bn)))
        out.append((inner, Branch(leaf, bn=bn)))
    elif _foldable_conv(_module(gm, leaf)) and len(leaf.args) == 1 and isinstance(leaf.args[0], fx.Node):
        out.append((leaf.args[0], Branch(leaf, conv=leaf)))
    out.append((leaf, Branch(leaf)))
    return out


def _sum_tree(root: fx.Node) -> tuple[list[fx.Node], list[Any]]:
    """The addition nodes of the tree rooted at ``root`` (root last) and its leaves, left to right."""
    adds: list[fx.Node] = []
    leaves: list[Any] = []

    def walk(node: Any, parent: fx.Node | None) -> None:
        if _is_add(node) and (parent is None or _only_user(node, parent)):
            for arg in node.args:
                walk(arg, node)
            adds.append(node)
        else:
            leaves.append(node)

    walk(root, None)
    return adds, leaves


def _geometry(gm: fx.GraphModule, branch: Branch, channels: int) -> tuple | None:
    """(in, out, stride, groups, centre) of a branch; None where it cannot take part."""
    conv = _module(gm, branch.conv)
    if conv is not None:
        centre = tuple(p - k // 2 for p, k in zip(conv.padding, conv.kernel_size))
        geo = (conv.in_channels, conv.out_channels, tuple(conv.stride), conv.groups, centre)
    else:
        geo = (channels, channels, None, None, None)   # identity: checked against the convs below
    bn = _module(gm, branch.bn)
    if bn is not None and bn.num_features != geo[1]:
        return None
    return geo


def _match(gm: fx.GraphModule, adds: list[fx.Node], leaves: list[Any]) -> BranchSum | None:
    nodes = [leaf for leaf in leaves if isinstance(leaf, fx.Node)]
    constants = [leaf for leaf in leaves if isinstance(leaf, (int, float)) and not isinstance(leaf, bool)]
    if len(nodes) + len(constants) != len(leaves):
        return None
    readings = {leaf: _readings(gm, leaf) for leaf in nodes}
    # try each input a convolution branch reads from; prefer the one most branches share
    candidates: dict[fx.Node, int] = {}
    for leaf in nodes:
        for source, branch in readings[leaf]:
            if branch.conv is not None:
                candidates[source] = candidates.get(source, 0) + 1
    for source in sorted(candidates, key=lambda s: -candidates[s]):
        branches, others = [], []
        for leaf in nodes:
            found = next((b for s, b in readings[leaf] if s is source), None)
            (branches if found is not None else others).append(found or leaf)
        convs = [_module(gm, b.conv) for b in branches if b.conv is not None]
        if len(branches) < 2 or not convs:
            continue
        ref = convs[0]
        geos = [_geometry(gm, b, ref.out_channels) for b in branches]
        if any(g is None for g in geos):
            continue
        conv_geos = [g for g, b in zip(geos, branches) if b.conv is not None]
        same = set(conv_geos)
        if len(same) != 1:
            continue
        cin, cout, stride, groups, centre = same.pop()
        has_identity = any(b.conv is None for b in branches)
        if has_identity and (cin != cout or any(s != 1 for s in stride) or any(c != 0 for c in centre)):
            continue
        return BranchSum(adds[-1], source, branches, adds, [float(c) for c in constants], others)
    return None


def find_branch_sums(gm: fx.GraphModule, fold_single: bool = False) -> list[BranchSum]:
    """Every foldable sum of branches in ``gm``, in graph order (see the module docstring)."""
    found: list[BranchSum] = []
    taken: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if not _is_add(node) or node in taken:
            continue
        if any(_is_add(u) and _only_user(node, u) for u in node.users):
            continue                                   # not a root: its parent addition covers it
        adds, leaves = _sum_tree(node)
        match = _match(gm, adds, leaves)
        if match is not None:
            found.append(match)
            taken.update(match.nodes)
    if fold_single:
        for node in gm.graph.nodes:
            if node in taken:
                continue
            readings = _readings(gm, node)
            source, branch = readings[0]
            if branch.conv is not None and branch.bn is not None:
                found.append(BranchSum(node, source, [branch], []))
                taken.update((branch.conv, branch.bn))
    return found


def _fold(gm: fx.GraphModule, group: BranchSum) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    """The single kernel and bias equal to the sum of the group's branches, and the reference conv."""
    convs = [_module(gm, b.conv) for b in group.branches if b.conv is not None]
    ref = convs[0]
    nd = len(ref.kernel_size)
    size = tuple(max(c.kernel_size[a] for c in convs) for a in range(nd))
    cout, per_group = ref.out_channels, ref.in_channels // ref.groups
    kernel = torch.zeros(cout, per_group, *size, dtype=torch.float64, device=ref.weight.device)
    bias = torch.zeros(cout, dtype=torch.float64, device=ref.weight.device)
    for branch in group.branches:
        conv = _module(gm, branch.conv)
        if conv is not None:
            w = conv.weight.detach().double()
            b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(bias)
            start = [(size[a] - conv.kernel_size[a]) // 2 for a in range(nd)]
        else:   # identity: one at the centre tap, on the diagonal of each group
            w = torch.zeros(cout, per_group, *(1,) * nd, dtype=torch.float64, device=bias.device)
            w[torch.arange(cout), torch.arange(cout) % per_group] = 1.0
            b = torch.zeros_like(bias)
            start = [size[a] // 2 for a in range(nd)]
        bn = _module(gm, branch.bn)
        if bn is not None:
            std = (bn.running_var.detach().double() + bn.eps).sqrt()
            gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(std)
            beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(std)
            scale = gamma / std
            w = w * scale.reshape(-1, *(1,) * (nd + 1))
            b = beta + (b - bn.running_mean.detach().double()) * scale
        window = (slice(None), slice(None), *(slice(s, s + k) for s, k in zip(start, w.shape[2:])))
        kernel[window] += w
        bias += b
    bias += sum(group.constants)
    return kernel, bias, ref


def _fused_name(gm: fx.GraphModule, group: BranchSum, name: str) -> str:
    targets = [str(n.target).split(".") for b in group.branches for n in (b.conv, b.bn) if n is not None]
    prefix: list[str] = []
    for parts in zip(*(t[:-1] for t in targets)):
        if len(set(parts)) != 1:
            break
        prefix.append(parts[0])
    base = ".".join([*prefix, name])
    target, k = base, 1
    existing = dict(gm.named_modules())
    while target in existing:
        target, k = f"{base}_{k}", k + 1
    return target


def reparameterize(gm: fx.GraphModule, name: str = "reparam", fold_single: bool = False,
                   inplace: bool = False) -> fx.GraphModule:
    """Fold every sum of parallel conv / BN / identity branches in ``gm`` into one convolution.

    Returns the folded GraphModule in eval mode (a copy unless ``inplace``). Each fused convolution is a
    submodule named ``name`` under the branches' common module path (RepVGG: ``stage1.0.<name>``; pass
    ``name="rbr_reparam"`` for the authors' deploy state_dict keys); the modules it replaces are removed.
    """
    if not inplace:
        gm = copy.deepcopy(gm)
    gm.eval()
    groups = find_branch_sums(gm, fold_single=fold_single)
    graph = gm.graph
    replaced: dict[fx.Node, fx.Node] = {}      # a folded sum's root -> what now computes it
    for group in groups:
        kernel, bias, ref = _fold(gm, group)
        nd = kernel.dim() - 2
        size = tuple(kernel.shape[2:])
        centre = tuple(p - k // 2 for p, k in zip(ref.padding, ref.kernel_size))
        fused = type(ref)(ref.in_channels, ref.out_channels, size, stride=ref.stride,
                          padding=tuple(c + k // 2 for c, k in zip(centre, size)), groups=ref.groups, bias=True,
                          device=ref.weight.device, dtype=ref.weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(kernel.to(ref.weight.dtype))
            fused.bias.copy_(bias.to(ref.weight.dtype))
        target = _fused_name(gm, group, name)
        gm.add_submodule(target, fused)
        root, source = group.root, group.input
        while source in replaced:             # the input is itself a sum folded earlier
            source = replaced[source]
        others = [replaced.get(o, o) for o in group.others]
        with graph.inserting_before(root):
            new = graph.call_module(target, (source,))
            result = new
            for other in others:
                result = graph.call_function(operator.add, (result, other))
        new.meta.update({k: v for k, v in root.meta.items() if k.startswith("nasforge_type")})
        new.meta["nasforge_path"] = target
        new.meta["nasforge_op"] = new.meta.get("nasforge_op", "conv2d" if nd == 2 else f"conv{nd}d")
        for k in ("tensor_meta", "val"):
            if k in root.meta:
                new.meta[k] = root.meta[k]
        root.replace_all_uses_with(result)
        replaced[root] = result
        for node in reversed(list(graph.nodes)):
            if node in group.nodes and not node.users:
                graph.erase_node(node)
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
