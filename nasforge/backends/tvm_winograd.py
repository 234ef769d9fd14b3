"""Winograd 3x3 convolutions for TVM's CPU code (a Relax pass run before legalization); off unless asked
(``--option winograd=true``).

Winograd's F(m x m, 3 x 3) computes an m x m output tile from an (m+2) x (m+2) input tile with (m+2)^2
multiplies per channel pair instead of 9 m^2: 4x fewer for TOPI's m = 4. TOPI has the algorithm and
MetaSchedule has schedule rules for its data-pack and inverse stages; Relax's legalization never picks it, so
this pass does. The weight transform ``G w G^T`` depends on the weights alone, so ``LiftTransformParams`` moves
it into the function run once when the weights load; each call runs the data transform, a batch of (m+2)^2
GEMMs and the inverse transform.

Why it is off by default: the transformed weights are (m+2)^2 / 9 = 4x larger, and at batch 1 a network reads
each weight once per call. Tuned and timed alone, ResNet-50's 14x14 3x3 convolution ran 0.40 ms against 0.76
for the tuned direct one (its 9.4 MB of transformed weights stay in the 32 MB L3 between calls); inside the
network, where every layer's weights come from memory, it ran 1.19 ms against 0.98 and the network got
slower (docs/performance.md). Larger batches read the weights once for more images; that case is not
measured here, so the option is the user's call.
"""

from __future__ import annotations

from typing import Any

MIN_OUTPUT_SIDE = 14
"""Smallest output height/width rewritten. ResNet-50's 7x7 stage has 4 tiles of 4x4 per image and 36 x 512 x 512
transformed weights (38 MB): a memory-bound batch of thin GEMMs."""

MAX_OUTPUT_SIDE = 27
"""Largest output height/width rewritten: on wide outputs the direct convolution fills whole vector registers
along the width and wins. Measured on this project's 2-core Zen 5 host, conv 3x3 + bias + ReLU alone, batch 1,
both tuned (Winograd 160 trials): 256 channels at 14x14 ran 0.40 ms against 0.76 direct; 128 at 28x28 0.76
against 0.78 (a tie, not worth the 4x weights); 64 at 56x56 0.93 (128 trials, BatchNorm not folded)
against 0.78."""

TILE = 4
"""Output tile side m of F(m x m, 3 x 3), the one TOPI's NCHW Winograd convolution uses: 4x fewer multiplies."""

ATTR = "nasforge.winograd"
"""Module attribute where the pass leaves its counts for :func:`summary`."""


def eligible(attrs: Any, data_shape: tuple[int, ...], weight_shape: tuple[int, ...], dtype: str) -> bool:
    """A float32 NCHW/OIHW 3x3 convolution with stride 1, dilation 1, one group, static shapes and an output
    between :data:`MIN_OUTPUT_SIDE` and :data:`MAX_OUTPUT_SIDE` on each side."""
    if dtype != "float32" or len(data_shape) != 4 or len(weight_shape) != 4:
        return False
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
        return False
    if tuple(int(s) for s in attrs.strides) != (1, 1) or tuple(int(d) for d in attrs.dilation) != (1, 1):
        return False
    if int(attrs.groups) != 1 or tuple(weight_shape[2:]) != (3, 3):
        return False
    top, left, bottom, right = (int(p) for p in attrs.padding)
    out_h = data_shape[2] + top + bottom - 2
    out_w = data_shape[3] + left + right - 2
    return MIN_OUTPUT_SIDE <= min(out_h, out_w) and max(out_h, out_w) <= MAX_OUTPUT_SIDE


def winograd_pass() -> Any:
    """A module pass replacing each :func:`eligible` ``relax.nn.conv2d`` by a weight transform (to
    ``(m+2, m+2, in, out)``, lifted out with the other weight-only work) and TOPI's Winograd convolution."""
    import tvm
    from tvm import te, topi
    from tvm.relax import PyExprMutator, expr_functor
    from tvm.topi.nn.winograd_util import winograd_transform_matrices

    from nasforge.backends.tvm_fastmath import rewrite_relax_functions

    def te_weight_pack(weight: Any) -> Any:
        out_ch, in_ch, kh, kw = (int(s) for s in weight.shape)
        alpha = TILE + kh - 1
        _, _, g = winograd_transform_matrices(TILE, kh, str(weight.dtype))
        r_h = te.reduce_axis((0, kh), name="r_h")
        r_w = te.reduce_axis((0, kw), name="r_w")
        return te.compute((alpha, alpha, in_ch, out_ch),
                          lambda eps, nu, ci, co: te.sum(weight[co, ci, r_h, r_w] * g[eps, r_h] * g[nu, r_w],
                                                         axis=[r_h, r_w]),
                          name="winograd_weight")

    def static_shape(expr: Any) -> tuple[int, ...] | None:
        shape = getattr(expr.ty, "shape", None)
        if shape is None or not hasattr(shape, "values"):
            return None
        if not all(isinstance(s, tvm.tirx.IntImm) for s in shape.values):
            return None
        return tuple(int(s) for s in shape.values)

    @expr_functor.mutator
    class Winograd(PyExprMutator):  # type: ignore[misc]
        convolutions = 0
        rewritten = 0

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
                return call
            self.convolutions += 1
            data, weight = call.args
            data_shape, weight_shape = static_shape(data), static_shape(weight)
            dtype = str(getattr(data.ty, "dtype", ""))
            if data_shape is None or weight_shape is None or str(getattr(weight.ty, "dtype", "")) != dtype \
                    or str(call.attrs.out_dtype or dtype) != dtype \
                    or not eligible(call.attrs, data_shape, weight_shape, dtype):
                return call
            self.rewritten += 1
            packed = self.builder_.emit(self.builder_.call_te(te_weight_pack, weight,
                                                              primfunc_name_hint="winograd_weight"))
            return self.builder_.call_te(topi.nn.conv2d_winograd_nchw_without_weight_transform, data, packed,
                                         strides=(1, 1), padding=[int(p) for p in call.attrs.padding],
                                         dilation=(1, 1), out_dtype=dtype, primfunc_name_hint="conv2d_winograd")

    @tvm.transform.module_pass(opt_level=0, name="Winograd")
    def winograd(mod: Any, _ctx: Any) -> Any:
        mutator = Winograd(mod)
        return rewrite_relax_functions(mutator, mod).with_attr(ATTR, {"rewritten": mutator.rewritten,
                                                                      "convolutions": mutator.convolutions})

    return winograd


def summary(lowered: Any) -> str | None:
    """What the pass did to a lowered module, in words (None when it did not run)."""
    counts = (lowered.attrs or {}).get(ATTR) if lowered.attrs is not None else None
    if counts is None:
        return None
    return (f"winograd: {int(counts['rewritten'])} of {int(counts['convolutions'])} convolutions computed with "
            f"Winograd F({TILE}x{TILE}, 3x3) (3x3, stride 1, output {MIN_OUTPUT_SIDE} to {MAX_OUTPUT_SIDE} wide)")
