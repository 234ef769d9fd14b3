"""The DARTS_V2 CIFAR network (specs/models/darts_v2.yaml) and the DARTS space's auxiliary head.

``test_model_specs.py`` holds the file to the paper's parameter count like every model spec; here it must be
the very network the DARTS space gives for the published genotype, and the auxiliary head (an option of the
space) must compute what the reference AuxiliaryHeadCIFAR computes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import nasforge
from nasforge.search.hashing import graph_hash
from tests.search.test_spaces_darts_spos_mbconv import DARTS_V2, bn, genotype_choices, randomize_batch_norms

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "specs" / "models" / "darts_v2.yaml"
SPACE = ROOT / "specs" / "spaces" / "darts.yaml"


@pytest.mark.parametrize("auxiliary", [False, True])
def test_the_file_is_the_space_member_of_the_genotype(auxiliary: bool):
    model = nasforge.load(MODEL, auxiliary=auxiliary)
    member = nasforge.load(SPACE, auxiliary=auxiliary).with_choices(genotype_choices(DARTS_V2))
    assert [n.path for n in model.graph] == [n.path for n in member.graph]
    assert graph_hash(model.graph) == graph_hash(member.graph)
    assert model.check().totals == member.check().totals
    assert model.check().totals.params == (3_349_342 + 476_426 if auxiliary else 3_349_342)


def test_the_auxiliary_head_adds_the_reference_head():
    """AuxiliaryHeadCIFAR(C_prev=4 * 4C, 10): 1x1 conv 576->128, BN, 2x2 conv 128->768, BN, linear 768->10."""
    plain = nasforge.load(MODEL).check().totals
    with_head = nasforge.load(MODEL, auxiliary=True)
    head = 576 * 128 + 2 * 128 + 128 * 768 * 4 + 2 * 768 + 768 * 10 + 10
    assert with_head.check().totals.params - plain.params == head == 476_426
    assert with_head.check().totals.macs - plain.macs == 2 * 2 * 576 * 128 + 128 * 768 * 4 + 768 * 10
    assert list(with_head.graph.outputs) == ["logits", "logits_aux"]
    assert list(nasforge.load(MODEL).graph.outputs) == ["logits"]


@pytest.mark.parametrize("layers", [5, 8])
def test_the_auxiliary_head_reads_the_second_reduction_cell(layers: int):
    """The head equals a functional AuxiliaryHeadCIFAR applied to cell 2*layers//3's output, at C=8 and two
    depths. That output, after ReLU, is what the next cell's s1 preprocessing conv reads: a hook takes it there."""
    spec = nasforge.load(MODEL, auxiliary=True, C=8, layers=layers)
    gm = spec.build()
    randomize_batch_norms(gm)
    p = dict(gm.state_dict())
    tapped: list[torch.Tensor] = []
    next_cell = gm.get_submodule(f"cells.{2 * layers // 3 + 1}.preprocess1.op.1")
    next_cell.register_forward_pre_hook(lambda module, args: tapped.append(args[0]))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, logits_aux = gm(x)
        y = F.avg_pool2d(tapped[0], 5, 3, count_include_pad=False)
        y = F.relu(bn(F.conv2d(y, p["auxiliary_head.features.2.weight"]), p, "auxiliary_head.features.3"))
        y = F.relu(bn(F.conv2d(y, p["auxiliary_head.features.5.weight"]), p, "auxiliary_head.features.6"))
        expected = F.linear(y.flatten(1), p["auxiliary_head.classifier.weight"], p["auxiliary_head.classifier.bias"])
    assert tapped[0].shape == (2, 4 * 4 * 8, 8, 8)
    torch.testing.assert_close(logits_aux, expected, rtol=1e-4, atol=1e-5)
    assert logits.shape == (2, 10)
