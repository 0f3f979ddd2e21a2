"""Tests for the serving-latency statistics of ``benchmarks/ranker_latency`` (every call is kept)."""
import time

import numpy as np
import pytest

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from semrec.benchmarks import ranker_latency as rl


def test_summarize_percentiles_keep_the_slow_calls():
  # 98 calls of 1 ms and two of 50 ms: numpy's linear p99 over 100 values sits at rank 98.01 (between the
  # 99th and 100th sorted values, both 50 ms) -> 50 ms; dropping the slow calls would give 1 ms.
  ms = np.array([1.0] * 98 + [50.0, 50.0])
  s = rl.summarize(ms)
  assert s["p50_ms"] == 1.0 and s["p99_ms"] == pytest.approx(50.0) and s["max_ms"] == 50.0 and s["calls"] == 100


def test_measure_times_every_call_in_every_round(monkeypatch):
  # A fake clock (the machine's scheduler must not decide this test): a call advances it by 0.1 ms, a "slow"
  # call by 30 ms more.
  from semrec.benchmarks import timing
  clock = {"t": 0.0}
  monkeypatch.setattr(timing.time, "perf_counter", lambda: clock["t"])
  n = {"slow": 0, "fast": 0}

  def slow():
    n["slow"] += 1
    clock["t"] += 1e-4 + (0.03 if n["slow"] % 20 == 0 else 0.0)  # every 20th timed-or-warm-up call is slow

  def fast():
    n["fast"] += 1
    clock["t"] += 1e-4

  res = rl.measure({"slow": slow, "fast": fast}, rounds=3, repeats=40, chunk=10, warmup=2)
  for name in ("slow", "fast"):
    assert len(res[name]["rounds"]) == 3 and res[name]["all"]["calls"] == 120
    assert all(r["calls"] == 40 and len(r["load_before"]) == 3 for r in res[name]["rounds"])
  assert n == {"slow": 122, "fast": 122}  # 2 warm-up + 3 rounds x 40
  # 6 of the 120 timed slow calls (calls 20, 40, ..., 120 counting the warm-up ones) took 30.1 ms: the pooled
  # max and p99 see them, and only the slow model's statistics do.
  assert res["slow"]["all"]["max_ms"] == pytest.approx(30.1) and res["slow"]["all"]["p99_ms"] == pytest.approx(30.1)
  assert res["fast"]["all"]["max_ms"] == pytest.approx(0.1)
  assert res["slow"]["median_round_p99_ms"] == pytest.approx(30.1)


def test_measure_interleaves_unequal_chunks():
  # repeats 20 with chunks {a: 10, b: 2}: ceil(20 / 10) = 2 steps per round -> a 20 calls, b 4 calls a round.
  order = []
  res = rl.measure({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=2, repeats=20,
                   chunk={"a": 10, "b": 2}, warmup=0)
  assert res["a"]["all"]["calls"] == 40 and res["b"]["all"]["calls"] == 8
  assert order[:24] == ["a"] * 10 + ["b"] * 2 + ["a"] * 10 + ["b"] * 2
