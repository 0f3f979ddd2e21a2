"""The one tuner of the score blocks' post-hoc weights (``semrec.towers.score_blocks``), on validation.

Shape letters: V validation queries, N catalogue items, d served width, Q quality features, K query vectors.

Every post-hoc weight is chosen by one rule, ``choose_point``: among the grid points whose validation cold
Recall stays at or above a floor (the cold constraint), the first with the highest objective. Grid order
puts the weight that changes nothing first (a = 0, w = 0), so ties keep the trained model as it is.

- Content block (``tune_content_mix``): a from ``ScoreConfig.alpha_grid``, the pooling ("mean" / "max") when
  ``content_mix_pooling="auto"``, b in {0, 1} when ``content_mix_lexical="auto"``; objective the validation
  selection score (``semrec.towers.selection_score``: warm and cold Recall@k weighed by
  ``FitConfig.cold_weight``); cold floor ``max_cold_drop`` (default None: the selection score already weighs
  the cold slice, and the content block is what adds cold recall).
- Quality block (``tune_quality_weights``): w by coordinate-wise search over ``grid``; objective
  (Recall@k, NDCG@10) over all validation queries; cold floor (1 - ``max_cold_drop``) x the cold Recall@k at
  w = 0, so a w that buys warm recall by burying new items is never chosen (w = 0 always satisfies it).
"""
from __future__ import annotations

from typing import Hashable, Mapping, Optional, Sequence, Tuple

import numpy as np

from semrec.towers.evaluation import dot_scores

# Values tried for each coordinate of the quality weights w (q.p is a cosine when the towers normalise).
DEFAULT_QUALITY_GRID = (-0.5, -0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.2, 0.5, 1.0)


def choose_point(objective: Mapping[Hashable, object], cold: Optional[Mapping[Hashable, Optional[float]]] = None,
                 cold_floor: Optional[float] = None) -> Tuple[Hashable, int]:
  """The best grid point of a validation score table under the cold constraint.

  Args:
    objective: {point: objective value} in grid order (numbers, or tuples compared lexicographically).
    cold: {point: cold-slice recall or None (no cold queries)}; needed with ``cold_floor``.
    cold_floor: Points whose cold recall is below it are not chosen (None = no constraint).

  Returns:
    (the first point with the highest objective among those meeting the floor, the number of points that
    would have beaten the best so far but were refused by the floor). Raises ValueError when none meets it.
  """
  best, rejected = None, 0
  for point, value in objective.items():
    if best is not None and not value > objective[best]:
      continue
    c = cold[point] if cold is not None and cold_floor is not None else None
    if c is not None and c < cold_floor - 1e-12:
      rejected += 1
      continue
    best = point
  if best is None:
    raise ValueError(f"no grid point meets the cold floor {cold_floor} (points: {list(objective)})")
  return best, rejected


