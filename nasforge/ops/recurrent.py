"""Recurrent layers: ``lstm`` and ``gru`` over sequences ``[B, T, C]``, laid out as torch's nn.LSTM / nn.GRU.

Parameters carry torch's names and shapes (``weight_ih_l0 [G*H, C]``, ``weight_hh_l0 [G*H, H]``, ``bias_ih_l0``,
``bias_hh_l0``, ``..._reverse`` for the backward direction, ``weight_hr_l0`` for an LSTM projection; G = 4
gates for the LSTM, 3 for the GRU), so a built spec loads torch state dicts and counts what torch counts.

Two lowerings, chosen by ``impl``:

* ``fused`` (default): a subclass of ``nn.LSTM`` / ``nn.GRU``. ``torch.export`` keeps it as one
  ``aten.lstm.input`` / ``aten.gru.input`` node, which ``run_decompositions`` expands into matmuls.
* ``unrolled``: the cell written out over the static sequence length with ``F.linear`` and element-wise
  ops (the input projection of all steps in one matmul, then one recurrent matmul per step). It exports to
  plain aten ops (no fused RNN node, for backends that lack one: see ``backend_limits``), has the same
  parameters, and agrees with ``fused`` (within 1e-5 in float32, tests/ops/test_recurrent.py).

States: an optional initial state follows the sequence input (``h0`` for the GRU; ``h0, c0`` for the LSTM)
and ``return_state: true`` appends the final states as extra outputs. With ``batch_first`` (the default)
states are ``[B, layers*dirs, H]``, batch first like everything else in nasforge; torch keeps its states
``[layers*dirs, B, H]`` even with ``batch_first=True``, so the lowering transposes. With
``batch_first: false`` sequences are ``[T, B, C]`` and states ``[layers*dirs, B, H]``, as torch.

Cost: every weight matrix multiplies one vector per token, layer and direction, so MACs are
``B*T * sum(numel of the weight matrices)``: per step and direction ``G*H*(C_in + H_out)`` (plus ``H*P``
for a projection), e.g. ``4*(C*H + H*H)`` per step for a one-layer LSTM. FLOPs add the element-wise
work of the cell per token, layer and direction: one add per gate element for the input + recurrent sum
and one per bias, then 9*H for the LSTM (4 gate activations, the cell update's 2 products and a sum,
tanh of the cell, the output product) or 7*H for the GRU (3 gate activations, the reset product,
``n + z*(h - n)``).

torch's FlopCounterMode counts the GRU and the unrolled forms through their ``mm``/``addmm`` calls, but
float32 CPU ``nn.LSTM`` runs as oneDNN's ``aten.mkldnn_rnn_layer``, which it does not count (0 FLOPs).
Importing this module registers a formula for that kernel, the count the decomposed kernels give
(float64, projections), so every CPU path is counted alike; its backward counts twice the forward, as
matmuls do (the decomposed backward is a little less: it skips the gradient into the zero initial
state). CUDA's ``_cudnn_rnn`` is not registered (not testable here): FlopCounterMode counts a fused
LSTM/GRU on CUDA as 0.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.utils import flop_counter

from nasforge.errors import SpecError
from nasforge.ops.registry import Attr, Example, OpContext, OpDef, nn, prod, register, require_positive
from nasforge.types import FLOAT_DTYPES, TensorType, is_static


def _count_cpu_lstm() -> None:
    """Teach FlopCounterMode oneDNN's LSTM layer kernel: ``2 * tokens * (numel W_ih + numel W_hh)``."""
    forward = getattr(torch.ops.aten, "mkldnn_rnn_layer", None)
    backward = getattr(torch.ops.aten, "mkldnn_rnn_layer_backward", None)
    if forward is not None and forward not in flop_counter.flop_registry:
        @flop_counter.register_flop_formula(forward)
        def _forward(input_shape: Any, w_ih: Any, w_hh: Any, *args: Any, out_shape: Any = None,
                     **kwargs: Any) -> int:
            return 2 * prod(input_shape[:-1]) * (prod(w_ih) + prod(w_hh))
    if backward is not None and backward not in flop_counter.flop_registry:
        @flop_counter.register_flop_formula(backward)
        def _backward(input_shape: Any, w_ih: Any, w_hh: Any, *args: Any, out_shape: Any = None,
                      **kwargs: Any) -> int:
            return 4 * prod(input_shape[:-1]) * (prod(w_ih) + prod(w_hh))


