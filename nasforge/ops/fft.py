"""Long convolutions by FFT: ``fft_conv``, the causal convolution of a sequence with a kernel as long as itself.

State-space layers (S4, S4D) and Hyena apply one learned (or generated) filter per channel whose length is
the whole sequence; a direct convolution would cost ``O(L^2)`` per channel, the FFT form ``O(L log L)``.
``fft_conv`` zero-pads both signals to ``2L`` (so the circular convolution of the FFT is the linear one),
multiplies their real FFTs and keeps the first ``L`` outputs of the inverse transform: output ``t`` sees
inputs ``0..t`` only (causal), exactly as S4D's ``S4D.forward`` and safari's ``fftconv_ref`` compute it.

Backends whose importers have no FFT (TVM 0.27 converts no ``aten._fft_*`` and has no complex tensors; the
TorchScript ONNX exporter exports no ``fft_rfft`` at opset 18) export the same convolution computed directly
(:func:`computed_directly`): a depthwise ``conv1d`` with the flipped kernel, ``O(L * Lk)`` per channel instead of
``O(L log L)``. Correct at every length, slower at long ones; the backend's compile notes say so.

Complex numbers stay inside the op: inputs and outputs are real, so the IR needs no complex dtype (there
are no standalone ``rfft``/``irfft`` ops for that reason).

Cost convention: MACs are 0. torch's FlopCounterMode counts no FFT kernels, and an FFT is not a
multiply-accumulate of the kind MACs count (convolutions, linear layers, matmuls). FLOPs estimate the
transforms: ``2.5 n log2 n`` real FLOPs per real FFT of size ``n = 2L`` (half the classic ``5 n log2 n`` of a
complex one), three transforms (signal, kernel, inverse), 6 FLOPs per complex product, plus 2 per element
for the skip term.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch
import torch.nn.functional as F

from nasforge.ops.registry import Attr, Example, OpContext, OpDef, nn, register
from nasforge.types import TensorType

FFT_DTYPES = ("float32", "float64")
"""Dtypes the CPU FFT (pocketfft) supports for every length; half precision is power-of-two-only on CUDA."""

LONG_CONV = "long_conv"
"""The attribute that marks a module computing a long convolution (True): what :func:`direct_note` counts."""

_DIRECT: ContextVar[tuple[torch.dtype, ...]] = ContextVar("nasforge_direct_long_conv", default=())
"""The dtypes whose long convolutions are computed directly in this context (:func:`computed_directly`)."""


def causal_fft_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal convolution ``y[..., c, t] = sum_{s<=t} k[c, s] * u[..., c, t - s]`` via FFTs of size ``2L``.

    ``u`` is ``[..., C, L]``, ``k`` is ``[C, Lk]`` with ``Lk <= L`` (zero-padded to ``2L`` like ``u``).
    """
    length = u.shape[-1]
    n = 2 * length
    k_f = torch.fft.rfft(k, n=n)
    u_f = torch.fft.rfft(u, n=n)
    return torch.fft.irfft(u_f * k_f, n=n)[..., :length]


def causal_direct_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """:func:`causal_fft_conv` computed directly, for exporters without an FFT: ``u`` left-padded by ``Lk - 1``
    and convolved depthwise with the flipped kernel (``conv1d`` cross-correlates), so output ``t`` is
    ``sum_s k[c, s] u[c, t - s]`` over ``s <= min(t, Lk - 1)``. The kernel takes the signal's dtype, as the
    FFT's type promotion gives it."""
    channels, length = u.shape[-2:]
    rows = u.reshape(-1, channels, length)
    weight = k.to(u.dtype).flip(-1).unsqueeze(1)
    return F.conv1d(F.pad(rows, (k.shape[-1] - 1, 0)), weight, groups=channels).reshape(u.shape)


def causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The causal long convolution: by FFT, or directly inside :func:`computed_directly` for its dtypes."""
    return causal_direct_conv(u, k) if u.dtype in _DIRECT.get() else causal_fft_conv(u, k)


torch.fx.wrap("causal_conv")  # traced as one call (constant folding traces op modules): decided when it runs


@contextmanager
def computed_directly(dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)) -> Iterator[None]:
    """Within the block the long convolutions (``fft_conv``, ``s4d`` in conv mode) of the given dtypes are
    computed directly (:func:`causal_direct_conv`), in this thread only; the others stay FFTs.

    For exports to backends without an FFT: the export traces a convolution its importer converts, and the
    module the user holds keeps computing by FFT everywhere else. ``dtypes`` leaves out what the backend
    cannot run directly either (ONNX Runtime has no float64 ``Conv``: there the exporter's refusal of the FFT
    names the op).
    """
    token = _DIRECT.set(tuple(dtypes))
    try:
        yield
    finally:
        _DIRECT.reset(token)


def direct_note(module: nn.Module, backend: str) -> str | None:
    """The compile note of a backend that exports ``module`` under :func:`computed_directly` (None when
    ``module`` has no long convolution)."""
    count = 0
    for m in module.modules():
        if getattr(m, LONG_CONV, False) is True:
            count += 1
        elif isinstance(m, torch.fx.GraphModule):  # an op module constant folding traced: its calls count
            count += sum(n.op == "call_function" and n.target is causal_conv for n in m.graph.nodes)
    return (f"{count} long convolution{'s' if count != 1 else ''} (fft_conv, s4d) computed directly, O(L x kernel "
            f"length) per channel instead of by FFT: {backend} has no FFT") if count else None


def fft_flops(rows: int, length: int) -> int:
    """The estimated FLOPs of :func:`causal_fft_conv` over ``rows`` signals of length ``length`` (one
    kernel transform per channel is included by the caller)."""
    n = 2 * length
    return int(2.5 * n * math.log2(n)) * rows


class FFTConv(nn.Module):
    """:func:`causal_fft_conv` of ``u [..., C, L]`` with ``k [C, Lk]``, plus ``u * D`` with ``skip``
    (S4's and Hyena's ``D`` term, a learned per-channel skip connection; safari names it the filter's bias)."""

    long_conv = True
    """A long convolution (:data:`LONG_CONV`)."""

    def __init__(self, channels: int, skip: bool = False) -> None:
        super().__init__()
        self.D = nn.Parameter(torch.randn(channels)) if skip else None

    def forward(self, u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        y = causal_conv(u, k)
        if self.D is not None:
            y = y + u * self.D.unsqueeze(-1)
        return y

    def extra_repr(self) -> str:
        return f"skip={self.D is not None}"


@register
class FFTConvOp(OpDef):
    """Causal long convolution of ``u [..., C, L]`` with a per-channel kernel ``k [C, Lk]`` (``Lk <= L``),
    computed with real FFTs of size ``2L``: ``y[..., c, t] = sum_{s <= t} k[c, s] u[..., c, t - s]``.

    The kernel is an input (an S4D kernel, a Hyena implicit filter), not a parameter. ``skip: true`` adds
    ``u * D`` with a learned ``D [C]`` (the state-space skip term; safari's filter ``bias``). Output: the type
    of ``u``. Inputs are float32 or float64. MACs 0 (FFTs are not multiply-accumulates in nasforge's sense,
    and torch's FlopCounterMode counts none); FLOPs estimate the three transforms (see the module doc).
    """

    name = "fft_conv"
    category = "sequence"
    arity = (2, 2)
    attrs = (Attr("skip", "bool", False, "add u * D with a learned per-channel D"),)
    examples = (
        Example({}, [(2, 3, 8), (3, 8)]),
        Example({"skip": True}, [(2, 4, 7), (4, 5)]),
        Example({}, [(2, 2, 3, 6), (3, 6)]),
        Example({"skip": True}, [((2, 3, 5), "float64"), ((3, 5), "float64")]),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        u, k = ctx.inputs
        for t, role in ((u, "signal"), (k, "kernel")):
            if t.dtype not in FFT_DTYPES:
                raise ctx.fail(f"fft_conv needs a float32 or float64 {role}", expected="float32 or float64",
                               found=f"{t} ({t.dtype})")
        if u.rank < 2:
            raise ctx.fail("fft_conv needs a signal with a channel and a sequence axis", expected="[..., C, L]",
                           found=str(u))
        if k.rank != 2:
            raise ctx.fail("fft_conv needs one kernel per channel", expected="a kernel [C, L]", found=str(k))
        if k.dtype != u.dtype:
            raise ctx.fail("signal and kernel need one dtype", expected=u.dtype, found=k.dtype)
        channels, length = u.shape[-2:]
        if not isinstance(channels, int) or not isinstance(length, int):
            raise ctx.fail("fft_conv needs static channel and sequence axes", expected="[..., C, L] with integer C, L",
                           found=str(u))
        if k.shape[0] != channels:
            raise ctx.fail("the kernel needs one row per channel of the signal", expected=f"a kernel [{channels}, L]",
                           found=f"signal {u}, kernel {k}")
        if not isinstance(k.shape[1], int) or k.shape[1] > length:
            raise ctx.fail("the kernel may not be longer than the signal", expected=f"a kernel [{channels}, <= {length}]",
                           found=f"signal {u}, kernel {k}")
        return [u]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        return {"D": (ctx.x.shape[-2],)} if ctx["skip"] else {}

    def flops(self, ctx: OpContext) -> int:
        shape = ctx.x.concrete_shape()
        channels, length = shape[-2:]
        rows = math.prod(shape[:-1])
        products = 6 * (length + 1) * rows
        skip = 2 * math.prod(shape) if ctx["skip"] else 0
        return fft_flops(2 * rows + channels, length) + products + skip

    def lower(self, ctx: OpContext) -> nn.Module:
        return FFTConv(ctx.x.shape[-2], ctx["skip"])


def require_fft_dtype(ctx: OpContext, t: TensorType, what: str) -> None:
    """Fail unless ``t`` is float32/float64 (what the FFT of every length supports)."""
    if t.dtype not in FFT_DTYPES:
        raise ctx.fail(f"{what} must be float32 or float64 (FFT)", expected="float32 or float64",
                       found=f"{t} ({t.dtype})")


__all__ = ["causal_conv", "causal_direct_conv", "causal_fft_conv", "computed_directly", "direct_note", "fft_flops",
           "FFTConv", "FFTConvOp", "FFT_DTYPES", "LONG_CONV", "require_fft_dtype"]
