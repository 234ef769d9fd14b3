"""Routing: ``topk``, ``scatter``, the stacked per-expert ``expert_linear`` and the ``moe``
mixture-of-experts feed-forward layer.

A mixture-of-experts layer routes each token to ``k`` of ``E`` expert FFNs: a router (a linear layer to
``E`` logits, a softmax), the top-k probabilities and their experts, and the weighted sum of those experts'
outputs. ``moe`` is the whole layer in one op, parameters named as Hugging Face's Mixtral
(``gate.weight``, ``experts.gate_up_proj``, ``experts.down_proj``); ``topk``, ``scatter`` and
``expert_linear`` spell the same layer out as a block (specs/blocks/moe.yaml).

Cost convention (MACs of an MoE layer). Papers quote the compute of the ``k`` active experts per token
("13B active parameters" of Mixtral 8x7B); the lowering here is dense and static-shaped, so it exports
and runs on every backend: every expert processes every token and the routing weights (zero for the
``E - k`` experts not chosen) mask the sum. nasforge's MACs count what the lowering executes, all ``E``
experts, because that is what torch's FlopCounterMode measures on the built module and every spec is held
to it. ``Moe.active_macs`` gives the paper convention (router plus ``k`` experts per token); specs quote
both in their notes. A sparse (gathered or grouped-GEMM) lowering would compute only the active experts;
it needs data-dependent shapes, which ``torch.export`` with static shapes cannot express.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nasforge.errors import SpecError
from nasforge.ops.registry import (Attr, Call, Example, OpContext, OpDef, nn, normalize_axis, register,
                                   require_float, require_positive)
from nasforge.types import TensorType, dim_str, is_static

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
               "relu": F.relu}
"""The expert FFN activations ``moe`` offers (Mixtral: silu; Switch Transformer / T5: relu)."""

INDEX_DTYPES = ("int64",)


def _static_axis(ctx: OpContext, t: TensorType, axis: int, what: str) -> int:
    size = t.shape[axis]
    if not is_static(size):
        raise ctx.fail(f"{what} needs a static size on axis {axis}", expected="an integer dimension",
                       found=f"{dim_str(size)} in {t}")
    return int(size)


# -- topk, scatter --------------------------------------------------------------------------

@register
class TopK(OpDef):
    """The ``k`` largest (or smallest) entries along ``axis`` (``torch.topk``): two outputs, the values
    (the input's dtype) and their int64 indices, both with size ``k`` on ``axis``. ``sorted`` orders them
    (largest first with ``largest``). No MACs (comparisons only)."""

    name = "topk"
    category = "routing"
    attrs = (
        Attr("k", "int", doc="how many entries to keep"),
        Attr("axis", "int", -1, "the axis to select along"),
        Attr("largest", "bool", True, "the largest entries (false: the smallest)"),
        Attr("sorted", "bool", True, "return them in order"),
    )
    examples = (
        Example({"k": 2}, [(2, 5, 8)]),
        Example({"k": 1, "axis": 1, "largest": False}, [(2, 6, 3)]),
        Example({"k": 3}, [((2, 4), "int64")], int_high=100),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "k")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        if x.rank == 0 or x.dtype == "bool":
            raise ctx.fail("topk needs a numeric tensor with at least one axis", expected="rank >= 1, not bool",
                           found=f"{x} ({x.dtype})")
        axis = normalize_axis(ctx, ctx["axis"], x.rank)
        size = _static_axis(ctx, x, axis, "topk")
        if ctx["k"] > size:
            raise ctx.fail("topk asks for more entries than the axis has", expected=f"k <= {size} (axis {axis})",
                           found=f"k={ctx['k']} for {x}")
        shape = x.shape[:axis] + (ctx["k"],) + x.shape[axis + 1:]
        return [x.with_shape(shape), TensorType(shape, "int64")]

    def flops(self, ctx: OpContext) -> int:
        return ctx.x.numel()   # about one comparison per element

    def lower(self, ctx: OpContext) -> Call:
        return Call(torch.topk, (ctx["k"],), {"dim": ctx["axis"], "largest": ctx["largest"],
                                               "sorted": ctx["sorted"]})


def _scatter(values: torch.Tensor, index: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """Zeros with ``size`` entries on ``axis`` (the values' other sizes), ``values`` written at ``index``."""
    shape = list(values.shape)
    shape[axis] = size
    return values.new_zeros(shape).scatter(axis, index, values)


@register
class Scatter(OpDef):
    """Writes ``values`` at ``index`` along ``axis`` into zeros of length ``size`` on that axis
    (``torch.zeros(...).scatter(axis, index, values)``): inputs ``values`` and an int64 ``index`` of the same
    shape; the output has ``values``' shape with ``size`` on ``axis``. Turns top-k routing weights
    ``[..., k]`` and expert ids into dense per-expert weights ``[..., E]``. Indices repeated along the axis
    keep one of their values (torch does not say which). No MACs."""

    name = "scatter"
    category = "routing"
    arity = (2, 2)
    attrs = (
        Attr("size", "int", doc="the output's size on axis (the number of experts, codes...)"),
        Attr("axis", "int", -1, "the axis the index addresses"),
    )
    examples = (
        Example({"size": 8}, [(2, 5, 2), ((2, 5, 2), "int64")], int_high=8),
        Example({"size": 4, "axis": 1}, [(2, 1, 3), ((2, 1, 3), "int64")], int_high=4),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "size")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        values, index = ctx.inputs
        if index.dtype not in INDEX_DTYPES:
            raise ctx.fail("scatter needs an int64 index", expected="int64", found=index.dtype)
        if index.shape != values.shape or values.rank == 0:
            raise ctx.fail("scatter needs an index of the values' shape", expected=f"index {values}",
                           found=f"index {index}")
        axis = normalize_axis(ctx, ctx["axis"], values.rank)
        if is_static(values.shape[axis]) and values.shape[axis] > ctx["size"]:
            raise ctx.fail("scatter writes more values than the output axis holds",
                           expected=f"at most size={ctx['size']} values on axis {axis}", found=str(values))
        return [values.with_shape(values.shape[:axis] + (ctx["size"],) + values.shape[axis + 1:])]

    def lower(self, ctx: OpContext) -> Call:
        return Call(_scatter, kwargs={"axis": ctx["axis"], "size": ctx["size"]})


# -- experts ----------------------------------------------------------------------------------------

class StackedLinear(nn.Module):
    """``E`` linear maps stacked in ``weight [E, out, in]``: ``[..., in] -> [..., E, out]`` (every expert
    sees the same input) or ``[..., E, in] -> [..., E, out]`` (``per_expert``: expert e sees row e)."""

    def __init__(self, experts: int, features: int, out: int, per_expert: bool) -> None:
        super().__init__()
        self.per_expert = per_expert
        self.weight = nn.Parameter(torch.empty(experts, out, features))
        nn.init.normal_(self.weight, std=features ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_expert:
            return torch.einsum("...ei,eoi->...eo", x, self.weight)
        return torch.einsum("...i,eoi->...eo", x, self.weight)

    def extra_repr(self) -> str:
        e, o, i = self.weight.shape
        return f"experts={e}, in={i}, out={o}, per_expert={self.per_expert}"


@register
class ExpertLinear(OpDef):
    """``experts`` bias-free linear layers with stacked weights ``weight [experts, out, in]``: a shared input
    ``[..., in] -> [..., experts, out]`` (each expert maps the same token; ``per_expert: false``) or one row
    per expert ``[..., experts, in] -> [..., experts, out]`` (``per_expert: true``). The building block of a
    dense mixture-of-experts FFN (an einsum over all experts). MACs ``tokens * experts * in * out``: every
    expert on every token, as executed and counted by torch's FlopCounterMode."""

    name = "expert_linear"
    category = "routing"
    attrs = (
        Attr("experts", "int", doc="number of experts (stacked weights)"),
        Attr("out", "int", doc="output features per expert"),
        Attr("per_expert", "bool", False, "the input has an experts axis before the features"),
    )
    flop_counted = True
    examples = (
        Example({"experts": 4, "out": 6}, [(2, 5, 3)]),
        Example({"experts": 4, "out": 3, "per_expert": True}, [(2, 5, 4, 6)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "experts", "out")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        x = ctx.x
        require_float(ctx, x)
        need = 2 if ctx["per_expert"] else 1
        if x.rank < need:
            raise ctx.fail("expert_linear needs a feature axis" + (" after an experts axis" if need == 2 else ""),
                           expected=f"rank >= {need}", found=str(x))
        features = _static_axis(ctx, x, x.rank - 1, "expert_linear")
        if ctx["per_expert"]:
            if x.shape[-2] != ctx["experts"]:
                raise ctx.fail("per_expert input needs one row per expert before the features",
                               expected=f"[..., {ctx['experts']}, {features}]", found=str(x))
            return [x.with_shape(x.shape[:-1] + (ctx["out"],))]
        return [x.with_shape(x.shape[:-1] + (ctx["experts"], ctx["out"]))]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        return {"weight": (ctx["experts"], ctx["out"], ctx.x.shape[-1])}

    def macs(self, ctx: OpContext) -> int:
        return ctx.outputs[0].numel() * ctx.x.shape[-1]

    def lower(self, ctx: OpContext) -> nn.Module:
        return StackedLinear(ctx["experts"], ctx.x.shape[-1], ctx["out"], ctx["per_expert"])


class Experts(nn.Module):
    """Stacked expert FFN weights, named as Hugging Face's MixtralExperts: ``gate_up_proj [E, 2H, C]``
    (gate rows first, then up) and ``down_proj [E, C, H]``; without a gate, ``up_proj [E, H, C]``."""

    def __init__(self, experts: int, channels: int, hidden: int, gated: bool) -> None:
        super().__init__()
        self.gated = gated
        up_rows = 2 * hidden if gated else hidden
        if gated:
            self.gate_up_proj = nn.Parameter(torch.empty(experts, up_rows, channels))
        else:
            self.up_proj = nn.Parameter(torch.empty(experts, up_rows, channels))
        self.down_proj = nn.Parameter(torch.empty(experts, channels, hidden))
        for p in self.parameters():
            nn.init.normal_(p, std=0.02)

    @property
    def up(self) -> torch.Tensor:
        return self.gate_up_proj if self.gated else self.up_proj


class MixtureOfExperts(nn.Module):
    """A top-k mixture-of-experts FFN on ``[..., C]``, dense over all experts (see the module docstring).

    ``gate`` is the router (``Linear(C, E)``, no bias); routing weights are the softmax over all ``E``
    logits (in float32, as Mixtral), kept for the top ``k`` experts and, with ``normalize``, rescaled to sum
    to one (Mixtral); without it they are the raw probabilities (Switch Transformer's top-1). Expert e
    computes ``down_e(act(gate_e x) * up_e x)`` (``gated``) or ``down_e(act(up_e x))``.
    """

    def __init__(self, channels: int, experts: int, hidden: int, k: int, gated: bool = True,
                 act: str = "silu", normalize: bool = True) -> None:
        super().__init__()
        self.k = k
        self.normalize = normalize
        self.act_name = act
        self.act = ACTIVATIONS[act]
        self.gate = nn.Linear(channels, experts, bias=False)
        self.experts = Experts(experts, channels, hidden, gated)

    def routing_weights(self, tokens: torch.Tensor) -> torch.Tensor:
        """Dense per-expert weights ``[T, E]``: the (renormalized) top-k probabilities, zero elsewhere."""
        probs = F.softmax(self.gate(tokens), dim=-1, dtype=torch.float32)
        top, experts = torch.topk(probs, self.k, dim=-1)
        if self.normalize:
            top = top / top.sum(dim=-1, keepdim=True)
        return torch.zeros_like(probs).scatter(-1, experts, top).to(tokens.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        weights = self.routing_weights(tokens)
        hidden = torch.einsum("tc,ehc->teh", tokens, self.experts.up)
        if self.experts.gated:
            gate, up = hidden.chunk(2, dim=-1)
            hidden = self.act(gate) * up
        else:
            hidden = self.act(hidden)
        out = torch.einsum("teh,ech->tc", hidden * weights.unsqueeze(-1), self.experts.down_proj)
        return out.view(x.shape)

    def extra_repr(self) -> str:
        e, c, h = self.experts.down_proj.shape
        return (f"channels={c}, experts={e}, hidden={h}, k={self.k}, gated={self.experts.gated}, "
                f"act={self.act_name}, normalize={self.normalize}")


@register
class Moe(OpDef):
    """Mixture-of-experts feed-forward layer with top-k routing on ``[..., C] -> [..., C]`` (Mixtral's
    sparse MoE block; Switch Transformer's with ``k: 1, gated: false, act: relu, normalize: false``).

    Router ``gate.weight [E, C]`` (no bias) -> softmax over the ``E`` experts -> top ``k`` -> routing
    weights (renormalized to sum to 1 with ``normalize``, as Mixtral) -> the weighted sum of the chosen
    experts' FFNs. Gated experts (``gated``, SwiGLU with ``act: silu``) compute
    ``down(act(x W_gate^T) * x W_up^T)`` from ``experts.gate_up_proj [E, 2H, C]`` (gate rows first) and
    ``experts.down_proj [E, C, H]``, the names and layout of Hugging Face's MixtralExperts; ungated experts
    ``down(act(x W_up^T))`` from ``experts.up_proj [E, H, C]``. No capacity limit (no token is dropped);
    router losses (load balancing, z-loss) and router jitter are training concerns outside the op.

    Costs: the lowering is dense and static-shaped (exportable): every expert runs on every token and the
    routing weights, zero outside the top k, mask the sum. MACs count that executed work,
    ``T*C*E + T*E*H*C*(3 if gated else 2)`` for ``T`` tokens, which is what torch's FlopCounterMode counts
    on the built module. The figure papers quote counts the ``k`` active experts only:
    ``active_macs = T*C*E + T*k*H*C*(3 if gated else 2)`` (a method of this entry; specs quote it in their
    notes). FLOPs add the activation, gating and routing-weight products over ``T*E*H``.
    """

    name = "moe"
    category = "routing"
    attrs = (
        Attr("experts", "int", doc="number of experts E"),
        Attr("hidden", "int", doc="hidden width H of each expert's FFN"),
        Attr("k", "int", 2, "experts per token (top-k)"),
        Attr("gated", "bool", True, "gated (GLU-style, Mixtral) experts; false: a plain two-layer FFN"),
        Attr("act", "str", "silu", "expert activation", choices=tuple(ACTIVATIONS)),
        Attr("normalize", "bool", True, "renormalize the top-k routing weights to sum to 1 (Mixtral)"),
    )
    flop_counted = True
    examples = (
        Example({"experts": 4, "hidden": 6}, [(2, 5, 8)]),
        Example({"experts": 3, "hidden": 5, "k": 1, "gated": False, "act": "relu", "normalize": False},
                [(2, 4, 6)]),
        Example({"experts": 8, "hidden": 4, "k": 8}, [(3, 6)]),
    )

    def check_attrs(self, attrs: dict) -> None:
        require_positive(attrs, "experts", "hidden", "k")
        if attrs["k"] > attrs["experts"]:
            raise SpecError("moe routes each token to more experts than there are",
                            expected=f"k <= experts={attrs['experts']}", found=f"k={attrs['k']}", key="k")

    def infer(self, ctx: OpContext) -> list[TensorType]:
        require_float(ctx, ctx.x)
        if ctx.x.rank < 1:
            raise ctx.fail("moe needs a feature axis", expected="rank >= 1", found=str(ctx.x))
        _static_axis(ctx, ctx.x, ctx.x.rank - 1, "moe")
        return [ctx.x]

    def params(self, ctx: OpContext) -> dict[str, tuple[int, ...]]:
        e, h, c = ctx["experts"], ctx["hidden"], ctx.x.shape[-1]
        up = {"experts.gate_up_proj": (e, 2 * h, c)} if ctx["gated"] else {"experts.up_proj": (e, h, c)}
        return {"gate.weight": (e, c), **up, "experts.down_proj": (e, c, h)}

    def _cost(self, ctx: OpContext, experts: int) -> int:
        c = ctx.x.shape[-1]
        tokens = ctx.x.numel() // c
        matrices = 3 if ctx["gated"] else 2
        return tokens * c * ctx["experts"] + tokens * experts * ctx["hidden"] * c * matrices

    def macs(self, ctx: OpContext) -> int:
        return self._cost(ctx, ctx["experts"])

    def active_macs(self, ctx: OpContext) -> int:
        """MACs of the router and the ``k`` experts each token is routed to (the papers' convention)."""
        return self._cost(ctx, ctx["k"])

    def flops(self, ctx: OpContext) -> int:
        c = ctx.x.shape[-1]
        tokens = ctx.x.numel() // c
        elementwise = tokens * ctx["experts"] * ctx["hidden"] * (3 if ctx["gated"] else 2)
        return 2 * self.macs(ctx) + elementwise + 5 * tokens * ctx["experts"]   # + the router softmax

    def lower(self, ctx: OpContext) -> nn.Module:
        return MixtureOfExperts(ctx.x.shape[-1], ctx["experts"], ctx["hidden"], ctx["k"], ctx["gated"],
                                ctx["act"], ctx["normalize"])


__all__ = ["TopK", "Scatter", "ExpertLinear", "Moe", "MixtureOfExperts", "StackedLinear", "Experts"]