_count_cpu_lstm()


# -- modules -------------------------------------------------------------------------------------------

class _StateLayout:
    """Moves states between nasforge's layout and torch's ``[layers*dirs, B, H]``."""

    batch_first: bool
    return_state: bool

    def _state_in(self, s: torch.Tensor) -> torch.Tensor:
        return s.transpose(0, 1).contiguous() if self.batch_first else s

    def _state_out(self, s: torch.Tensor) -> torch.Tensor:
        return s.transpose(0, 1) if self.batch_first else s


class FusedLSTM(_StateLayout, nn.LSTM):
    """``nn.LSTM`` taking optional ``h0, c0`` in nasforge's state layout and returning the output sequence,
    plus ``h_n, c_n`` with ``return_state``. ``bias="input"`` keeps only the input biases ``bias_ih_*``
    (the recurrent ones become zero buffers that are not parameters and not saved)."""

    def __init__(self, input_size: int, hidden: int, layers: int, bias: bool | str, batch_first: bool,
                 bidirectional: bool, dropout: float, proj_size: int | None, return_state: bool) -> None:
        super().__init__(input_size, hidden, layers, bias=bias is not False, batch_first=batch_first,
                         dropout=dropout, bidirectional=bidirectional, proj_size=proj_size or 0)
        self.return_state = return_state
        if bias == "input":
            _drop_recurrent_biases(self)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None,
                c0: torch.Tensor | None = None) -> Any:
        hx = None if h0 is None or c0 is None else (self._state_in(h0), self._state_in(c0))
        y, (h, c) = super().forward(x, hx)
        return (y, self._state_out(h), self._state_out(c)) if self.return_state else y


class FusedGRU(_StateLayout, nn.GRU):
    """``nn.GRU`` taking an optional ``h0`` in nasforge's state layout and returning the output sequence,
    plus ``h_n`` with ``return_state``."""

    def __init__(self, input_size: int, hidden: int, layers: int, bias: bool, batch_first: bool,
                 bidirectional: bool, dropout: float, return_state: bool) -> None:
        super().__init__(input_size, hidden, layers, bias=bias, batch_first=batch_first, dropout=dropout,
                         bidirectional=bidirectional)
        self.return_state = return_state

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> Any:
        y, h = super().forward(x, None if h0 is None else self._state_in(h0))
        return (y, self._state_out(h)) if self.return_state else y


def _drop_recurrent_biases(rnn: nn.RNNBase) -> None:
    """Replace each ``bias_hh_*`` parameter by a non-persistent zero buffer of the same shape, so the
    fused kernel (which takes both biases or none) computes with the input bias only."""
    for name in [n for n in rnn._flat_weights_names if n.startswith("bias_hh")]:
        zeros = torch.zeros_like(getattr(rnn, name).detach())
        delattr(rnn, name)
        rnn.register_buffer(name, zeros, persistent=False)
    rnn._init_flat_weights()


