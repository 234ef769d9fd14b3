"""Latency on a backend and target: the per-workload lookup table (each distinct layer timed once per
machine, summed into ``latency_lut_ms``), whole-network ``latency_ms`` on eager, ONNX Runtime and TVM, and
the ``--latency-backend`` / ``--latency-target`` options of ``nasforge search``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest
import torch

import nasforge
from nasforge.cli import main
from nasforge.compiler.fx_builder import build_graph_module, example_inputs
from nasforge.errors import SpecError
from nasforge.search.latency_cache import LatencyCache
from nasforge.search.latency_lut import LatencyLUT, LatencyMeter, Workload, workload_graph
from nasforge.search.objectives import Evaluator

# four identical blocks at one width, then a wider one: 5 x 4 nodes, 2 x 4 + 1 distinct workloads
REPEATED = """
name: repeated
params: {wide: 32}
inputs: {x: [B, 8, 16, 16]}
blocks:
  unit:
    args: [dim]
    nodes:
      - {id: conv, op: conv2d, out: $dim, kernel: 3, padding: 1}
      - {id: bn, op: batch_norm2d}
      - {id: act, op: relu}
      - {id: add, op: add, in: [$input, act]}
graph:
  - {id: body, repeat: 4, block: unit, dim: 8}
  - {id: widen, op: conv2d, out: $wide, kernel: 1}
  - {id: top, repeat: 1, block: unit, dim: $wide}
