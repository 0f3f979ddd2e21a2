"""The one timing loop every benchmark uses: warm-up calls, then wall-clock times of repeated calls."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np


def call_times(fn: Callable[[], object], repeats: int, warmup: int = 1) -> np.ndarray:
  """[repeats] float64 seconds of ``fn()`` calls, after ``warmup`` untimed calls."""
  for _ in range(warmup):
    fn()
  times = np.empty(repeats, np.float64)
  for i in range(repeats):
    t = time.perf_counter()
    fn()
    times[i] = time.perf_counter() - t
  return times
