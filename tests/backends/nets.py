"""Tiny networks the backend tests compile (fast on 2 shared cores), and helpers to run code in a fresh
process (artifacts must load without the process that compiled them)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

import nasforge
from nasforge.compiler.fx_builder import example_inputs

MLP = """
name: tiny_mlp
params: {hidden: 16, classes: 3}
inputs: {x: [B, 8]}
graph:
  - {id: fc1, op: linear, out: $hidden}
  - {id: act, op: gelu}
  - {id: fc2, op: linear, out: $classes}
outputs: {logits: fc2}
"""

CONV_BN = """
name: tiny_conv_bn
inputs: {image: [B, 3, 12, 12]}
graph:
  - {id: conv, op: conv2d, out: 8, kernel: 3, padding: 1, bias: false}
  - {id: bn, op: batch_norm2d}
  - {id: act, op: relu}
  - {id: pool, op: global_avg_pool, keepdim: false}
  - {id: head, op: linear, out: 4}
outputs: {logits: head, features: pool}
"""

FFT = """
name: tiny_fft
inputs: {u: [B, 4, 16], k: [4, 16]}
graph:
  - {id: mix, op: fft_conv, in: [u, k]}
"""
"""fft_conv: complex FFTs, which TVM and the ONNX exporter import as a direct convolution."""

RMS_NORM = """
name: tiny_rms_norm
inputs: {x: [B, 3, 8]}
graph:
  - {id: norm, op: rms_norm}
"""
"""rms_norm: aten::rms_norm, which the TorchScript ONNX exporter cannot export at opset 18 (a lowering failure
to report)."""

RANDOM_MASKING = """
name: tiny_random_masking
inputs: {x: [B, 7, 5]}
graph:
  - {id: mask, op: random_masking, ratio: 0.5, eval_order: random}
"""
"""random_masking drawing its noise in eval mode: aten.rand, which TVM's importer does not convert."""


def spec_and_module(text: str, seed: int = 0) -> tuple[nasforge.Spec, torch.fx.GraphModule]:
    """The spec and its module with seeded random weights (BN statistics too, so folding matters)."""
    spec = nasforge.loads(text)
    torch.manual_seed(seed)
    gm = spec.build()
    with torch.no_grad():
        for name, buf in gm.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.5)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    gm.meta["output_names"] = list(spec.graph.outputs)
    return spec, gm


def inputs_for(spec: nasforge.Spec, batch: int = 2) -> tuple[torch.Tensor, ...]:
    return example_inputs(spec.graph, batch=batch)


def run_python(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (from the repository root) and return the finished process."""
    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=root, capture_output=True,
                          text=True, timeout=timeout, env=None)


TORCH_BLOCKED = "import sys\nsys.modules['torch'] = None  # any import of torch now fails\n"
"""Prefix for subprocess code that must not import torch (an ImportError proves it tried)."""