class UnrolledRNN(_StateLayout, nn.Module):
    """An LSTM or GRU written out step by step over the static sequence length (exportable to plain matmuls
    and element-wise ops), with torch's parameter names, shapes, gate order and initialization.

    LSTM gates ``i, f, g, o``: ``c' = s(f)*c + s(i)*tanh(g)``, ``h' = s(o)*tanh(c')`` (then ``W_hr h'``
    with a projection). GRU gates ``r, z, n``: ``n = tanh(x_n + s(r)*(W_hn h + b_hn))``,
    ``h' = (1 - z)*n + z*h``. Dropout between layers in training only, as torch."""

    def __init__(self, cell: str, input_size: int, hidden: int, layers: int, bias: bool | str,
                 batch_first: bool, bidirectional: bool, dropout: float, proj_size: int | None,
                 return_state: bool) -> None:
        super().__init__()
        self.cell, self.hidden, self.layers, self.dropout = cell, hidden, layers, dropout
        self.batch_first, self.return_state = batch_first, return_state
        self.directions = 2 if bidirectional else 1
        self.out_size = proj_size or hidden
        bound = 1.0 / math.sqrt(hidden)
        for name, shape in rnn_parameters(cell, input_size, hidden, layers, bias, bidirectional,
                                          proj_size).items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape).uniform_(-bound, bound)))

    def _weights(self, suffix: str) -> tuple[torch.Tensor | None, ...]:
        return tuple(getattr(self, f"{kind}{suffix}", None)
                     for kind in ("weight_ih", "bias_ih", "weight_hh", "bias_hh", "weight_hr"))

    def _lstm_step(self, xw: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w: tuple) -> tuple:
        i, f, g, o = (xw + F.linear(h, w[2], w[3])).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return (h if w[4] is None else F.linear(h, w[4])), c

    def _gru_step(self, xw: torch.Tensor, h: torch.Tensor, c: None, w: tuple) -> tuple:
        xr, xz, xn = xw.chunk(3, 1)
        hr, hz, hn = F.linear(h, w[2], w[3]).chunk(3, 1)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + torch.sigmoid(xr + hr) * hn)
        return n + z * (h - n), None

    def _direction(self, x: torch.Tensor, suffix: str, reverse: bool, h: torch.Tensor,
                   c: torch.Tensor | None) -> tuple:
        w = self._weights(suffix)
        steps = F.linear(x, w[0], w[1]).unbind(1)          # the input projection of every step at once
        step = self._lstm_step if self.cell == "lstm" else self._gru_step
        outs: list[torch.Tensor] = [x] * len(steps)
        for t in (reversed(range(len(steps))) if reverse else range(len(steps))):
            h, c = step(steps[t], h, c, w)
            outs[t] = h
        return torch.stack(outs, 1), h, c

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None, c0: torch.Tensor | None = None) -> Any:
        if not self.batch_first:
            x = x.transpose(0, 1)
        h0 = None if h0 is None else self._state_in(h0)             # [layers*dirs, B, H_out]
        c0 = None if c0 is None else self._state_in(c0)
        finals_h, finals_c = [], []
        for layer in range(self.layers):
            outs = []
            for d in range(self.directions):
                k = layer * self.directions + d
                h = h0[k] if h0 is not None else x.new_zeros((x.shape[0], self.out_size))
                c = None
                if self.cell == "lstm":
                    c = c0[k] if c0 is not None else x.new_zeros((x.shape[0], self.hidden))
                y, h, c = self._direction(x, f"_l{layer}" + ("_reverse" if d else ""), d == 1, h, c)
                outs.append(y)
                finals_h.append(h)
                finals_c.append(c)
            x = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
            if self.dropout and self.training and layer < self.layers - 1:
                x = F.dropout(x, self.dropout, True)
        y = x if self.batch_first else x.transpose(0, 1)
        if not self.return_state:
            return y
        h_n = self._state_out(torch.stack(finals_h, 0))
        if self.cell == "gru":
            return y, h_n
        return y, h_n, self._state_out(torch.stack(finals_c, 0))


def rnn_parameters(cell: str, input_size: int, hidden: int, layers: int, bias: bool | str,
                   bidirectional: bool, proj_size: int | None) -> dict[str, tuple[int, ...]]:
    """torch's parameter names and shapes for an LSTM/GRU, in torch's order."""
    gates = (4 if cell == "lstm" else 3) * hidden
    out = proj_size or hidden
    dirs = 2 if bidirectional else 1
    params: dict[str, tuple[int, ...]] = {}
    for layer in range(layers):
        width = input_size if layer == 0 else out * dirs
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            params[f"weight_ih{sfx}"] = (gates, width)
            params[f"weight_hh{sfx}"] = (gates, out)
            if bias is not False:
                params[f"bias_ih{sfx}"] = (gates,)
            if bias is True:
                params[f"bias_hh{sfx}"] = (gates,)
            if proj_size:
                params[f"weight_hr{sfx}"] = (proj_size, hidden)
    return params


# -- entries -------------------------------------------------------------------------------------------

