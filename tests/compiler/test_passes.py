"""Graph passes (``nasforge.compiler.passes``): each pass on focused cases, then ``optimize`` on the model library.

Every rewrite is compared with the network it came from in eval mode, with random weights and randomized
BatchNorm statistics (so a fold that ignored the running mean or variance would show).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.export import Dim
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.modules.batchnorm import _BatchNorm

import nasforge
from nasforge.compiler.fx_builder import example_inputs
from nasforge.compiler.passes import PASSES, PassReport, optimize, optimize_with_report
from nasforge.compiler.passes.constant_fold import FoldedConstant, fold_constants
from nasforge.compiler.passes.dead_code import eliminate_dead_code
from nasforge.compiler.passes.fold_bn import fold_batch_norm
from nasforge.compiler.passes.train_only import remove_train_only
from nasforge.dsl.document import load_document
from nasforge.dsl.variants import variants
from nasforge.errors import SpecError
from nasforge.ops.conv import PaddedConv
from tests.specs.weights import fan_in_random_state

ROOT = Path(__file__).resolve().parents[2]
MODELS = sorted((ROOT / "specs" / "models").glob("*.yaml"))
LIBRARY_LIMIT = 30_000_000
"""Library families with no member under this many parameters are skipped (the brief's bound on run time)."""

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
           nn.Linear, PaddedConv)


# -- helpers ----------------------------------------------------------------------------------------------

def _flat(value) -> list:
    return [v for item in value for v in _flat(item)] if isinstance(value, (tuple, list)) else [value]


def assert_same_outputs(expected, found, rtol: float = 1e-4) -> None:
    """Outputs agree to ``rtol`` of each output's largest magnitude (exactly where not floating point)."""
    expected, found = _flat(expected), _flat(found)
    assert len(expected) == len(found)
    for e, f in zip(expected, found):
        assert e.shape == f.shape and e.dtype == f.dtype
        if not e.is_floating_point():
            assert torch.equal(e, f)
            continue
        error = (e - f).abs().max().item()
        assert error <= rtol * max(e.abs().max().item(), 1e-6), f"max error {error:.3g}"


def run(gm: nn.Module, inputs) -> object:
    """Forward in no-grad mode with a fixed seed (random ops then draw the same numbers on both sides)."""
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        return gm(*inputs)


def randomized(spec: nasforge.Spec) -> fx.GraphModule:
    gm = spec.build()
    gm.load_state_dict(fan_in_random_state(gm))
    return gm


def check_spec(text: str, batch: int = 2) -> tuple[fx.GraphModule, fx.GraphModule, PassReport]:
    """Build a spec, optimize it, and hold the optimized module to the original's outputs."""
    spec = nasforge.loads(text, "passes.yaml")
    gm = randomized(spec)
    opt, report = optimize_with_report(gm)
    inputs = example_inputs(spec.graph, batch=batch)
    assert_same_outputs(run(gm, inputs), run(opt, inputs))
    return gm, opt, report


def modules_of(gm: nn.Module, kind) -> list[str]:
    return [name for name, m in gm.named_modules() if isinstance(m, kind)]


def bn_nodes(gm: fx.GraphModule, after_layer: bool = False) -> set[str]:
    """BatchNorm nodes; with ``after_layer`` only those whose input is a conv / transposed conv / linear output."""
    found = set()
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), _BatchNorm):
            source = node.args[0]
            if not after_layer or (source.op == "call_module"
                                   and isinstance(gm.get_submodule(source.target), _LAYERS)):
                found.add(node.name)
    return found


# -- BatchNorm folding --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_bn_folds_into_conv(nd: int, groups: int, bias: bool):
    shape = {1: "[B, 4, 9]", 2: "[B, 4, 7, 6]", 3: "[B, 4, 5, 4, 6]"}[nd]
    dilation = 2 if groups == 2 else 1          # groups 4 on 4 channels: depthwise (multiplier 2)
    text = f"""
name: conv_bn
inputs: {{x: {shape}}}
graph:
  - {{id: conv, op: conv{nd}d, out: 8, kernel: 3, padding: {dilation}, dilation: {dilation}, groups: {groups},
      bias: {str(bias).lower()}}}
  - {{id: bn, op: batch_norm{nd}d}}
  - {{id: act, op: relu}}
"""
    gm, opt, report = check_spec(text)
    assert report.counts("fold_batch_norm")["conv"] == 1
    assert modules_of(opt, _BatchNorm) == [] and opt.conv.bias is not None
    assert len(opt.graph.nodes) == len(gm.graph.nodes) - 1


