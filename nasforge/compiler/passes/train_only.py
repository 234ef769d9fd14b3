"""Remove what only acts in training: dropout variants, drop-path, and ops that are the identity.

In eval mode these compute ``y = x``, yet each still costs a call in eager mode and a node every backend
has to import. A node goes when it is

* a ``call_module`` of an op the registry marks ``train_only`` (``dropout``, ``drop_path``; read from the
  fx builder's ``meta["nasforge_op"]``), or of a module that is one of them whatever built the graph
  (``nn.Dropout`` and its 1d/2d/3d/alpha variants, nasforge's ``DropPath``, ``nn.Identity``);
* a ``call_function`` of a functional dropout (``F.dropout*``, ``F.alpha_dropout``, ``torch.dropout``...)
  whose ``training`` flag is literally ``False`` or whose ``p`` is literally 0. ``F.dropout`` defaults to
  ``training=True`` and then drops even in eval mode, so a call without the flag is left alone.

Dropout modules *inside* a composite op (an attention module's ``proj_drop``) are swapped for
``nn.Identity`` in place, so the module's own code stays as it is.

The graph is in eval mode afterwards: training it again would silently train without dropout.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.dropout import _DropoutNd

from nasforge.compiler.passes.common import finish, module_of, replace_node
from nasforge.ops.regularization import DropPath
from nasforge.ops.registry import all_ops

_DROP_MODULES = (_DropoutNd, DropPath)
_IDENTITY_MODULES = (*_DROP_MODULES, nn.Identity)

_DROPOUT_FUNCTIONS: dict[Any, bool] = {
    F.dropout: True, F.dropout1d: True, F.dropout2d: True, F.dropout3d: True,
    F.alpha_dropout: False, F.feature_alpha_dropout: False,
    torch.dropout: True, torch.alpha_dropout: True, torch.feature_dropout: True, torch.feature_alpha_dropout: True,
}
"""Functional dropouts and the ``training`` value each assumes when the call does not pass one (torch's
own ``torch.dropout`` family has no default: the flag is required there)."""


def _argument(node: fx.Node, position: int, names: tuple[str, ...], default: Any) -> Any:
    for name in names:
        if name in node.kwargs:
            return node.kwargs[name]
    return node.args[position] if len(node.args) > position else default


def _is_identity_call(gm: fx.GraphModule, node: fx.Node, train_only_ops: set[str]) -> str | None:
    """What kind of eval-time identity ``node`` is (for the report), or None."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return None
    if node.op == "call_module":
        module = module_of(gm, node)
        if len(node.args) != 1 or node.kwargs:
            return None
        if node.meta.get("nasforge_op") in train_only_ops or isinstance(module, _DROP_MODULES):
            return "drop_path" if isinstance(module, DropPath) else "dropout"
        return "identity" if isinstance(module, nn.Identity) else None
    if node.op == "call_function" and node.target in _DROPOUT_FUNCTIONS:
        training = _argument(node, 2, ("training", "train"), _DROPOUT_FUNCTIONS[node.target])
        p = _argument(node, 1, ("p",), 0.5)
        return "dropout" if training is False or (isinstance(p, (int, float)) and p == 0) else None
    return None


def remove_train_only(gm: fx.GraphModule) -> dict[str, int]:
    """Remove eval-time identities from ``gm`` in place (see the module docstring); counts by kind."""
    gm.eval()
    train_only_ops = {name for name, op in all_ops().items() if op.train_only}
    counts = {"dropout": 0, "drop_path": 0, "identity": 0, "nested": 0}
    for node in list(gm.graph.nodes):
        kind = _is_identity_call(gm, node, train_only_ops)
        if kind is not None:
            replace_node(node, node.args[0])
            counts[kind] += 1
    for node in gm.graph.nodes:
        module = module_of(gm, node)
        if module is None or isinstance(module, _IDENTITY_MODULES):
            continue
        for name, child in list(module.named_modules()):
            if name and isinstance(child, _DROP_MODULES):
                parent, _, leaf = name.rpartition(".")
                setattr(module.get_submodule(parent), leaf, nn.Identity())
                counts["nested"] += 1
    finish(gm)
    return counts