class Recurrent(OpDef):
    """Shared rules of ``lstm`` and ``gru``: attributes, shapes, parameters, cost."""

    category = "recurrent"
    flop_counted = True
    cell: ClassVar[str] = ""
    states: ClassVar[int] = 1
    """Number of state tensors (h, or h and c)."""
    cell_flops: ClassVar[int] = 0
    """Element-wise FLOPs per hidden unit per step besides the gate sums and biases (see the module doc)."""

    common_attrs: ClassVar[tuple[Attr, ...]] = (
        Attr("hidden", "int", doc="hidden size H (per direction)"),
        Attr("layers", "int", 1, "stacked layers; layer k > 0 reads layer k-1's output"),
        Attr("batch_first", "bool", True, "sequences [B, T, C] and states [B, L*D, H]; false: [T, B, C] and "
             "[L*D, B, H], as torch"),
        Attr("bidirectional", "bool", False, "also run each layer backwards in time; outputs concatenate"),
        Attr("dropout", "float", 0.0, "dropout on the outputs of every layer but the last (training only)"),
        Attr("return_state", "bool", False, "also output the final states (h_n, and c_n for an LSTM)"),
        Attr("impl", "str", "fused", "fused: nn.LSTM/nn.GRU; unrolled: the cell written out over the static T",
             choices=("fused", "unrolled")),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "hidden", "layers")
        if not 0.0 <= attrs["dropout"] < 1.0:
            raise SpecError(f"{self.name} dropout is a probability", expected="0 <= dropout < 1",
                            found=repr(attrs["dropout"]), key="dropout")
        if attrs["dropout"] and attrs["layers"] == 1:
            raise SpecError(f"{self.name} dropout acts between layers, so one layer has none",
                            expected="layers >= 2 with dropout (or a dropout node after the op)",
                            found=f"dropout={attrs['dropout']} with layers=1", key="dropout")

    # -- shapes -----------------------------------------------------------------------------------
    def out_size(self, ctx: OpContext) -> int:
        """The per-direction width of the output and of h: H, or the LSTM projection size."""
        return ctx["hidden"]

    def state_types(self, ctx: OpContext, batch: Any) -> list[TensorType]:
        """Types of the state tensors (h, then c) in this op's layout."""
        lead = ctx["layers"] * (2 if ctx["bidirectional"] else 1)
        widths = [self.out_size(ctx), ctx["hidden"]][: self.states]
        dtype = ctx.x.dtype
        return [TensorType((batch, lead, w) if ctx["batch_first"] else (lead, batch, w), dtype) for w in widths]

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        layout = "[B, T, C]" if ctx["batch_first"] else "[T, B, C]"
        if x.rank != 3:
            raise ctx.fail(f"{self.name} takes a sequence {layout}", expected="rank 3", found=str(x))
        if x.dtype not in FLOAT_DTYPES:
            raise ctx.fail(f"{self.name} takes a floating-point sequence", expected="a float dtype", found=x.dtype)
        if not isinstance(x.shape[2], int):
            raise ctx.fail(f"{self.name} needs a static feature size C", expected=f"{layout} with an integer C",
                           found=str(x))
        batch, steps = (x.shape[0], x.shape[1]) if ctx["batch_first"] else (x.shape[1], x.shape[0])
        if ctx["impl"] == "unrolled" and not is_static(steps):
            raise ctx.fail(f"{self.name} with impl: unrolled needs a static sequence length T",
                           expected=f"{layout} with an integer T", found=str(x),
                           hint="use impl: fused for a symbolic T")
        expected = self.state_types(ctx, batch)
        given = ctx.inputs[1:]
        if given and len(given) != len(expected):
            names = " and ".join(("h0", "c0")[: self.states])
            raise ctx.fail(f"{self.name} takes its initial state as {names} together",
                           expected=f"1 or {1 + self.states} inputs", found=f"{len(ctx.inputs)} inputs")
        for name, want, got in zip(("h0", "c0"), expected, given):
            if got.shape != want.shape or got.dtype != want.dtype:
                raise ctx.fail(f"{self.name} initial state {name} does not fit", expected=f"{want} ({want.dtype})",
                               found=f"{got} ({got.dtype})")
        width = self.out_size(ctx) * (2 if ctx["bidirectional"] else 1)
        y = x.with_shape((x.shape[0], x.shape[1], width))
        return [y] + (expected if ctx["return_state"] else [])

    # -- parameters and cost ----------------------------------------------------------------------
    def proj_size(self, ctx: OpContext) -> int | None:
        return None

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        return rnn_parameters(self.cell, ctx.x.shape[2], ctx["hidden"], ctx["layers"], ctx["bias"],
                              ctx["bidirectional"], self.proj_size(ctx))

    def tokens(self, ctx: OpContext) -> int:
        shape = ctx.x.concrete_shape()
        return shape[0] * shape[1]

    def macs(self, ctx: OpContext) -> int:
        weights = [shape for name, shape in self.params(ctx).items() if name.startswith("weight")]
        return self.tokens(ctx) * sum(prod(s) for s in weights)

    def flops(self, ctx: OpContext) -> int:
        hidden, gates = ctx["hidden"], (4 if self.cell == "lstm" else 3) * ctx["hidden"]
        biases = {True: 2, "input": 1, False: 0}[ctx["bias"]]
        per_step = gates * (1 + biases) + self.cell_flops * hidden
        cells = ctx["layers"] * (2 if ctx["bidirectional"] else 1)
        return 2 * self.macs(ctx) + self.tokens(ctx) * cells * per_step

    def unrolled(self, ctx: OpContext) -> UnrolledRNN:
        return UnrolledRNN(self.cell, ctx.x.shape[2], ctx["hidden"], ctx["layers"], ctx["bias"],
                           ctx["batch_first"], ctx["bidirectional"], ctx["dropout"], self.proj_size(ctx),
                           ctx["return_state"])