def test_bn_folds_into_padded_and_reflect_padded_convs():
    gm, opt, report = check_spec("""
name: padded
inputs: {x: [B, 3, 8, 8]}
graph:
  - {id: same, op: conv2d, out: 6, kernel: 4, padding: same}
  - {id: bn1, op: batch_norm2d}
  - {id: reflect, op: conv2d, out: 6, kernel: 3, padding: 1, padding_mode: reflect, bias: false}
  - {id: bn2, op: batch_norm2d, affine: false}
""")
    assert isinstance(gm.same, PaddedConv)
    assert report.counts("fold_batch_norm")["conv"] == 2 and modules_of(opt, _BatchNorm) == []


def test_bn_folds_into_grouped_transposed_conv():
    _, opt, report = check_spec("""
name: up
inputs: {x: [B, 4, 5, 5]}
graph:
  - {id: up, op: conv_transpose2d, out: 6, kernel: 4, stride: 2, padding: 1, groups: 2, bias: false}
  - {id: bn, op: batch_norm2d}
""")
    assert report.counts("fold_batch_norm")["conv_transpose"] == 1 and modules_of(opt, _BatchNorm) == []


def test_bn_folds_into_linear_on_features_only():
    _, opt, report = check_spec("""
name: mlp_bn
inputs: {x: [B, 8], seq: [B, 4, 8]}
graph:
  - {id: fc, op: linear, in: x, out: 5}
  - {id: bn, op: batch_norm1d}
  - {id: proj, op: linear, in: seq, out: 8}
  - {id: bn_seq, op: batch_norm1d}
outputs: [bn, bn_seq]
""")
    # [B, 4, 8]: BatchNorm1d normalizes axis 1 (4 channels), the linear layer writes axis 2: no fold
    assert report.counts("fold_batch_norm")["linear"] == 1
    assert modules_of(opt, _BatchNorm) == ["bn_seq"]


def test_bn_before_conv_or_beside_another_user_stays():
    _, opt, report = check_spec("""
name: stays
inputs: {x: [B, 4, 6, 6]}
graph:
  - {id: pre, op: batch_norm2d}
  - {id: conv, op: conv2d, out: 4, kernel: 3, padding: 1}
  - {id: bn, op: batch_norm2d}
  - {id: sum, op: add, in: [conv, bn]}
""")
    assert sum(report.counts("fold_batch_norm").values()) == 0
    assert modules_of(opt, _BatchNorm) == ["pre", "bn"]


def test_bn_without_running_statistics_stays():
    gm = fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)))
    assert fold_batch_norm(gm) == {"conv": 0, "conv_transpose": 0, "linear": 0}


# -- train-only ops ---------------------------------------------------------------------------------------

def test_train_only_and_identity_nodes_go():
    _, opt, report = check_spec("""
name: regularized
inputs: {x: [B, 6, 16]}
graph:
  - {id: drop, op: dropout, p: 0.3}
  - {id: same, op: identity}
  - {id: attn, op: attention, heads: 2, attn_drop: 0.1, proj_drop: 0.2}
  - {id: path, op: drop_path, p: 0.2}
  - {id: res, op: add, in: [x, path]}
""")
    assert report.counts("remove_train_only") == {"dropout": 1, "drop_path": 1, "identity": 1, "nested": 1}
    assert {n.op for n in opt.graph.nodes} == {"placeholder", "call_module", "call_function", "output"}
    assert [n.target for n in opt.graph.nodes if n.op == "call_module"] == ["attn"]
    assert modules_of(opt, nn.Dropout) == []