def tune_content_mix(model, inputs, valid, fit, max_cold_drop: Optional[float] = None,
                     max_cells: int = 8_000_000) -> dict:
  """Sets the model's content block (``model.score_blocks["content"]``) to the best validation grid point.

  Grid: a in ``ScoreConfig.alpha_grid`` x the pooling (both with ``content_mix_pooling="auto"``) x b in {0, 1}
  (with ``content_mix_lexical="auto"``), in the order (b, pooling, a); chosen by ``choose_point`` on the
  validation selection score (``fit.selection_k``, ``fit.cold_weight``), ties to the first (b = 0, "mean",
  small a). With ``max_cold_drop`` the cold Recall@k must stay >= (1 - max_cold_drop) x its value at a = 0.

  The score of a grid point is learned + a * m, with m the content score of (pooling, b) (for "max", the best
  of the K history vectors: max_t [q ; a x_t] . [p ; x] = q . p + a max_t x_t . x for a >= 0). So the towers
  run and the [V, N] score matrices are computed once per (pooling, b) and chunk of at most ``max_cells`` / N
  validation queries; each a only adds and ranks.

  Returns {"alpha": a, "pooling": str, "lexical_weight": b or None (no lexical channel),
  "scores": {"<pooling>" or "<pooling>+lexical": {a: score}}} (a = 0 is the learned model alone).
  """
  from semrec.towers.evaluation import query_metrics, slice_metrics
  from semrec.towers.model import embed_candidates
  from semrec.towers.score_blocks import MIX_POOLINGS
  from semrec.towers.training import query_embeddings, selection_score
  block = model.score_blocks["content"]
  scores_cfg = model.config.scores
  if not len(valid):
    raise ValueError("tune_content_mix needs validation queries (the split has none)")
  cands = embed_candidates(model, inputs)  # the content part of a candidate does not depend on a, b or pooling
  w = cands.shape[-1] - block.width(inputs.item_features.arrays)  # [learned (+ quality) ; content block] columns
  poolings = MIX_POOLINGS if block.tunable_pooling else (block.pooling,)
  lexical = {"off": (None,), "on": (1.0,), "auto": (0.0, 1.0)}[scores_cfg.content_mix_lexical]
  grid = scores_cfg.alpha_grid
  points = [(b, p, float(a)) for b in lexical for p in poolings for a in grid]
  ids = inputs.item_features.item_ids
  per_query = {pt: [] for pt in points}
  step = max(1, max_cells // max(len(ids), 1))
  for s in range(0, len(valid), step):
    sub = valid.subset(np.arange(s, min(s + step, len(valid))))
    learned = None
    for b in lexical:
      for p in poolings:
        block.apply({"alpha": 1.0, "pooling": p, "lexical_weight": b})
        q1 = query_embeddings(model, inputs, sub)  # [q, (K,) d'] with a = 1
        if learned is None:  # [q, N]: the same for every (pooling, b)
          learned = dot_scores(q1[:, 0, :w] if q1.ndim == 3 else q1[:, :w], cands[:, :w])
        mix = dot_scores(q1[..., w:], cands[:, w:])  # [q, N] content score of (pooling, b)
        for a in grid:
          if a == 0 and (b, p) != points[0][:2]:
            continue  # a = 0 is the learned model alone whatever the pooling and b
          per_query[(b, p, float(a))].append(query_metrics(lambda r: learned[r] + np.float32(a) * mix[r], sub, ids,
                                                           ks=(fit.selection_k,)))
  objective, cold = {}, {}
  key = f"recall@{fit.selection_k}"
  for pt in points:
    chunks = per_query[pt] or per_query[points[0][:2] + (0.0,)]
    pq = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0] if k != "rank"}
    m = slice_metrics(pq, np.asarray(valid.cold, bool))
    objective[pt] = selection_score(m, fit.selection_k, fit.cold_weight, fit.min_cold_queries)
    cold[pt] = m["cold"][key] if "cold" in m else None
  floor = None
  base = points[0][:2] + (0.0,)
  if max_cold_drop is not None and base in cold and cold[base] is not None:
    floor = (1.0 - max_cold_drop) * cold[base]
  (b, p, a), _ = choose_point(objective, cold, floor)
  block.apply({"alpha": a, "pooling": p, "lexical_weight": b})
  scores = {}
  for (pb, pp, pa), score in objective.items():
    scores.setdefault(pp + ("+lexical" if pb else ""), {})[pa] = score
  return {"alpha": a, "pooling": p, "lexical_weight": b, "scores": scores}


def _validation_scores(query_base, candidate_base, target_rows, exclude) -> Tuple[np.ndarray, np.ndarray]:
  """([V, N] float32 q.p with each query's excluded rows at -inf (its target kept), [V] int64 targets)."""
  base = dot_scores(query_base, candidate_base)  # [V, N]; max over K for multi-interest [V, K, d] queries
  t = np.asarray(target_rows, np.int64)
  if exclude is not None:
    for i, ex in enumerate(exclude):
      ex = np.asarray(ex, np.int64)
      base[i, ex[ex != t[i]]] = -np.inf
  return base, t


