"""Diagnostics: choice families, the collapse report, and the alpha trajectory plot."""

from __future__ import annotations

import json

import pytest
import torch

from nasforge.search.oneshot.diagnostics import collapse_report, family, plot_trajectories
from nasforge.search.oneshot.runner import run_oneshot
from tests.search.test_spaces_darts_spos_mbconv import DARTS_V1, DARTS_V2, genotype_choices

from .conftest import FAST

EDGES = [f"params.edge_{e}" for e in ("1_0", "2_0", "2_1", "3_0", "3_1", "3_2")]


def test_families_drop_what_numbers_a_choice():
    assert family("params.normal_op_3a") == "normal_op"
    assert family("params.reduce_in_5") == "reduce_in"
    assert family("params.edge_2_1") == "edge"
    assert family("features.3.arch") == "features.arch"


def test_a_cell_of_skip_connections_and_zero_ops_has_collapsed(nb201_net):
    cell = dict(zip(EDGES, ["skip_connect", "skip_connect", "none", "skip_connect", "avg_pool_3x3", "nor_conv_3x3"]))
    report = collapse_report(nb201_net, cell, threshold=0.5)
    assert report.families == {"edge": {"ops": 6, "skip": 0.5, "none": 0.1667, "parameter_free": 0.8333}}
    assert report.collapsed == ["edge"]
    assert "edge: 67% skip/none of 6 ops" in report.message()
    healthy = dict(zip(EDGES, ["nor_conv_3x3", "skip_connect", "nor_conv_1x1", "avg_pool_3x3", "none", "nor_conv_3x3"]))
    report = collapse_report(nb201_net, healthy, threshold=0.5)
    assert report.collapsed == [] and report.message() is None
    assert json.loads(json.dumps(report.as_dict()))["families"]["edge"]["parameter_free"] == 0.5


def test_darts_cells_are_judged_per_family(darts_net_shared):
    report = collapse_report(darts_net_shared, genotype_choices(DARTS_V2), threshold=0.5)
    assert report.families["normal_op"] == {"ops": 8, "skip": 0.25, "none": 0.0, "parameter_free": 0.25}
    assert report.families["reduce_op"]["parameter_free"] == 1.0  # max pools and skips: published, not collapsed
    assert report.collapsed == []
    v1 = collapse_report(darts_net_shared, genotype_choices(DARTS_V1), threshold=0.3)  # 3 skips in each cell
    assert (v1.families["normal_op"]["skip"], v1.families["reduce_op"]["skip"]) == (0.375, 0.375)
    assert v1.collapsed == ["normal_op", "reduce_op"]


def test_trajectories_are_drawn_per_key(nb201_net, tmp_path):
    records = []
    for epoch in range(3):
        with torch.no_grad():
            for alpha in nb201_net.alphas.values():
                alpha.add_(torch.randn_like(alpha))
        records.append({"epoch": epoch, "alphas": nb201_net.arch_weights()})
    path = plot_trajectories(records, nb201_net, tmp_path / "plots" / "alphas.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["alphas.png"]  # no temporary file left behind


def test_each_epoch_records_its_genotype_weights_and_collapse(nb201, digits_nb201, tmp_path):
    result = run_oneshot(nb201, "darts", digits_nb201, hparams={**FAST, "collapse_threshold": 1.0}, storage=":memory:",
                         run_dir=tmp_path)
    (record,) = result.records
    assert set(record["alphas"]) == set(EDGES) and all(len(w) == 5 for w in record["alphas"].values())
    assert sum(record["alphas"]["params.edge_1_0"]) == pytest.approx(1.0, abs=1e-5)
    assert record["genotype"].startswith("edge_1_0=") and record["collapse"]["threshold"] == 1.0
    log = json.loads((tmp_path / "log.json").read_text())
    assert log["records"][0]["assignment"] == result.assignment and log["keys"]["params.edge_1_0"][0] == "none"