class FunctionalDropouts(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.dropout(x, 0.2, training=False)
        b = F.dropout(a, p=0.0)
        c = torch.dropout(b, 0.3, False)
        return F.dropout(c, 0.2)         # training defaults to True: it drops even in eval mode, so it stays


def test_functional_dropouts_go_only_when_inactive():
    gm = fx.symbolic_trace(FunctionalDropouts())
    assert remove_train_only(gm)["dropout"] == 3
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert len(calls) == 1 and calls[0].kwargs["training"] is True


# -- constant folding -------------------------------------------------------------------------------------

WEIGHT_NORM = """
name: vocoder_bit
inputs: {x: [B, 8, 32]}
graph:
  - {id: pre, op: wn_conv1d, out: 8, kernel: 7, padding: 3, padding_mode: reflect}
  - {id: act, op: leaky_relu}
  - {id: up, op: wn_conv_transpose1d, out: 4, kernel: 4, stride: 2, padding: 1}
"""


def test_weight_norm_kernels_are_computed_once():
    gm, opt, report = check_spec(WEIGHT_NORM, batch=3)
    assert report.counts("fold_constants")["modules"] == 2
    keys = set(opt.state_dict())
    assert not any(k.endswith(("weight_g", "weight_v")) for k in keys)
    assert {"pre.bias", "up.bias"} <= keys and sum(k.startswith("pre.folded_") for k in keys) == 1
    spec = nasforge.loads(WEIGHT_NORM, "passes.yaml")
    for batch in (1, 4):               # the batch stays free
        inputs = example_inputs(spec.graph, batch=batch, seed=batch)
        assert_same_outputs(run(gm, inputs), run(opt, inputs))


def test_optimized_state_dict_reloads_into_a_fresh_optimization():
    spec = nasforge.loads(WEIGHT_NORM, "passes.yaml")
    first = optimize(randomized(spec))
    second = optimize(spec.build())
    second.load_state_dict(first.state_dict())
    inputs = example_inputs(spec.graph)
    assert_same_outputs(run(first, inputs), run(second, inputs))


def test_input_independent_ops_become_buffers():
    gm, opt, report = check_spec("""
name: tables
inputs: {x: [B, 2, 8, 16]}
graph:
  - {id: filter, op: hyena_filter, channels: 2, seq_len: 16}
  - {id: rot, op: rope, in: x}
outputs: [filter, rot]
""", batch=3)
    assert report.counts("fold_constants") == {"nodes": 1, "modules": 1, "rejected": 0}
    assert isinstance(opt.get_submodule("filter"), FoldedConstant)
    assert [n.target for n in opt.graph.nodes if n.op == "get_attr"] == ["filter.value"]
    assert isinstance(opt.get_submodule("rot"), fx.GraphModule)   # cos/sin tables of the 8 positions folded


class Arithmetic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.randn(4))
        self.gamma = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.log_scale.exp() * 2.0 + 1.0          # parameters only: folded
        noise = torch.randn_like(self.gamma)              # random: never constant
        return x * scale + self.gamma.view(1, 4) + noise * 0


def test_parameter_arithmetic_and_views_in_a_traced_graph():
    module = Arithmetic()
    gm = fx.symbolic_trace(module)
    assert fold_constants(gm) == {"nodes": 1, "modules": 0, "rejected": 0}
    kinds = [n.op for n in gm.graph.nodes]
    assert kinds.count("get_attr") == 2 and "log_scale" not in dict(gm.named_parameters())
    assert "gamma" in dict(gm.named_parameters())         # a view of one parameter is not worth a copy
    assert any(n.target is torch.randn_like for n in gm.graph.nodes)
    x = torch.randn(3, 4)
    assert_same_outputs(run(module, (x,)), run(gm, (x,)))


class Branchy(nn.Module):
    """Control flow on a tensor's value: fx cannot trace it, so constant folding leaves the module alone."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w.exp() if x.sum() > 0 else x


class Sneaky(nn.Module):
    """Eager and traced code differ (a Proxy is no Tensor): the check before a rewrite catches it."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.w.exp() if isinstance(x, torch.Tensor) else x - self.w.exp()


def graph_calling(modules: dict[str, nn.Module]) -> fx.GraphModule:
    """A GraphModule that calls each module on the input in turn, typed by ShapeProp (no nasforge metadata)."""
    graph = fx.Graph()
    value = graph.placeholder("x")
    for name in modules:
        value = graph.call_module(name, (value,))
    graph.output(value)
    root = nn.Module()
    for name, module in modules.items():
        root.add_module(name, module)
    gm = fx.GraphModule(root, graph)
    ShapeProp(gm).propagate(torch.randn(2, 4))
    return gm


def test_untraceable_and_diverging_modules_stay():
    gm = graph_calling({"branchy": Branchy(), "sneaky": Sneaky()})
    assert fold_constants(gm) == {"nodes": 0, "modules": 0, "rejected": 1}
    assert isinstance(gm.branchy, Branchy) and isinstance(gm.sneaky, Sneaky)


# -- dead code --------------------------------------------------------------------------------------------

def test_dead_nodes_and_their_modules_go():
    gm, opt, report = check_spec("""
name: dead
inputs: {x: [B, 8]}
graph:
  - {id: halves, op: chunk, chunks: 2, axis: 1}
  - {id: aux, op: linear, in: x, out: 3}
  - {id: head, op: linear, in: halves:0, out: 2}
outputs: [head]
""")
    assert report.counts("eliminate_dead_code") == {"nodes": 2, "modules": 1, "tensors": 0}
    assert list(opt.state_dict()) == ["head.weight", "head.bias"]