# TVM's Relax importer (apache/tvm relax/frontend/torch/exported_program_translator.py, as read for these
# entries) calls run_decompositions() without keeping its result, so it meets aten.lstm.input and
# aten.gru.input themselves and translates them with its own _lstm / _gru, whose limits these notes list.
_TVM_UNROLLED = ("Use impl: unrolled, which exports only linear/matmul, split, stack and element-wise ops (not run "
                 "through TVM here).")


@register
class LSTM(Recurrent):
    """Long short-term memory over a sequence ``[B, T, C] -> [B, T, D*H]`` (D = 2 when bidirectional), as
    ``nn.LSTM`` with ``batch_first=True`` (gates ``i, f, g, o``; zero initial state unless ``h0, c0``
    ``[B, layers*D, H]`` follow the input; ``return_state`` adds ``h_n [B, layers*D, H_out]`` and
    ``c_n [B, layers*D, H]``).

    ``bias``: true (``bias_ih`` and ``bias_hh``, as torch and cuDNN), false, or ``input`` (``bias_ih`` only,
    one bias per gate as Caffe, Keras and TensorFlow). ``proj_size`` projects h to P (``weight_hr``; the
    output and h_n are P wide). ``impl``: ``fused`` (nn.LSTM) or ``unrolled`` (the cell written out over the
    static T: plain matmuls, same parameters and results). MACs per token and layer-direction:
    ``4H*(C_in + H_out)`` (+ ``H*P``).
    """

    name = "lstm"
    cell = "lstm"
    states = 2
    cell_flops = 9
    arity = (1, 3)
    attrs = Recurrent.common_attrs[:1] + (
        Attr("bias", "bool|str", True, "true: bias_ih and bias_hh (torch); input: bias_ih only (Caffe, Keras); "
             "false: none", choices=(True, False, "input")),
        Attr("proj_size", "int|none", None, "LSTM with projections: h is projected to this size"),
    ) + Recurrent.common_attrs[1:]
    backend_limits = {"tvm": "impl: fused exports one aten.lstm.input node, which TVM's Relax importer "
                             "translates itself: one layer in one direction only (NotImplementedError otherwise), "
                             "the output sequence only (return_state outputs fail to import), and exactly four "
                             "weights per layer, so proj_size fails and bias: false silently runs with zero "
                             "weights. " + _TVM_UNROLLED}
    examples = (
        Example({"hidden": 7}, [(2, 4, 5)]),
        Example({"hidden": 6, "layers": 2, "bidirectional": True, "return_state": True}, [(2, 3, 5)]),
        Example({"hidden": 6, "proj_size": 3, "bias": "input", "return_state": True},
                [(2, 4, 5), (2, 1, 3), (2, 1, 6)]),
        Example({"hidden": 5, "layers": 2, "dropout": 0.5, "bias": False}, [(2, 3, 4)], train=True),
        Example({"hidden": 6, "batch_first": False, "return_state": True}, [(4, 2, 5)], symbolic_batch=False),
        Example({"hidden": 6, "layers": 2, "bidirectional": True, "proj_size": 4, "impl": "unrolled",
                 "return_state": True}, [(2, 3, 5)]),
        Example({"hidden": 5, "bias": "input", "impl": "unrolled"}, [(2, 4, 3)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        super().check_attrs(attrs)
        require_positive(attrs, "proj_size")
        if attrs["proj_size"] is not None and attrs["proj_size"] >= attrs["hidden"]:
            raise SpecError("lstm proj_size must be smaller than hidden", expected=f"proj_size < {attrs['hidden']}",
                            found=str(attrs["proj_size"]), key="proj_size")

    def out_size(self, ctx: OpContext) -> int:
        return ctx["proj_size"] or ctx["hidden"]

    def proj_size(self, ctx: OpContext) -> int | None:
        return ctx["proj_size"]

    def lower(self, ctx: OpContext) -> nn.Module:
        if ctx["impl"] == "unrolled":
            return self.unrolled(ctx)
        return FusedLSTM(ctx.x.shape[2], ctx["hidden"], ctx["layers"], ctx["bias"], ctx["batch_first"],
                         ctx["bidirectional"], ctx["dropout"], ctx["proj_size"], ctx["return_state"])


@register
class GRU(Recurrent):
    """Gated recurrent unit over a sequence ``[B, T, C] -> [B, T, D*H]`` (D = 2 when bidirectional), as
    ``nn.GRU`` with ``batch_first=True`` (gates ``r, z, n``; ``n = tanh(W_in x + b_in + r*(W_hn h + b_hn))``,
    ``h' = (1 - z)*n + z*h``; zero initial state unless ``h0 [B, layers*D, H]`` follows the input;
    ``return_state`` adds ``h_n``). ``impl``: ``fused`` (nn.GRU) or ``unrolled`` (the cell written out over
    the static T). MACs per token and layer-direction: ``3H*(C_in + H)``.
    """

    name = "gru"
    cell = "gru"
    states = 1
    cell_flops = 7
    arity = (1, 2)
    attrs = Recurrent.common_attrs[:1] + (
        Attr("bias", "bool", True, "bias_ih and bias_hh (b_hn sits inside the reset product, so both count)"),
    ) + Recurrent.common_attrs[1:]
    backend_limits = {"tvm": "impl: fused exports one aten.gru.input node, which TVM's Relax importer "
                             "translates itself: one direction only (NotImplementedError otherwise), the output "
                             "sequence only (return_state outputs fail to import), and four weights per layer, "
                             "so bias: false silently runs with wrong or zero weights. " + _TVM_UNROLLED}
    examples = (
        Example({"hidden": 7}, [(2, 4, 5)]),
        Example({"hidden": 6, "layers": 2, "bidirectional": True, "return_state": True}, [(2, 3, 5)]),
        Example({"hidden": 6, "bias": False, "return_state": True}, [(2, 4, 5), (2, 1, 6)]),
        Example({"hidden": 5, "layers": 3, "dropout": 0.5}, [(2, 3, 4)], train=True),
        Example({"hidden": 6, "batch_first": False}, [(4, 2, 5)], symbolic_batch=False),
        Example({"hidden": 6, "layers": 2, "bidirectional": True, "impl": "unrolled", "return_state": True},
                [(2, 3, 5), (2, 4, 6)]),
    )

    def lower(self, ctx: OpContext) -> nn.Module:
        if ctx["impl"] == "unrolled":
            return self.unrolled(ctx)
        return FusedGRU(ctx.x.shape[2], ctx["hidden"], ctx["layers"], ctx["bias"], ctx["batch_first"],
                        ctx["bidirectional"], ctx["dropout"], ctx["return_state"])
