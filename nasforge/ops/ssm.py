"""State-space and implicit long-convolution layers: ``s4d``, ``selective_scan`` and ``hyena_filter``.

* ``s4d`` is the diagonal state-space layer of S4D (Gu et al., NeurIPS 2022) as state-spaces/s4's
  ``models/s4/s4d.py``: per channel ``h`` a diagonal complex SSM with ``N/2`` modes (conjugate pairs, hence
  the factor 2 and the real part), ZOH-discretized with a learned step ``dt = exp(log_dt)``. Two equivalent
  forms: ``conv`` builds the kernel ``K[h, l] = 2 Re(sum_n C'[h,n] exp(dt A[h,n] l))`` with
  ``C' = C (exp(dt A) - 1) / A`` and applies it with :func:`~nasforge.ops.fft.causal_conv` (by FFT; directly
  in an export for a backend without an FFT);
  ``recurrent`` runs ``x_l = exp(dt A) x_{l-1} + u_l``, ``y_l = 2 Re(C' x_l)`` step by step. Both add ``D u``.
* ``selective_scan`` is Mamba's S6 (Gu & Dao, 2023) as ``mamba_ssm.ops.selective_scan_interface.
  selective_scan_ref``: input-dependent ``delta``, ``B``, ``C``; ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t
  u_t``, ``y_t = C_t h_t + D u_t``, gated by ``SiLU(z)``. ``sequential`` loops over time; ``parallel`` is a
  work-efficient associative (Blelloch) scan of the pairs ``(exp(delta A), delta B u)`` with ``log2 L``
  levels of whole-tensor operations, which ``torch.export`` traces into a graph of ``O(log L)`` nodes.
* ``hyena_filter`` is safari's ``HyenaFilter`` (Poli et al., ICML 2023): an implicit long filter, a small
  FFN with sine activations over positional features, times an exponentially decaying window.

Complex arithmetic is written out in real and imaginary parts, so exported graphs hold real tensors only
(the FFT inside ``s4d``'s ``conv`` form is the exception, see ``backend_limits``).

Cost convention: MACs are what torch's FlopCounterMode counts, as for the other families (contractions
are einsums): ``s4d``'s kernel (Vandermonde) contraction ``H * N * L`` (``conv``; computed once per call,
independent of the batch) or its per-step output contraction ``B * H * N * L`` (``recurrent``);
``selective_scan``'s output contraction ``y_t = C_t h_t``, ``B * L * D * N`` in either form (the
discretization and the recurrence are element-wise: FLOPs; Mamba counts the whole scan as ``9 B L D N``
FLOPs); ``hyena_filter``'s FFN linear layers (once per call). FFTs are FLOPs only (see
:mod:`nasforge.ops.fft`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nasforge.errors import SpecError
from nasforge.ops.fft import causal_conv, fft_flops, require_fft_dtype
from nasforge.ops.registry import Attr, Example, OpContext, OpDef, nn, register, require_positive
from nasforge.types import FLOAT_DTYPES, TensorType

torch.fx.wrap("causal_conv")  # as in nasforge.ops.fft: one call in a traced graph, decided when it runs


def _static(ctx: OpContext, t: TensorType, axes: tuple[int, ...], what: str, layout: str) -> None:
    """Fail unless the given axes of ``t`` are integers."""
    if not all(isinstance(t.shape[a], int) for a in axes):
        raise ctx.fail(f"{what} needs static sizes here", expected=layout + " with integer non-batch axes",
                       found=str(t))


# -- S4D -------------------------------------------------------------------------------------------------

S4D_INITS = ("lin", "inv", "real")


def s4d_init(d_state: int, init: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The real and imaginary parts of ``-A`` for the ``N/2`` modes (S4D paper, Section 4; state-spaces/s4's
    ``dplr``): S4D-Lin ``1/2 + i pi n``, S4D-Inv ``1/2 + i (N/pi)(N/(2n+1) - 1)``, S4D-Real ``n + 1``."""
    n = torch.arange(d_state // 2, dtype=torch.float32)
    if init == "real":
        return n + 1, torch.zeros_like(n)
    imag = math.pi * n if init == "lin" else d_state / math.pi * (d_state / (2 * n + 1) - 1)
    return torch.full_like(n, 0.5), imag


class S4DKernel(nn.Module):
    """S4D's kernel parameters, named and initialized as ``S4DKernel`` in state-spaces/s4 (S4D-Lin by default):
    ``log_dt [H]`` log-uniform in ``[dt_min, dt_max]``, ``C [H, N/2, 2]`` (real and imaginary parts, complex
    normal), ``log_A_real [H, N/2] = log 0.5``, ``A_imag [H, N/2] = pi n``; ``init`` picks S4D-Inv or
    S4D-Real instead (:func:`s4d_init`)."""

    def __init__(self, channels: int, d_state: int, dt_min: float = 0.001, dt_max: float = 0.1,
                 init: str = "lin") -> None:
        super().__init__()
        modes = d_state // 2
        real, imag = s4d_init(d_state, init)
        self.log_dt = nn.Parameter(torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.C = nn.Parameter(torch.randn(channels, modes, 2) * math.sqrt(0.5))
        self.log_A_real = nn.Parameter(real.log().repeat(channels, 1))
        self.A_imag = nn.Parameter(imag.repeat(channels, 1))

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``dt A`` (real, imaginary), ``exp(dt A)`` (real, imaginary) and ``C' = C (exp(dt A) - 1) / A``
        (real, imaginary), each ``[H, N/2]``: ZOH with the input matrix ``B`` folded into ``C``."""
        dt = self.log_dt.exp().unsqueeze(-1)
        a_re, a_im = -self.log_A_real.exp(), self.A_imag
        dta_re, dta_im = a_re * dt, a_im * dt
        decay = dta_re.exp()
        e_re, e_im = decay * dta_im.cos(), decay * dta_im.sin()
        # (exp(dtA) - 1) / A = ((e_re - 1) + i e_im) (a_re - i a_im) / |A|^2
        norm = a_re * a_re + a_im * a_im
        b_re = ((e_re - 1) * a_re + e_im * a_im) / norm
        b_im = (e_im * a_re - (e_re - 1) * a_im) / norm
        c_re, c_im = self.C[..., 0], self.C[..., 1]
        return dta_re, dta_im, e_re, e_im, c_re * b_re - c_im * b_im, c_re * b_im + c_im * b_re

    def forward(self, length: int) -> torch.Tensor:
        """The convolution kernel ``K [H, L] = 2 Re(sum_n C'_n exp(dt A_n l))``."""
        dta_re, dta_im, _, _, c_re, c_im = self.discretize()
        steps = torch.arange(length, dtype=dta_re.dtype, device=dta_re.device)
        phase = dta_im.unsqueeze(-1) * steps
        magnitude = (dta_re.unsqueeze(-1) * steps).exp()
        vandermonde = torch.cat([magnitude * phase.cos(), magnitude * phase.sin()], dim=1)   # [H, N, L]
        coefficients = torch.cat([c_re, -c_im], dim=1)                                      # [H, N]
        return 2 * torch.einsum("hn,hnl->hl", coefficients, vandermonde)


class S4D(nn.Module):
    """S4D's state-space layer on ``[B, H, L]`` without its output GELU/linear (those are spec nodes):
    ``y = K * u + D u`` (``conv``) or the same by recurrence (``recurrent``)."""

    def __init__(self, channels: int, d_state: int, mode: str = "conv", dt_min: float = 0.001,
                 dt_max: float = 0.1, init: str = "lin") -> None:
        super().__init__()
        self.mode = mode
        self.D = nn.Parameter(torch.randn(channels))
        self.kernel = S4DKernel(channels, d_state, dt_min, dt_max, init)

    @property
    def long_conv(self) -> bool:
        """Whether this layer convolves by FFT (``conv``); the recurrent mode has no long convolution."""
        return self.mode == "conv"

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if self.mode == "conv":
            y = causal_conv(u, self.kernel(u.shape[-1]))
        else:
            y = self.recurrence(u)
        return y + u * self.D.unsqueeze(-1)

    def recurrence(self, u: torch.Tensor) -> torch.Tensor:
        """``x_l = exp(dt A) x_{l-1} + u_l``, ``y_l = 2 Re(C' x_l)``, one step per position (static loop)."""
        _, _, e_re, e_im, c_re, c_im = self.kernel.discretize()
        coefficients = torch.cat([c_re, -c_im], dim=1)                      # [H, N]
        x_re = u.new_zeros(u.shape[0], *e_re.shape)
        x_im = u.new_zeros(u.shape[0], *e_re.shape)
        outputs = []
        for step in range(u.shape[-1]):
            x_re, x_im = e_re * x_re - e_im * x_im + u[..., step, None], e_re * x_im + e_im * x_re
            outputs.append(2 * torch.einsum("bhn,hn->bh", torch.cat([x_re, x_im], dim=-1), coefficients))
        return torch.stack(outputs, dim=-1)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


@register
class S4DOp(OpDef):
    """S4D diagonal state-space layer (Gu et al., "On the Parameterization and Initialization of Diagonal
    State Space Models", 2022) on ``[B, H, L] -> [B, H, L]``, laid out as state-spaces/s4's ``S4D`` minus its
    output activation and linear layer: parameters ``D [H]`` and ``kernel.{log_dt [H], C [H, N/2, 2],
    log_A_real [H, N/2], A_imag [H, N/2]}`` (``N = d_state``; initialization S4D-Lin, or ``init`` S4D-Inv /
    S4D-Real as the paper's Section 4).

    ``mode: conv`` computes the kernel ``K = 2 Re(C (exp(dt A) - 1) / A * exp(dt A l))`` and convolves by FFT
    (the training form); ``mode: recurrent`` scans the discretized recurrence step by step (the inference
    form; ``L`` unrolled steps). Both give the same output. MACs: the kernel contraction ``H*N*L`` (conv,
    once per call) or ``B*H*N*L`` (recurrent); FLOPs add the FFT estimate of ``fft_conv``.
    """

    name = "s4d"
    category = "sequence"
    attrs = (
        Attr("d_state", "int", 64, "state size N (N/2 complex conjugate-pair modes)"),
        Attr("mode", "str", "conv", "conv (kernel + FFT) or recurrent (step-by-step scan)",
             choices=("conv", "recurrent")),
        Attr("dt_min", "float", 0.001, "initial step sizes are log-uniform in [dt_min, dt_max]"),
        Attr("dt_max", "float", 0.1, "initial step sizes are log-uniform in [dt_min, dt_max]"),
        Attr("init", "str", "lin", "initial A: S4D-Lin (-1/2 + i pi n), S4D-Inv or S4D-Real (-(n + 1))",
             choices=S4D_INITS),
    )
    flop_counted = True
    examples = (
        Example({"d_state": 4}, [(2, 3, 8)]),
        Example({"d_state": 6, "mode": "recurrent"}, [(2, 3, 5)]),
        Example({"d_state": 2, "dt_min": 0.01, "dt_max": 0.5}, [((2, 2, 6), "float64")]),
        Example({"d_state": 8, "init": "inv"}, [(2, 3, 7)]),
        Example({"d_state": 4, "init": "real", "mode": "recurrent"}, [(2, 3, 7)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "d_state")
        if attrs["d_state"] % 2:
            raise SpecError("s4d's state size counts conjugate pairs of modes: it must be even",
                            expected="an even d_state", found=repr(attrs["d_state"]), key="d_state")
        if not 0 < attrs["dt_min"] <= attrs["dt_max"]:
            raise SpecError("s4d's initial step range must be positive and ordered",
                            expected="0 < dt_min <= dt_max", found=f"dt_min={attrs['dt_min']}, dt_max={attrs['dt_max']}")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        u = ctx.x
        if u.rank != 3:
            raise ctx.fail("s4d takes channels-first sequences", expected="[B, H, L]", found=str(u))
        require_fft_dtype(ctx, u, "the s4d input")
        _static(ctx, u, (1, 2), "s4d", "[B, H, L]")
        return [u]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        h, modes = ctx.x.shape[1], ctx["d_state"] // 2
        return {"D": (h,), "kernel.log_dt": (h,), "kernel.C": (h, modes, 2), "kernel.log_A_real": (h, modes),
                "kernel.A_imag": (h, modes)}

    def macs(self, ctx: OpContext) -> int:
        b, h, length = ctx.x.concrete_shape()
        return (1 if ctx["mode"] == "conv" else b) * h * ctx["d_state"] * length

    def flops(self, ctx: OpContext) -> int:
        b, h, length = ctx.x.concrete_shape()
        n = ctx["d_state"]
        if ctx["mode"] == "conv":
            work = 4 * h * n * length + fft_flops(2 * b * h + h, length) + 6 * (length + 1) * b * h
        else:
            work = 8 * b * h * (n // 2) * length
        return 2 * self.macs(ctx) + work + 2 * b * h * length

    def lower(self, ctx: OpContext) -> nn.Module:
        return S4D(ctx.x.shape[1], ctx["d_state"], ctx["mode"], ctx["dt_min"], ctx["dt_max"], ctx["init"])


# -- selective scan (Mamba's S6) --------------------------------------------------------------------------

def associative_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All states ``h_t = a_t h_{t-1} + b_t`` (``h_{-1} = 0``) along axis 1, by a Blelloch scan.

    Adjacent pairs are combined, ``(a1 a0, a1 b0 + b1)``, the half-length problem is solved recursively (its
    states are those at odd positions) and the even positions follow from their left neighbours. Odd lengths
    are padded with the identity step ``(1, 0)``. ``O(L)`` work in ``ceil(log2 L)`` levels; every shape is
    static, so ``torch.export`` traces it into a graph of ``O(log L)`` nodes. Results are written into
    strided halves of one output tensor (no concatenation copies).
    """
    length = a.shape[1]
    if length == 1:
        return b
    if length % 2:
        a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
        b = torch.cat([b, torch.zeros_like(b[:, :1])], dim=1)
    a0, a1, b0, b1 = a[:, 0::2], a[:, 1::2], b[:, 0::2], b[:, 1::2]
    odd = associative_scan(a1 * a0, torch.addcmul(b1, a1, b0))
    h = torch.empty_like(b)
    h[:, 0] = b0[:, 0]
    h[:, 2::2] = torch.addcmul(b0[:, 1:], a0[:, 1:], odd[:, :-1])
    h[:, 1::2] = odd
    return h[:, :length]


class SelectiveScan(nn.Module):
    """Mamba's selective scan on channels-last sequences, with its parameters ``A_log [D, N]`` (S4D-Real
    initialization, ``A = -exp(A_log) = -(1..N)``) and ``D [D]`` (ones), named as Mamba's mixer.

    ``u, delta, z [B, L, D]``, ``B, C [B, L, N]``. ``delta`` gets ``softplus`` first with ``delta_softplus``
    (Mamba folds ``dt_proj``'s bias in before it, as ``delta_bias``; a spec feeds ``dt_proj``'s output with its
    bias)."""

    def __init__(self, channels: int, d_state: int, impl: str = "parallel", delta_softplus: bool = True) -> None:
        super().__init__()
        self.impl = impl
        self.delta_softplus = delta_softplus
        self.A_log = nn.Parameter(torch.arange(1, d_state + 1, dtype=torch.float32).log().repeat(channels, 1))
        self.D = nn.Parameter(torch.ones(channels))

    def forward(self, u: torch.Tensor, delta: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                z: torch.Tensor | None = None) -> torch.Tensor:
        if self.delta_softplus:
            delta = F.softplus(delta)
        A = -self.A_log.exp()                                                 # [D, N]
        if self.impl == "sequential":
            h = u.new_zeros(u.shape[0], *A.shape)
            outputs = []
            for t in range(u.shape[1]):
                decay = (delta[:, t, :, None] * A).exp()                      # [B, D, N]
                drive = (delta[:, t] * u[:, t]).unsqueeze(-1) * B[:, t, None, :]
                h = torch.addcmul(drive, decay, h)
                outputs.append(torch.einsum("bdn,bn->bd", h, C[:, t]))
            y = torch.stack(outputs, dim=1)
        else:
            decay = (delta.unsqueeze(-1) * A).exp()                           # [B, L, D, N]
            drive = (delta * u).unsqueeze(-1) * B.unsqueeze(2)                # [B, L, D, N]
            y = torch.einsum("bldn,bln->bld", associative_scan(decay, drive), C)
        y = y + u * self.D
        return y if z is None else y * F.silu(z)

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}, delta_softplus={self.delta_softplus}"


@register
class SelectiveScanOp(OpDef):
    """Mamba's selective state-space scan (S6; Gu & Dao, "Mamba: Linear-Time Sequence Modeling with
    Selective State Spaces", 2023) as ``selective_scan_ref`` in state-spaces/mamba, on channels-last inputs
    ``u [B, L, D]``, ``delta [B, L, D]``, ``B [B, L, N]``, ``C [B, L, N]`` and optionally the gate
    ``z [B, L, D]``; output ``[B, L, D]``.

    ``delta = softplus(delta)`` (with ``delta_softplus``), ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``,
    ``y_t = C_t h_t + D u_t``, times ``SiLU(z_t)`` with a gate. Parameters ``A_log [D, N]`` (``A = -exp(A_log)``,
    S4D-Real init) and ``D [D]``, as Mamba's mixer. ``impl: sequential`` loops over time (``L`` unrolled
    steps, one state ``[B, D, N]`` at a time); ``impl: parallel`` materializes the ``[B, L, D, N]`` decays
    and inputs and runs an associative (Blelloch) scan in ``log2 L`` levels (what export wants: a graph of
    ``O(log L)`` nodes); both compute the same states. MACs: the output contraction ``B*L*D*N``; FLOPs
    ``9 B L D N`` (Mamba's count for the scan, contraction included) plus the skip, softplus and gate.
    """

    name = "selective_scan"
    category = "sequence"
    arity = (4, 5)
    attrs = (
        Attr("impl", "str", "parallel", "parallel (associative scan) or sequential (a loop over time)",
             choices=("parallel", "sequential")),
        Attr("delta_softplus", "bool", True, "apply softplus to delta first (Mamba)"),
    )
    flop_counted = True
    examples = (
        Example({}, [(2, 5, 3), (2, 5, 3), (2, 5, 4), (2, 5, 4), (2, 5, 3)]),
        Example({"impl": "sequential"}, [(2, 5, 3), (2, 5, 3), (2, 5, 4), (2, 5, 4), (2, 5, 3)]),
        Example({"delta_softplus": False}, [(2, 6, 4), (2, 6, 4), (2, 6, 2), (2, 6, 2)]),
        Example({}, [((2, 1, 3), "float64"), ((2, 1, 3), "float64"), ((2, 1, 2), "float64"), ((2, 1, 2), "float64")]),
    )

    def infer(self, ctx: OpContext) -> list[TensorType]:
        names = ("u", "delta", "B", "C", "z")
        u = ctx.x
        for t, name in zip(ctx.inputs, names):
            if t.rank != 3:
                layout = "[B, L, N]" if name in ("B", "C") else "[B, L, D]"
                raise ctx.fail(f"selective_scan input {name} must be a channels-last sequence", expected=layout,
                               found=str(t))
            if t.dtype not in FLOAT_DTYPES:
                raise ctx.fail(f"selective_scan input {name} must be floating-point", expected="a float dtype",
                               found=f"{t} ({t.dtype})")
            if t.dtype != u.dtype:
                raise ctx.fail("selective_scan inputs need one dtype", expected=u.dtype, found=f"{name}: {t.dtype}")
        _static(ctx, u, (1, 2), "selective_scan input u", "[B, L, D]")
        b, length, d = u.shape
        for t, name in zip(ctx.inputs[1:], names[1:]):
            want = (b, length, ctx.inputs[2].shape[2] if name in ("B", "C") else d)
            if t.shape[:2] != (b, length) or (name not in ("B", "C") and t.shape[2] != d):
                raise ctx.fail(f"selective_scan input {name} does not match u {u}",
                               expected=f"{name} {TensorType(want)}", found=f"{name} {t}")
        state = ctx.inputs[2].shape[2]
        if not isinstance(state, int) or ctx.inputs[3].shape[2] != state:
            raise ctx.fail("selective_scan inputs B and C need the same static state size N",
                           expected="B [B, L, N] and C [B, L, N]", found=f"B {ctx.inputs[2]}, C {ctx.inputs[3]}")
        return [u]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        d, n = ctx.x.shape[2], ctx.inputs[2].shape[2]
        return {"A_log": (d, n), "D": (d,)}

    def macs(self, ctx: OpContext) -> int:
        b, length, d = ctx.x.concrete_shape()
        return b * length * d * ctx.inputs[2].concrete_shape()[2]

    def flops(self, ctx: OpContext) -> int:
        b, length, d = ctx.x.concrete_shape()
        n = ctx.inputs[2].concrete_shape()[2]
        extra = 2 + (4 if ctx["delta_softplus"] else 0) + (5 if len(ctx.inputs) == 5 else 0)
        return 9 * b * length * d * n + extra * b * length * d

    def lower(self, ctx: OpContext) -> nn.Module:
        return SelectiveScan(ctx.x.shape[2], ctx.inputs[2].shape[2], ctx["impl"], ctx["delta_softplus"])


# -- Hyena's implicit filter -------------------------------------------------------------------------------

class Sin(nn.Module):
    """``sin(freq * x)`` with a learned per-feature frequency ``freq [1, width]`` starting at ``w``."""

    def __init__(self, width: int, w: float) -> None:
        super().__init__()
        self.freq = nn.Parameter(torch.full((1, width), float(w)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


def hyena_positions(seq_len: int, emb_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hyena's positional features ``z [1, L, emb_dim]`` and times ``t [1, L, 1]``: ``z = [t, cos(f w),
    -sin(f w)]`` (the real and imaginary parts of ``exp(-i f w)``) with ``t`` in [0, 1], ``w = 2 pi l / L``
    and ``(emb_dim - 1) / 2`` frequencies ``f`` evenly spaced in ``[1e-4, bands - 1]`` (safari)."""
    bands = (emb_dim - 1) // 2
    t = torch.linspace(0, 1, seq_len)[None, :, None]
    w = 2 * math.pi * torch.linspace(0, seq_len - 1, seq_len)[None, :, None] / seq_len
    f = torch.linspace(1e-4, bands - 1, bands)[None, None]
    return torch.cat([t, (f * w).cos(), -(f * w).sin()], dim=-1), t


class HyenaPositions(nn.Module):
    """The learned positional features ``z`` (a parameter, as safari registers it with a learning rate) and the
    fixed times ``t`` (a buffer)."""

    def __init__(self, seq_len: int, emb_dim: int) -> None:
        super().__init__()
        z, t = hyena_positions(seq_len, emb_dim)
        self.z = nn.Parameter(z)
        self.register_buffer("t", t)


class ExponentialModulation(nn.Module):
    """``h * (exp(-t |deltas|) + shift)``: channel ``c`` decays at a rate from ``log(target)/slow_decay_pct``
    (first channel) to ``log(target)/fast_decay_pct`` (last); ``deltas`` is a buffer. Identity unless
    ``modulate``."""

    def __init__(self, channels: int, modulate: bool = True, fast_decay_pct: float = 0.3,
                 slow_decay_pct: float = 1.5, target: float = 1e-2, shift: float = 0.0) -> None:
        super().__init__()
        self.modulate = modulate
        self.shift = shift
        fastest, slowest = math.log(target) / fast_decay_pct, math.log(target) / slow_decay_pct
        self.register_buffer("deltas", torch.linspace(slowest, fastest, channels)[None, None])

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if not self.modulate:
            return h
        return h * (torch.exp(-t * self.deltas.abs()) + self.shift)


class HyenaFilter(nn.Module):
    """safari's ``HyenaFilter.filter``: ``h = FFN(z[:, :L])`` (Linear(emb_dim, width), Sin, ``inner`` x
    [Linear(width, width), Sin], Linear(width, channels, no bias); ONE ``Sin`` module, hence one ``freq``,
    shared by every activation as in safari), modulated, returned as the kernel ``[channels, L]``."""

    def __init__(self, channels: int, seq_len: int, emb_dim: int = 3, width: int = 16, inner: int = 2,
                 w: float = 1.0, modulate: bool = True, fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5,
                 target: float = 1e-2, shift: float = 0.0, normalized: bool = False) -> None:
        super().__init__()
        self.normalized = normalized
        self.pos_emb = HyenaPositions(seq_len, emb_dim)
        act = Sin(width, w)
        layers: list[nn.Module] = [nn.Linear(emb_dim, width), act]
        for _ in range(inner):
            layers += [nn.Linear(width, width), act]
        layers.append(nn.Linear(width, channels, bias=False))
        self.implicit_filter = nn.Sequential(*layers)
        self.modulation = ExponentialModulation(channels, modulate, fast_decay_pct, slow_decay_pct, target, shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[-1]
        # clone: a view of a parameter taken under no_grad claims requires_grad without a grad_fn, which
        # torch's module hooks (FlopCounterMode's ModuleTracker) cannot handle as a submodule input
        h = self.implicit_filter(self.pos_emb.z[:, :length].clone())
        h = self.modulation(self.pos_emb.t[:, :length], h)
        if self.normalized:
            h = h / torch.linalg.vector_norm(h, ord=1, dim=-1, keepdim=True)
        return h[0].transpose(0, 1)


@register
class HyenaFilterOp(OpDef):
    """Hyena's implicit long filter (Poli et al., "Hyena Hierarchy", ICML 2023) as safari's ``HyenaFilter``:
    the kernel ``[channels, L]`` for a sequence input ``[..., L]`` (only its length is read; ``L <= seq_len``).

    ``h = FFN(z)`` on learned positional features ``z [1, seq_len, emb_dim]`` (``t``, and ``(emb_dim-1)/2``
    cosine/sine bands): Linear(emb_dim, width), Sin, ``inner`` x [Linear(width, width), Sin],
    Linear(width, channels, no bias), with one learned Sin frequency ``[1, width]`` shared by all activations
    (one module, as safari); then ``h * exp(-t |delta_c|)`` (``modulate``). Parameters keep safari's names
    (``pos_emb.z``, ``implicit_filter.K.weight``, ``implicit_filter.1.freq``). The filter's skip term (safari's
    ``bias``) is ``fft_conv``'s ``skip``. MACs: the FFN, ``L (emb_dim width + inner width^2 + width channels)``
    per call (independent of the batch).
    """

    name = "hyena_filter"
    category = "sequence"
    attrs = (
        Attr("channels", "int", doc="filter channels (d_model * (order - 1) in a Hyena operator)"),
        Attr("seq_len", "int", doc="the longest sequence (safari's l_max): the positional table's length"),
        Attr("emb_dim", "int", 3, "positional features: time plus (emb_dim - 1)/2 cosine/sine pairs; odd, >= 3"),
        Attr("width", "int", 16, "FFN width (safari's HyenaFilter order / HyenaOperator filter_order)"),
        Attr("inner", "int", 2, "hidden Linear+Sin layers after the first (safari's num_inner_mlps)"),
        Attr("w", "float", 1.0, "initial Sin frequency"),
        Attr("modulate", "bool", True, "multiply by the exponentially decaying window"),
        Attr("fast_decay_pct", "float", 0.3, "decay rate of the last channel: log(target) / fast_decay_pct"),
        Attr("slow_decay_pct", "float", 1.5, "decay rate of the first channel: log(target) / slow_decay_pct"),
        Attr("target", "float", 1e-2, "window value the decay rates aim at"),
        Attr("shift", "float", 0.0, "added to the window"),
        Attr("normalized", "bool", False, "divide each position's filter by its L1 norm over channels"),
    )
    flop_counted = True
    examples = (
        Example({"channels": 4, "seq_len": 8}, [(2, 4, 8)]),
        Example({"channels": 3, "seq_len": 10, "emb_dim": 5, "width": 6, "inner": 1, "w": 14.0,
                 "modulate": False, "normalized": True}, [(2, 5, 7)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "channels", "seq_len", "width")
        if attrs["emb_dim"] < 3 or attrs["emb_dim"] % 2 == 0:
            raise SpecError("hyena_filter's positional features are time plus cosine/sine pairs",
                            expected="an odd emb_dim >= 3", found=repr(attrs["emb_dim"]), key="emb_dim")
        if attrs["inner"] < 0:
            raise SpecError("hyena_filter's inner layer count cannot be negative", expected="inner >= 0",
                            found=repr(attrs["inner"]), key="inner")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        length = ctx.x.shape[-1] if ctx.x.rank else None
        if not isinstance(length, int):
            raise ctx.fail("hyena_filter reads the sequence length from its input's last axis",
                           expected="an input [..., L] with an integer L", found=str(ctx.x))
        if length > ctx["seq_len"]:
            raise ctx.fail("the sequence is longer than the filter's positional table",
                           expected=f"L <= seq_len = {ctx['seq_len']}", found=f"L = {length} in {ctx.x}",
                           hint="raise seq_len (safari's l_max)")
        return [TensorType((ctx["channels"], length), "float32")]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        e, w, c = ctx["emb_dim"], ctx["width"], ctx["channels"]
        p = {"pos_emb.z": (1, ctx["seq_len"], e), "implicit_filter.0.weight": (w, e), "implicit_filter.0.bias": (w,),
             "implicit_filter.1.freq": (1, w)}
        for k in range(ctx["inner"]):
            p[f"implicit_filter.{2 * k + 2}.weight"] = (w, w)
            p[f"implicit_filter.{2 * k + 2}.bias"] = (w,)
        p[f"implicit_filter.{2 * ctx['inner'] + 2}.weight"] = (c, w)
        return p

    def macs(self, ctx: OpContext) -> int:
        e, w, c = ctx["emb_dim"], ctx["width"], ctx["channels"]
        return ctx.outputs[0].shape[1] * (e * w + ctx["inner"] * w * w + w * c)

    def flops(self, ctx: OpContext) -> int:
        length, w, c = ctx.outputs[0].shape[1], ctx["width"], ctx["channels"]
        return 2 * self.macs(ctx) + 2 * length * w * (ctx["inner"] + 1) + 3 * length * c

    def lower(self, ctx: OpContext) -> nn.Module:
        a = ctx.attrs
        return HyenaFilter(a["channels"], a["seq_len"], a["emb_dim"], a["width"], a["inner"], a["w"], a["modulate"],
                           a["fast_decay_pct"], a["slow_decay_pct"], a["target"], a["shift"], a["normalized"])


__all__ = ["s4d_init", "S4DKernel", "S4D", "S4DOp", "SelectiveScan", "SelectiveScanOp", "HyenaFilter", "HyenaFilterOp",
           "associative_scan", "hyena_positions"]