class InPlace(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        y.add_(1)                        # result unused, the mutation matters: stays
        _ = x.sum()                      # dead
        return y


def test_side_effects_stay_and_unread_tensors_go():
    gm = fx.symbolic_trace(InPlace())
    gm.register_parameter("unused", nn.Parameter(torch.zeros(3)))
    assert eliminate_dead_code(gm) == {"nodes": 1, "modules": 0, "tensors": 1}
    assert [n.target for n in gm.graph.nodes if n.op == "call_method"] == ["add_"]
    assert "unused" not in dict(gm.named_parameters())
    assert torch.equal(gm(torch.ones(2)), torch.full((2,), 3.0))


# -- optimize ---------------------------------------------------------------------------------------------

def test_optimize_copies_and_reports():
    spec = nasforge.load(ROOT / "specs" / "models" / "resnet.yaml", variant="resnet18")
    gm = randomized(spec)
    gm.train()
    code, state = gm.code, {k: v.clone() for k, v in gm.state_dict().items()}
    opt, report = optimize_with_report(gm)
    assert gm.training and not opt.training and gm.code == code
    assert all(torch.equal(state[k], v) for k, v in gm.state_dict().items())
    assert [r.name for r in report.results] == list(PASSES)
    assert report.counts("fold_batch_norm")["conv"] == 20
    data = report.to_dict()
    assert data["params_before"] > data["params_after"] and data["passes"][2]["nodes_after"] == 50
    assert "fold_batch_norm: conv 20" in str(report)


def test_chosen_passes_by_name_or_function():
    spec = nasforge.loads("""
name: pick
inputs: {x: [B, 3, 6, 6]}
graph:
  - {id: conv, op: conv2d, out: 4, kernel: 3}
  - {id: bn, op: batch_norm2d}
  - {id: drop, op: dropout}
""", "pick.yaml")
    opt, report = optimize_with_report(spec.build(), passes=["remove_train_only", fold_batch_norm])
    assert [r.name for r in report.results] == ["remove_train_only", "fold_batch_norm"]
    assert [n.op for n in opt.graph.nodes] == ["placeholder", "call_module", "output"]
    with pytest.raises(SpecError) as err:
        optimize(spec.build(), passes=["fold_bn"])
    assert "fold_batch_norm" in err.value.hint


def test_optimized_network_exports_with_a_dynamic_batch():
    spec = nasforge.loads(WEIGHT_NORM.replace("- {id: act", "- {id: bn, op: batch_norm1d}\n  - {id: act"),
                          "passes.yaml")
    opt = optimize(randomized(spec))
    inputs = example_inputs(spec.graph, batch=2)
    program = torch.export.export(opt, inputs, dynamic_shapes=({0: Dim("batch", min=1, max=16)},))
    other = example_inputs(spec.graph, batch=5, seed=3)
    assert_same_outputs(run(opt, other), run(program.module(), other))


# -- the model library ------------------------------------------------------------------------------------

def library_member(path: Path) -> str | None | bool:
    """The member a library test builds: the defaults when under the limit, else the family's smallest
    member under it (False when there is none)."""
    members = [None, *variants(load_document(path))]
    sizes = {m: nasforge.load(path, variant=m).check().totals.params for m in members}
    small = [m for m in members if sizes[m] < LIBRARY_LIMIT]
    if None in small:
        return None
    return min(small, key=sizes.__getitem__) if small else False


FAST = {"resnet": "resnet18", "mobilenet_v2": None, "convnext": None, "vit": "vit_tiny"}
"""The representative subset in the default run: ResNet-18, MobileNetV2, ConvNeXt-T, ViT-Ti."""


def check_library(path: Path, variant: str | None) -> None:
    spec = nasforge.load(path, variant=variant)
    gm = randomized(spec)
    opt, report = optimize_with_report(gm)
    inputs = example_inputs(spec.graph, batch=2)
    assert_same_outputs(run(gm, inputs), run(opt, inputs))
    assert bn_nodes(opt, after_layer=True) == set(), "every BatchNorm after a conv/linear layer folds"
    assert bn_nodes(opt) <= bn_nodes(gm) - bn_nodes(gm, after_layer=True)
    assert len(opt.graph.nodes) <= len(gm.graph.nodes)


@pytest.mark.parametrize("name,variant", list(FAST.items()), ids=list(FAST))
def test_library_representatives_keep_their_outputs(name: str, variant: str | None):
    check_library(ROOT / "specs" / "models" / f"{name}.yaml", variant)


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in MODELS if p.stem not in FAST], ids=lambda p: p.stem)
def test_library_keeps_its_outputs(path: Path):
    variant = library_member(path)
    if variant is False:
        pytest.skip(f"every member of {path.stem} has {LIBRARY_LIMIT:,} parameters or more")
    check_library(path, variant)
