"""The op vocabulary. Importing this package registers every built-in op (one module per family)."""

from nasforge.ops import (  # noqa: F401  (imported for their registrations)
    activation,
    attention,
    basic,
    conditioning,
    conv,
    crop,
    elementwise,
    embedding,
    fft,
    linear,
    lrn,
    masking,
    norm,
    pooling,
    quantization,
    quantize,
    recurrent,
    reduction,
    regularization,
    resize,
    routing,
    rope,
    shuffle,
    ssm,
    tensor,
    text,
    weight_norm,
    window,
    xca,
)
from nasforge.ops.registry import Attr, Call, Example, OpContext, OpDef, all_ops, get_op, register

__all__ = ["Attr", "Call", "Example", "OpContext", "OpDef", "all_ops", "get_op", "register"]
