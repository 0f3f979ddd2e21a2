"""Exact AUC and the overall / cold-item slices reported by the ranking evaluation."""
from __future__ import annotations

from typing import Mapping

import numpy as np


def auc(labels, scores) -> float:
  """Exact ROC AUC (Mann-Whitney U with tied scores counted as 1/2).

  Args:
    labels: [n] {0, 1} targets.
    scores: [n] float scores (any monotone scale).

  Returns:
    The AUC, or NaN when ``labels`` hold only one class (AUC is undefined there).
  """
  y = np.asarray(labels, np.float64).reshape(-1)
  s = np.asarray(scores, np.float64).reshape(-1)
  if y.shape != s.shape:
    raise ValueError(f"labels and scores must have the same length, got {y.shape} and {s.shape}")
  if not np.isfinite(s).all():
    raise ValueError("scores contain NaN/inf")
  pos = y > 0.5
  n_pos, n_neg = int(pos.sum()), int((~pos).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  order = np.argsort(s, kind="mergesort")
  s_sorted = s[order]
  ranks = np.empty(len(s), np.float64)
  # Average ranks over ties (1-based).
  _, first, counts = np.unique(s_sorted, return_index=True, return_counts=True)
  avg = first + (counts + 1) / 2.0
  ranks[order] = np.repeat(avg, counts)
  u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def sliced_auc(labels: Mapping[str, np.ndarray], scores: Mapping[str, np.ndarray], cold_mask) -> dict:
  """Per task: AUC overall, on cold items and on warm items, with example and positive counts.

  Args:
    labels: task -> [n] {0, 1} targets.
    scores: task -> [n] predicted scores.
    cold_mask: [n] bool, True where the candidate item is cold (first seen in the eval period).

  Returns:
    ``{task: {"auc", "cold_auc", "warm_auc", "n", "n_cold", "pos_rate", "cold_pos_rate"}}``.
  """
  cold = np.asarray(cold_mask, bool)
  out = {}
  for task, y in labels.items():
    y = np.asarray(y)
    s = np.asarray(scores[task]).reshape(-1)
    out[task] = {
        "auc": auc(y, s),
        "cold_auc": auc(y[cold], s[cold]),
        "warm_auc": auc(y[~cold], s[~cold]),
        "n": int(len(y)),
        "n_cold": int(cold.sum()),
        "pos_rate": float(y.mean()) if len(y) else float("nan"),
        "cold_pos_rate": float(y[cold].mean()) if cold.any() else float("nan"),
    }
  return out
