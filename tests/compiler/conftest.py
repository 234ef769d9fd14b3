"""Small specs shared by the compiler tests."""

from __future__ import annotations

import pytest

import nasforge

RESIDUAL = """
name: residual_net
params: {width: 8}
inputs: {image: [B, 3, 16, 16], bias_in: [B, 8]}
blocks:
  unit:
    args: [dim]
    nodes:
      - {id: conv, op: conv2d, out: $dim, kernel: 3, padding: 1}
      - {id: bn, op: batch_norm2d}
      - {id: act, op: relu}
      - {id: sum, op: add, in: [$input, act]}
graph:
  - {id: stem, op: conv2d, in: image, out: $width, kernel: 3, padding: 1}
  - {id: units, repeat: 2, block: unit, dim: $width}
  - {id: halves, op: chunk, chunks: 2, axis: 1}
  - {id: joined, op: concat, in: [halves:1, halves:0], axis: 1}
  - {id: pool, op: global_avg_pool, keepdim: false}
  - {id: shifted, op: add, in: [pool, bias_in]}
  - {id: head, op: linear, out: 5}
outputs: {logits: head, features: pool}
"""


@pytest.fixture
def residual_spec() -> nasforge.Spec:
    return nasforge.loads(RESIDUAL, "residual.yaml")
