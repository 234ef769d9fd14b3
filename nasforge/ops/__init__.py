"""The op vocabulary. Importing this package registers every built-in op (one module per family)."""

from nasforge.ops import (  # noqa: F401  (imported for their registrations)
    activation,
    attention,
    basic,
    conv,
    crop,
    elementwise,
    embedding,
    linear,
    norm,
    pooling,
    reduction,
    regularization,
    resize,
    tensor,
    window,
    xca,
)
from nasforge.ops.registry import Attr, Call, Example, OpContext, OpDef, all_ops, get_op, register

__all__ = ["Attr", "Call", "Example", "OpContext", "OpDef", "all_ops", "get_op", "register"]
