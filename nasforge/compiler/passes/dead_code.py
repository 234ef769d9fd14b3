"""Dead-node removal: nodes whose results nothing uses, and the submodules and tensors only they used.

A spec may compute values no output needs (an auxiliary head, the unused half of a ``chunk``), and the
other passes leave producers behind. A node is dead when it has no users and no side effect: placeholders
(the module's signature), the output, random ops, calls fx knows to have side effects and in-place
methods (``x.add_(y)``, whose result may go unused while the mutation matters) always stay. Then every
submodule no ``call_module`` node calls and every parameter or buffer nothing reads is deleted, so
``state_dict`` and the artifact hold only what the network computes with.
"""

from __future__ import annotations

from torch import fx

from nasforge.compiler.passes.common import finish, has_side_effect, remove_unused_attributes


def eliminate_dead_code(gm: fx.GraphModule) -> dict[str, int]:
    """Remove dead nodes, then unused submodules, parameters and buffers, from ``gm`` in place; counts."""
    before = len(gm.graph.nodes)
    gm.graph.eliminate_dead_code(is_impure_node=has_side_effect)
    nodes = before - len(gm.graph.nodes)
    modules, tensors = remove_unused_attributes(gm)
    finish(gm)
    return {"nodes": nodes, "modules": modules, "tensors": tensors}
