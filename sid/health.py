"""SID health: is every code used, are IDs unique, do shared prefixes mean shared content?

Shape letters: N items, L levels, K codes per level, F content width.

``sid_health`` returns a JSON-serialisable dict; ``format_health_table`` renders it as Markdown;
``plot_code_usage`` writes a PNG of per-level code-usage histograms (matplotlib, Agg backend).

Prefix table: for each prefix length l = 1..L, the items sharing a prefix of length (at least) l
form groups (sub-tries); the table gives the mean pairwise cosine of the content embeddings over
pairs drawn from the same group, the number of groups and the mean group (sub-trie) size. Row
l = 0 is random item pairs. When a level has more than ``max_pairs`` same-group pairs, pairs are
sampled uniformly over all same-group pairs (never N^2 work).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from semrec.atomic import save_figure, write_text
from semrec.data import DataError
from semrec.sid.kmeans import validate_embeddings


def _check_codes(codes, codebook_size: int, item_ids=None) -> np.ndarray:
  codes = np.asarray(codes)
  if codes.ndim != 2:
    raise DataError(f"codes: expected [num_items, num_levels], got shape {codes.shape}")
  if codes.shape[0] == 0:
    raise DataError("codes: empty (0 items)")
  if not np.issubdtype(codes.dtype, np.integer):
    raise DataError(f"codes: expected integers, got dtype {codes.dtype}")
  bad = (codes < 0) | (codes >= codebook_size)
  if bad.any():
    row = int(np.flatnonzero(bad.any(axis=1))[0])
    who = f" (item {item_ids[row]!r})" if item_ids is not None else ""
    raise DataError(f"codes: row {row}{who} has out-of-range codes {codes[row].tolist()} for K={codebook_size}")
  return codes.astype(np.int64)


def _group_pairs(keys_inverse: np.ndarray, counts: np.ndarray, max_pairs: int, rng) -> tuple:
  """Pairs (i, j), i != j, of items in the same group: all of them or a uniform sample."""
  order = np.argsort(keys_inverse, kind="stable")
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  pair_counts = counts * (counts - 1) // 2
  total = int(pair_counts.sum())
  if total == 0:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
  if total <= max_pairs:
    ii, jj = [], []
    for g in np.flatnonzero(counts >= 2):
      members = order[starts[g]:starts[g] + counts[g]]
      a, b = np.triu_indices(len(members), 1)
      ii.append(members[a])
      jj.append(members[b])
    return np.concatenate(ii), np.concatenate(jj), total
  g = rng.choice(len(counts), size=max_pairs, p=pair_counts / total)
  n = counts[g]
  a = rng.integers(0, n)
  b = rng.integers(0, n - 1)
  b = b + (b >= a)
  return order[starts[g] + a], order[starts[g] + b], total


def sid_health(codes, embeddings, codebook_size: int, reconstructions=None, item_ids=None,
               max_pairs: int = 200_000, seed: int = 0) -> dict:
  """Health metrics of a SID assignment.

  Args:
    codes: [N, L] int codes.
    embeddings: [N, F] content embeddings of the same items (cosines use row-normalised copies).
    codebook_size: K.
    reconstructions: optional [N, F] model reconstructions (adds MSE and cosine).
    item_ids: optional [N] ids for error messages.
    max_pairs: cap on pairs per prefix level (sampled beyond it) and for the random baseline.
    seed: pair sampling seed.

  Returns:
    dict with "num_items", "num_levels", "codebook_size", "levels" (per level: utilisation,
    used_codes, dead_codes, perplexity, largest_code_share), "unique_ratio", "num_unique_sids",
    "collision_groups" ({group size: number of SIDs with that many items}), "max_collision_group",
    "items_in_collisions", "reconstruction" (mse, cosine; or None), "prefix_table" (rows l = 0..L),
    "prefix_cosine_strictly_rising".

  Raises:
    DataError: empty input, misaligned rows, wrong widths, NaN/inf rows, out-of-range codes.
    ValueError: K larger than the number of items.
  """
  codes = _check_codes(codes, codebook_size, item_ids)
  x = validate_embeddings(embeddings, item_ids=item_ids)
  n, num_levels = codes.shape
  if x.shape[0] != n:
    raise DataError(f"embeddings have {x.shape[0]} rows but codes have {n}")
  if codebook_size > n:
    raise ValueError(f"codebook_size K={codebook_size} is larger than the number of items N={n}; "
                     "utilisation cannot be judged")
  health = {"num_items": int(n), "num_levels": int(num_levels), "codebook_size": int(codebook_size),
            "levels": [{"level": l + 1} | _level_health(codes[:, l], codebook_size) for l in range(num_levels)]}
  health.update(_uniqueness(codes))
  health["reconstruction"] = _reconstruction(x, reconstructions, item_ids)
  rows = _prefix_table(codes, x, max_pairs, np.random.default_rng(seed))
  health["prefix_table"] = rows
  cosines = [r["mean_cosine"] for r in rows if r["mean_cosine"] is not None]
  health["prefix_cosine_strictly_rising"] = bool(len(cosines) == len(rows) and len(cosines) > 1
                                                  and all(b > a for a, b in zip(cosines, cosines[1:])))
  return health


def _level_health(level_codes: np.ndarray, codebook_size: int) -> dict:
  """Code usage of one level: [N] int codes -> utilisation, used / dead codes, perplexity, largest share."""
  n = len(level_codes)
  counts = np.bincount(level_codes, minlength=codebook_size)
  p = counts[counts > 0] / n
  return {"utilisation": float((counts > 0).sum() / codebook_size), "used_codes": int((counts > 0).sum()),
          "dead_codes": int((counts == 0).sum()), "perplexity": float(np.exp(-(p * np.log(p)).sum())),
          "largest_code_share": float(counts.max() / n)}


def _uniqueness(codes: np.ndarray) -> dict:
  """How many items share a full SID ([N, L] codes)."""
  n = len(codes)
  _, sid_counts = np.unique(codes, axis=0, return_counts=True)
  sizes, size_counts = np.unique(sid_counts, return_counts=True)
  return {"unique_ratio": float(len(sid_counts) / n), "num_unique_sids": int(len(sid_counts)),
          "collision_groups": {str(int(s)): int(c) for s, c in zip(sizes, size_counts)},
          "max_collision_group": int(sid_counts.max()),
          "items_in_collisions": float(sid_counts[sid_counts > 1].sum() / n)}


def _reconstruction(x: np.ndarray, reconstructions, item_ids) -> Optional[dict]:
  """MSE (per item, summed over dims; and per dim) and mean cosine of [N, F] reconstructions, or None."""
  if reconstructions is None:
    return None
  n = x.shape[0]
  r = validate_embeddings(reconstructions, item_ids=item_ids, expected_dim=x.shape[1], name="reconstructions")
  if r.shape[0] != n:
    raise DataError(f"reconstructions have {r.shape[0]} rows but codes have {n}")
  cos = (x * r).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(r, axis=1), 1e-12)
  return {"mse": float(((x - r) ** 2).sum(1).mean()), "mse_per_dim": float(((x - r) ** 2).mean()),
          "cosine": float(cos.mean())}


def _prefix_table(codes: np.ndarray, x: np.ndarray, max_pairs: int, rng: np.random.Generator) -> list[dict]:
  """Mean content cosine of item pairs sharing an SID prefix of length l = 1..L (row l = 0: random pairs)."""
  n, num_levels = codes.shape
  u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  m = min(max_pairs, n * (n - 1) // 2) if n > 1 else 0
  rows = []
  if m:
    i = rng.integers(0, n, size=m)
    j = rng.integers(0, n - 1, size=m)
    j = j + (j >= i)
    rows.append({"prefix_length": 0, "mean_cosine": float((u[i] * u[j]).sum(1).mean()), "pairs": int(m),
                 "pairs_total": int(n * (n - 1) // 2), "groups": 1, "mean_subtrie_size": float(n)})
  for l in range(1, num_levels + 1):
    _, inv, cnt = np.unique(codes[:, :l], axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    i, j, total = _group_pairs(inv, cnt, max_pairs, rng)
    rows.append({"prefix_length": l,
                 "mean_cosine": float((u[i] * u[j]).sum(1).mean()) if len(i) else None,
                 "pairs": int(len(i)), "pairs_total": int(total), "groups": int(len(cnt)),
                 "mean_subtrie_size": float(cnt.mean())})
  return rows


def format_health_table(health: dict) -> str:
  """Markdown rendering of ``sid_health`` output."""
  out = [f"Items: {health['num_items']}, levels L={health['num_levels']}, codebook K={health['codebook_size']}",
         "", "| level | utilisation | used / K | dead codes | perplexity | largest code share |",
         "| --- | --- | --- | --- | --- | --- |"]
  for lv in health["levels"]:
    out.append(f"| {lv['level']} | {lv['utilisation']:.1%} | {lv['used_codes']} / {health['codebook_size']} | "
               f"{lv['dead_codes']} | {lv['perplexity']:.1f} | {lv['largest_code_share']:.2%} |")
  out.append("")
  out.append(f"Unique-SID ratio (before suffix): {health['unique_ratio']:.4f} "
             f"({health['num_unique_sids']} distinct SIDs); items in collisions: "
             f"{health['items_in_collisions']:.2%}; largest collision group: {health['max_collision_group']}")
  groups = ", ".join(f"{k}: {v}" for k, v in sorted(health["collision_groups"].items(), key=lambda kv: int(kv[0])))
  out.append(f"Collision-group sizes (items per SID: number of SIDs): {groups}")
  if health.get("reconstruction"):
    rec = health["reconstruction"]
    out.append(f"Reconstruction: MSE {rec['mse']:.4f} (per item, sum over dims), cosine {rec['cosine']:.4f}")
  out += ["", "| shared prefix length | mean content cosine | pairs used / total | prefixes (sub-tries) | "
          "mean sub-trie size |", "| --- | --- | --- | --- | --- |"]
  for row in health["prefix_table"]:
    name = "random pairs" if row["prefix_length"] == 0 else str(row["prefix_length"])
    cos = "n/a" if row["mean_cosine"] is None else f"{row['mean_cosine']:.3f}"
    out.append(f"| {name} | {cos} | {row['pairs']} / {row['pairs_total']} | {row['groups']} | "
               f"{row['mean_subtrie_size']:.2f} |")
  out.append("")
  rising = "yes" if health["prefix_cosine_strictly_rising"] else "no"
  out.append(f"Mean cosine strictly rising with prefix length: {rising}")
  return "\n".join(out) + "\n"


def plot_code_usage(codes, codebook_size: int, path: str, title: Optional[str] = None) -> str:
  """Writes a PNG with one panel per level: items per code (sorted), with the uniform level N/K.

  Returns ``path``. Written atomically.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  codes = _check_codes(codes, codebook_size)
  n, num_levels = codes.shape
  fig, axes = plt.subplots(num_levels, 1, figsize=(8, 2.2 * num_levels), squeeze=False)
  for l in range(num_levels):
    counts = np.sort(np.bincount(codes[:, l], minlength=codebook_size))[::-1]
    ax = axes[l, 0]
    ax.bar(np.arange(codebook_size), counts, width=1.0, color="tab:blue")
    ax.axhline(n / codebook_size, color="tab:red", lw=1, ls="--", label="uniform N/K")
    used = int((counts > 0).sum())
    ax.set_title(f"level {l + 1}: {used}/{codebook_size} codes used", fontsize=9)
    ax.set_ylabel("items")
    ax.legend(fontsize=7, loc="upper right")
  axes[-1, 0].set_xlabel("codes, sorted by usage")
  if title:
    fig.suptitle(title, fontsize=10)
  return save_figure(fig, path, dpi=100)


def write_health_report(model, embeddings, out_dir: str, item_ids=None, title: Optional[str] = None,
                        **health_kwargs) -> dict:
  """Computes a trained model's health and writes ``health.json``, ``health.md`` and ``code_usage.png``.

  Args:
    model: a trained ``SidModel`` (anything with ``codes``, ``reconstruct``, ``codebook_size``).
    embeddings: [N, F] content embeddings to assess (usually the training catalogue).
    out_dir: output directory (created); each file is written atomically.
    item_ids: optional [N] ids for error messages.
    title: PNG title.

  Returns:
    the health dict (also printed by callers with ``format_health_table``).
  """
  import json

  x = validate_embeddings(embeddings, item_ids=item_ids, expected_dim=model.input_dim)
  codes = model.codes(x)
  health = sid_health(codes, x, model.codebook_size, reconstructions=model.reconstruct(x), item_ids=item_ids,
                      **health_kwargs)
  os.makedirs(out_dir, exist_ok=True)
  for name, text in (("health.json", json.dumps(health, indent=2)), ("health.md", format_health_table(health))):
    write_text(os.path.join(out_dir, name), text)
  plot_code_usage(codes, model.codebook_size, os.path.join(out_dir, "code_usage.png"), title=title)
  return health