def tune_quality_weights(query_base: np.ndarray, candidate_base: np.ndarray, quality: np.ndarray,
                         target_rows: np.ndarray, exclude=None, grid: Sequence[float] = DEFAULT_QUALITY_GRID,
                         k: int = 100, passes: int = 2, query_weights: Optional[np.ndarray] = None,
                         cold: Optional[np.ndarray] = None, max_cold_drop: Optional[float] = 0.1
                         ) -> Tuple[np.ndarray, dict]:
  """Coordinate-wise grid search for the Etsy w on a validation window (towers frozen), cold-constrained.

  For each pass and coordinate j, the points are [current w] + [w with w_j = v for v in ``grid``] and
  ``choose_point`` keeps the best: (weighted) Recall@k over all validation queries, ties broken by NDCG@10,
  subject to the cold slice's Recall@k staying >= (1 - ``max_cold_drop``) x its value at w = 0.

  Args:
    query_base: [V, d] (or [V, K, d]) validation query embeddings q (without w).
    candidate_base: [N, d] candidate embeddings p (without f).
    quality: [N, Q] f(p) of the same candidates (computed only from data before the window).
    target_rows: [V] row of each validation query's target in ``candidate_base``.
    exclude: optional per-query arrays of candidate rows to remove (items seen before).
    grid: candidate values for each coordinate of w.
    k: the Recall@k cut-off optimised.
    passes: sweeps over the Q coordinates.
    query_weights: optional [V] non-negative weights of the queries in the objective.
    cold: optional [V] bool, True where the target is a new item (no interaction before the window).
    max_cold_drop: allowed relative drop of cold Recall@k (0.1 = within 10%); None = unconstrained.

  Returns:
    (w [Q] float32, info) with info = {"recall", "ndcg@10", "warm_recall", "cold_recall" (at w),
    "baseline_recall", "baseline_warm_recall", "baseline_cold_recall" (at w = 0), "cold_floor",
    "cold_queries", "rejected_by_cold_constraint", "evaluations"}; slice values are None without queries.
  """
  base, t = _validation_scores(query_base, candidate_base, target_rows, exclude)
  f = np.asarray(quality, np.float32)
  rows = np.arange(len(t))
  qw = np.ones(len(t)) if query_weights is None else np.asarray(query_weights, np.float64)
  if qw.shape != (len(t),) or (qw < 0).any() or qw.sum() <= 0:
    raise ValueError(f"query_weights must be {len(t)} non-negative values with a positive sum")
  is_cold = np.zeros(len(t), bool) if cold is None else np.asarray(cold, bool)
  if is_cold.shape != (len(t),):
    raise ValueError(f"cold must be {len(t)} booleans, got shape {is_cold.shape}")
  if max_cold_drop is not None and not 0.0 <= max_cold_drop <= 1.0:
    raise ValueError(f"max_cold_drop must be in [0, 1] or None, got {max_cold_drop}")

  def evaluate(w):
    s = base + (f @ w)[None, :]
    rank = (s > s[rows, t][:, None]).sum(axis=1)
    hit = (rank < k).astype(np.float64)
    sl = lambda m: float(hit[m].mean()) if m.any() else None  # noqa: E731
    return {"recall": float(np.average(hit, weights=qw)),
            "ndcg@10": float(np.average(np.where(rank < 10, 1.0 / np.log2(rank + 2.0), 0.0), weights=qw)),
            "warm_recall": sl(~is_cold), "cold_recall": sl(is_cold)}

  w = np.zeros(f.shape[1], np.float32)
  best = baseline = evaluate(w)
  floor = None
  if max_cold_drop is not None and baseline["cold_recall"] is not None:
    floor = (1.0 - max_cold_drop) * baseline["cold_recall"]
  evals, rejected = 1, 0
  for _ in range(passes):
    for j in range(f.shape[1]):
      results = {-1: best}  # point -1: the current w
      for i, v in enumerate(grid):
        cand = w.copy()
        cand[j] = v
        results[i] = evaluate(cand)
      evals += len(grid)
      choice, refused = choose_point({i: (r["recall"], r["ndcg@10"]) for i, r in results.items()},
                                     {i: r["cold_recall"] for i, r in results.items()}, floor)
      rejected += refused
      if choice >= 0:
        w = w.copy()
        w[j] = grid[choice]
        best = results[choice]
  info = {**best, **{f"baseline_{m}": baseline[m] for m in ("recall", "warm_recall", "cold_recall")},
          "cold_floor": floor, "cold_queries": int(is_cold.sum()), "rejected_by_cold_constraint": rejected,
          "evaluations": evals}
  return w, info


__all__ = ["DEFAULT_QUALITY_GRID", "choose_point", "tune_content_mix", "tune_quality_weights"]
