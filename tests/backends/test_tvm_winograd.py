"""Winograd 3x3 convolutions in the TVM backend (an option): which convolutions qualify, and that a network
computed with them still agrees with eager PyTorch (untuned here; the tuned speed is in docs/performance.md)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from nasforge.backends.tvm import TVMBackend
from nasforge.backends.tvm_winograd import MAX_OUTPUT_SIDE, MIN_OUTPUT_SIDE, eligible
from nasforge.errors import SpecError
from tests.backends.nets import inputs_for, spec_and_module

WINO = """
name: winograd_mix
inputs: {image: [B, 8, 16, 16]}
graph:
  - {id: c1, op: conv2d, out: 16, kernel: 3, padding: 1, bias: false}
  - {id: bn, op: batch_norm2d}
  - {id: act, op: relu}
  - {id: c2, op: conv2d, out: 16, kernel: 3, padding: 1}
  - {id: down, op: conv2d, out: 8, kernel: 3, stride: 2, padding: 1}
  - {id: pool, op: global_avg_pool, keepdim: false}
  - {id: head, op: linear, out: 5}
outputs: {logits: head}
"""
"""Two eligible 3x3 convolutions (one followed by BatchNorm and ReLU, one with a bias) and a strided one that
is not."""


def conv_attrs(**changes) -> SimpleNamespace:
    attrs = dict(data_layout="NCHW", kernel_layout="OIHW", out_layout="NCHW", strides=(1, 1), dilation=(1, 1),
                 groups=1, padding=(1, 1, 1, 1))
    return SimpleNamespace(**{**attrs, **changes})


def test_a_same_padded_3x3_stride_1_float32_convolution_of_middle_width_qualifies() -> None:
    assert eligible(conv_attrs(), (1, 256, 14, 14), (256, 256, 3, 3), "float32")


@pytest.mark.parametrize("attrs,data,weight,dtype", [
    (conv_attrs(strides=(2, 2)), (1, 64, 56, 56), (64, 64, 3, 3), "float32"),
    (conv_attrs(dilation=(2, 2)), (1, 64, 56, 56), (64, 64, 3, 3), "float32"),
    (conv_attrs(groups=64), (1, 64, 56, 56), (1, 1, 3, 3), "float32"),
    (conv_attrs(padding=(0, 0, 0, 0)), (1, 64, 56, 56), (64, 64, 1, 1), "float32"),
    (conv_attrs(data_layout="NHWC", out_layout="NHWC"), (1, 56, 56, 64), (64, 64, 3, 3), "float32"),
    (conv_attrs(), (1, 64, 56, 56), (64, 64, 3, 3), "float16"),
    (conv_attrs(), (1, 512, 7, 7), (512, 512, 3, 3), "float32"),
    (conv_attrs(), (1, 64, 56, 56), (64, 64, 3, 3), "float32"),
], ids=["stride-2", "dilated", "depthwise", "1x1", "nhwc", "float16", "small-output", "wide-output"])
def test_other_convolutions_are_left_to_the_direct_algorithm(attrs, data, weight, dtype) -> None:
    assert not eligible(attrs, data, weight, dtype)


@pytest.mark.parametrize("side,inside", [(MIN_OUTPUT_SIDE - 1, False), (MIN_OUTPUT_SIDE, True),
                                         (MAX_OUTPUT_SIDE, True), (MAX_OUTPUT_SIDE + 1, False)])
def test_the_output_width_window_is_inclusive(side: int, inside: bool) -> None:
    assert eligible(conv_attrs(), (1, 8, side, side), (8, 8, 3, 3), "float32") == inside


def test_a_network_with_winograd_convolutions_matches_eager_and_says_how_many() -> None:
    spec, gm = spec_and_module(WINO)
    x = inputs_for(spec, batch=2)
    compiled = TVMBackend().compile(gm, x, "x86", {"winograd": True})
    want = gm(*x).detach().numpy()
    np.testing.assert_allclose(compiled.run_numpy(x[0].numpy())[0], want, rtol=1e-4, atol=1e-4)
    assert any("2 of 3 convolutions computed with Winograd" in note for note in compiled.info.notes)
    direct = TVMBackend().compile(gm, x, "x86")  # off unless asked: it lost inside ResNet-50 at batch 1
    assert not any("Winograd" in note for note in direct.info.notes)


def test_winograd_must_be_a_boolean() -> None:
    with pytest.raises(SpecError, match="winograd"):
        TVMBackend().check_options({"winograd": "yes"})