"""
FAST = LatencyMeter(repeats=3, warmup=1)


def lut() -> LatencyLUT:
    return LatencyLUT(FAST, LatencyCache.in_memory())


def test_repeated_substructures_are_measured_once():
    spec = nasforge.loads(REPEATED)
    table = lut()
    estimate = table.estimate_ms(spec)
    nodes = len(spec.graph.nodes)
    assert nodes == 21 and table.measured == 9  # body's 4 workloads, widen, top's 4
    assert estimate > 0
    # the same network again: everything comes from the table, and sums the same
    assert table.estimate_ms(spec) == estimate and table.measured == 9
    # another network sharing the 8-channel blocks times only what is new: the 64-channel layers
    wider = nasforge.loads(REPEATED, wide=64)
    table.estimate_ms(wider)
    assert table.measured == 9 + 5


def test_a_workload_is_an_op_its_attributes_and_its_input_types():
    graph = nasforge.loads(REPEATED).graph
    body = [Workload.of(graph, graph.nodes[f"body.{k}.conv"]) for k in range(4)]
    assert len({w.key for w in body}) == 1 and body[0].op == "conv2d"
    assert body[0].inputs == ("[B, 8, 16, 16]",) and '"kernel":3' in body[0].attrs
    assert Workload.of(graph, graph.nodes["top.0.conv"]).key != body[0].key  # 32 channels
    # the one-node graph runs the node's op on inputs of the types it receives in the network
    alone = workload_graph(graph, graph.nodes["top.0.add"])
    out = build_graph_module(alone)(*example_inputs(alone, batch=1))
    assert tuple(out.shape) == (1, 32, 16, 16) and list(alone.inputs) == ["in0", "in1"]


def test_the_table_is_kept_on_the_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("NASFORGE_CACHE_DIR", str(tmp_path / "cache"))
    spec = nasforge.loads(REPEATED)
    first = LatencyLUT(FAST, LatencyCache())
    estimate = first.estimate_ms(spec)
    assert (tmp_path / "cache" / "latency.sqlite").exists() and first.measured == 9
    again = LatencyLUT(FAST, LatencyCache())  # a later search on this machine
    assert again.estimate_ms(spec) == estimate and again.measured == 0
    # a different backend or thread count is a different row: its timings do not stand in for eager's
    other = LatencyLUT(LatencyMeter("onnxruntime", repeats=3, warmup=1), LatencyCache())
    assert other.meter.cache_target == first.meter.cache_target == f"x86/{torch.get_num_threads()}t"
    pytest.importorskip("onnxruntime")
    other.estimate_ms(spec)
    assert other.measured == 9


WRITER = """
import sys
import nasforge
from nasforge.search.latency_cache import LatencyCache
from nasforge.search.latency_lut import LatencyLUT, LatencyMeter
spec = nasforge.loads(sys.stdin.read())
table = LatencyLUT(LatencyMeter(repeats=3, warmup=1), LatencyCache(sys.argv[1]))
print(table.estimate_ms(spec), table.measured)
"""


@pytest.mark.slow
def test_concurrent_searches_share_one_table(tmp_path):
    """Two processes estimating the same network at once: each workload has one row, and both report the
    sum of the rows that stand (the first writer of a workload wins)."""
    path = tmp_path / "latency.sqlite"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(REPEATED, timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(LatencyCache(path)) == 9
    assert sum(int(measured) for _, measured in outputs) >= 9
    final = LatencyLUT(FAST, LatencyCache(path))
    assert all(float(ms) == pytest.approx(final.estimate_ms(nasforge.loads(REPEATED))) for ms, _ in outputs)
    assert final.measured == 0


def test_a_larger_network_is_estimated_slower():
    table = lut()
    small = table.estimate_ms(nasforge.loads(REPEATED, wide=8))
    large = table.estimate_ms(nasforge.loads(REPEATED.replace("[B, 8, 16, 16]", "[B, 8, 64, 64]"), wide=256))
    assert large > 10 * small  # 16x the pixels and far wider layers


def test_the_evaluator_measures_and_estimates():
    spec = nasforge.loads(REPEATED)
    evaluator = Evaluator(latency=FAST)
    out = evaluator.evaluate(spec, ["latency_ms", "latency_lut_ms", "params"], key="repeated")
    assert out["latency_ms"] > 0 and out["latency_lut_ms"] > 0
    assert evaluator.lut.measured == 9
    assert evaluator.evaluate(spec, ["latency_ms"], key="repeated") == {"latency_ms": out["latency_ms"]}  # cached
    assert evaluator.settings(["latency_lut_ms", "params"]) == {
        "latency": {"backend": "eager", "target": "x86", "repeats": 3, "warmup": 1}}
    assert evaluator.settings(["params"]) == {}


def test_onnxruntime_times_networks_and_workloads():
    pytest.importorskip("onnxruntime")
    spec = nasforge.loads(REPEATED)
    meter = LatencyMeter("onnxruntime", repeats=3, warmup=1)
    meter.check()
    assert meter.network_ms(spec) > 0
    table = LatencyLUT(meter, LatencyCache.in_memory())
    assert table.estimate_ms(spec) > 0 and table.measured == 9


@pytest.mark.slow
def test_tvm_times_a_network():
    pytest.importorskip("tvm")
    spec = nasforge.loads("inputs: {x: [B, 16]}\ngraph:\n  - {id: fc, op: linear, out: 32}\n"
                          "  - {id: act, op: relu}\n  - {id: head, op: linear, out: 4}\n")
    meter = LatencyMeter("tvm", repeats=5, warmup=1)
    meter.check()
    assert meter.network_ms(spec) > 0


@pytest.mark.parametrize("flags, message, where", [
    (["--latency-backend", "onnx"], "unknown backend 'onnx'", "--latency-backend"),
    (["--latency-backend", "auto"], "latency is measured on one backend", "--latency-backend"),
    (["--latency-target", "x87"], "unknown target 'x87'", "--latency-target"),
    (["--latency-target", "arm64"], "cannot time networks for target 'arm64'", "--latency-backend"),
])
def test_bad_latency_options_fail_before_the_search(tmp_path, capsys, flags, message, where):
    space = tmp_path / "space.yaml"
    space.write_text(REPEATED)
    code = main(["search", str(space), "--objective", "latency_ms", "--storage", f"sqlite:///{tmp_path / 's.db'}",
                 *flags])
    err = capsys.readouterr().err
    assert code == 1 and message in err and err.startswith(f"nasforge: error: {where}: ")
    assert not (tmp_path / "s.db").exists()


def test_search_measures_on_the_chosen_backend_and_records_it(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    space = tmp_path / "space.yaml"
    space.write_text(REPEATED.replace("wide: 32", "wide: {choice: [16, 32]}"))
    storage = f"sqlite:///{tmp_path / 's.db'}"
    code = main(["search", str(space), "--objective", "latency_lut_ms", "--constraint", "latency_ms<=1000",
                 "--strategy", "random", "--budget", "2", "--storage", storage, "--study", "ort",
                 "--latency-backend", "onnxruntime", "--json"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["completed"] == 2
    study = optuna.load_study(study_name="ort", storage=storage)
    recorded = {"backend": "onnxruntime", "target": "x86", "repeats": 20, "warmup": 3}
    assert study.user_attrs["evaluation"] == {"latency": recorded}
    assert all(t.user_attrs["latency"] == recorded and t.user_attrs["metrics"]["latency_ms"] > 0
               for t in study.trials)
    # resuming on another backend would mix numbers that do not compare
    with pytest.raises(SpecError, match="measured its trials differently") as err:
        from nasforge.search.objectives import Objective
        from nasforge.search.study import Search

        Search(nasforge.load(space), "random", [Objective.parse("latency_lut_ms")], budget=3, storage=storage,
               study_name="ort").open_study()
    assert err.value.expected == "latency.backend='onnxruntime'" and err.value.found == "latency.backend='eager'"
