"""Latency measurement shared by every backend: counts, caps and the interleaved rounds (no wall-clock
threshold is asserted: the calls count themselves)."""

from __future__ import annotations

import time

import pytest

from nasforge.backends.base import measure_interleaved, measure_latency, summarize


def test_measure_latency_runs_warmup_then_repeats() -> None:
    calls: list[int] = []
    latency = measure_latency(lambda: calls.append(1), warmup=3, repeats=7)
    assert len(calls) == 10
    assert latency.repeats == 7 and latency.warmup == 3
    assert latency.min_ms <= latency.p10_ms <= latency.median_ms <= latency.p90_ms <= latency.max_ms


def test_interleaved_rounds_rotate_and_settle_each_call_before_timing_it() -> None:
    log: list[str] = []
    calls = {name: (lambda name=name: log.append(name)) for name in "abc"}
    result = measure_interleaved(calls, warmup=1, repeats=3)
    assert set(result) == {"a", "b", "c"} and all(r.repeats == 3 for r in result.values())
    rounds = log[3:]  # after one warm-up call each
    assert rounds == ["a", "a", "b", "b", "c", "c", "b", "b", "c", "c", "a", "a", "c", "c", "a", "a", "b", "b"]


def test_interleaved_timing_tells_a_slow_call_from_a_fast_one() -> None:
    result = measure_interleaved({"slow": lambda: time.sleep(0.004), "fast": lambda: None}, warmup=0, repeats=5)
    assert result["slow"].median_ms > result["fast"].median_ms
    assert result["slow"].min_ms >= 4.0  # sleep never returns early


def test_interleaved_cap_stops_after_three_rounds() -> None:
    result = measure_interleaved({"a": lambda: time.sleep(0.002)}, warmup=0, repeats=1000, max_seconds=0.0)
    assert result["a"].repeats == 3


def test_summary_percentiles_come_from_the_sorted_times() -> None:
    latency = summarize([5.0, 1.0, 3.0, 2.0, 4.0], warmup=0)
    assert (latency.min_ms, latency.median_ms, latency.max_ms) == (1.0, 3.0, 5.0)


@pytest.mark.parametrize("warmup, repeats", [(-1, 5), (0, 0)])
def test_bad_counts_are_refused(warmup: int, repeats: int) -> None:
    with pytest.raises(ValueError):
        measure_interleaved({"a": lambda: None}, warmup=warmup, repeats=repeats)
    with pytest.raises(ValueError):
        measure_latency(lambda: None, warmup=warmup, repeats=repeats)
