"""The machine's latency cache: first measurement wins, keys include backend, target and host, and several
processes writing at once lose nothing and leave a sound file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import nasforge
from nasforge.search.latency_cache import FILE_NAME, LatencyCache, cache_dir, host_id
from nasforge.search.objectives import Evaluator

ROOT = Path(__file__).resolve().parents[2]


def test_the_first_measurement_of_a_key_stands(tmp_path):
    cache = LatencyCache(tmp_path / "lat.sqlite")
    assert cache.get("net", "eager", "cpu-1t") is None
    assert cache.put("net", "eager", "cpu-1t", 2.5) == 2.5
    assert cache.put("net", "eager", "cpu-1t", 9.0) == 2.5  # a later writer gets the stored value back
    measured = []
    assert cache.get_or_measure("net", "eager", "cpu-1t", lambda: measured.append(1) or 7.0) == 2.5
    assert cache.get_or_measure("net", "tvm", "cpu-1t", lambda: measured.append(1) or 7.0) == 7.0
    assert measured == [1] and len(cache) == 2
    # another object on the same file (another process, later) sees both
    assert LatencyCache(tmp_path / "lat.sqlite").get("net", "tvm", "cpu-1t") == 7.0
    with pytest.raises(ValueError, match="finite"):
        cache.put("x", "eager", "cpu-1t", float("nan"))


def test_keys_are_per_host_and_the_default_file_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NASFORGE_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and LatencyCache().path == tmp_path / "c" / FILE_NAME
    cache = LatencyCache(tmp_path / "lat.sqlite")
    cache.put("net", "eager", "cpu-1t", 1.0)
    other_machine = LatencyCache(tmp_path / "lat.sqlite")
    other_machine.host = "another CPU (x86_64, 64 cpus)"
    assert other_machine.get("net", "eager", "cpu-1t") is None
    assert "cpus" in host_id()
    memory = LatencyCache.in_memory()
    memory.put("net", "eager", "cpu-1t", 3.0)
    assert memory.get("net", "eager", "cpu-1t") == 3.0
    assert LatencyCache.in_memory().get("net", "eager", "cpu-1t") is None  # each in-memory cache is private


WRITER = """
import sys
from nasforge.search.latency_cache import LatencyCache
cache = LatencyCache(sys.argv[1])
me, keys = int(sys.argv[2]), int(sys.argv[3])
for i in range(keys):
    cache.put(f"shared-{i}", "eager", "cpu-1t", float(me))        # every writer races for these
    cache.put(f"own-{me}-{i}", "eager", "cpu-1t", float(i))        # and writes its own
"""


def test_concurrent_writer_processes_lose_no_record(tmp_path):
    path, writers, keys = tmp_path / "lat.sqlite", 4, 150
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), str(keys)], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for w in range(writers)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    cache = LatencyCache(path)
    assert len(cache) == keys + writers * keys
    for w in range(writers):
        assert [cache.get(f"own-{w}-{i}", "eager", "cpu-1t") for i in range(keys)] == [float(i) for i in range(keys)]
    # each shared key holds one writer's value, the same for every reader
    assert {cache.get(f"shared-{i}", "eager", "cpu-1t") for i in range(keys)} <= {float(w) for w in range(writers)}


def test_the_evaluator_reuses_a_latency_another_process_measured(tmp_path):
    spec = nasforge.loads("inputs: {x: [B, 4]}\ngraph:\n  - {id: fc, op: linear, out: 2}\n", "tiny.yaml")
    first = Evaluator(latency_cache=LatencyCache(tmp_path / "lat.sqlite"))
    measured = first.evaluate(spec, ["latency_ms"], "tiny")["latency_ms"]
    assert measured > 0
    # a worker started later on this machine: the same number, not a new measurement
    again = Evaluator(latency_cache=LatencyCache(tmp_path / "lat.sqlite")).evaluate(spec, ["latency_ms"], "tiny")
    assert again["latency_ms"] == measured
    LatencyCache(tmp_path / "lat.sqlite").put("known", first.latency.backend, first.latency.cache_target, 42.0)
    assert first.evaluate(spec, ["latency_ms"], "known")["latency_ms"] == 42.0
