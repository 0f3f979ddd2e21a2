"""The representation comparison of Singh et al. (Figures 2 and 3) on any dataset.

Every item representation (random hash, dense content, unigram / bigram / prefix SID n-grams, SPM,
SPM + hash) is a configuration of the same :class:`Ranker`; each is trained with the same sequential
protocol, data and seed at several embedding-table budgets, with and without the user's history,
and judged on AUC overall and on items first seen in the eval period (cold AUC, the paper's CTR/1D).
Tables and the plot of the results: ``semrec.ranking.experiment_report`` (re-exported here).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from semrec.config import to_dict
from semrec.data import ItemFeatures, RecDataset
from semrec.ranking.experiment_report import (STAT_COLUMNS, format_budget_table, format_summary,  # noqa: F401
                                              plot_experiment, summarise, write_outputs)
from semrec.ranking.model import RankerConfig
from semrec.ranking.training import SequentialData, prepare_sequential, train_sequential

logger = logging.getLogger(__name__)

# Experiment mode name -> ItemRepresentationConfig.modes.
MODE_COMPONENTS = {
    "random_hash": ("random_hash",),
    "dense": ("dense",),
    "unigram": ("unigram",),
    "bigram": ("bigram",),
    "prefix": ("prefix",),
    "spm": ("spm",),
    "spm+hash": ("spm", "random_hash"),
}
ALL_MODES = tuple(MODE_COMPONENTS)
# The main job's headline comparison (fits in ~3 minutes on MovieLens on 2 cores).
HEADLINE_MODES = ("random_hash", "unigram", "bigram", "spm")
HEADLINE_BUDGETS = (1024, 4096)


@dataclasses.dataclass
class ExperimentResult:
  """Output of :func:`run_ranking_experiment`.

  Attributes:
    runs: One row per (use_history, mode, budget, seed, task): auc, cold_auc, warm_auc, rows, ...
    summary: Mean and std over seeds per (use_history, mode, budget, task), with the paired
      difference to random hashing at the same budget (``d_auc_vs_hash``, ``d_cold_auc_vs_hash``).
    split: Summary of the sequential split (periods, eval and cold sizes).
    seconds: Wall time of the whole experiment.
    files: Paths written (table CSV/Markdown/JSON, PNG) when ``output_dir`` was given.
  """
  runs: pd.DataFrame
  summary: pd.DataFrame
  split: dict
  seconds: float
  files: dict

  def markdown(self, task: Optional[str] = None) -> str:
    return format_summary(self.summary, task=task)


def _rep_config(mode: str, budget: int, num_levels: int, codebook_size: int, embedding_dim: int,
                content_dim: int):
  from semrec.sid.adapters import ItemRepresentationConfig
  return ItemRepresentationConfig(modes=MODE_COMPONENTS[mode], combiner="sum", embedding_dim=embedding_dim,
                                  num_levels=num_levels, codebook_size=codebook_size, table_budget=int(budget),
                                  hash_buckets=int(budget), content_dim=content_dim if mode == "dense" else 0)


def _budget_independent(mode: str, num_levels: int, codebook_size: int, budgets: Sequence[int]) -> bool:
  """True when the mode allocates the same table at every budget (so one run serves all budgets)."""
  from semrec.sid import budget as sb
  if mode == "dense":
    return True
  if mode in sb.NGRAM_MODES:
    return len({sb.table_rows(mode, num_levels, codebook_size, b) for b in budgets}) == 1
  return False


@dataclasses.dataclass
class _Sweep:
  """What every run of one sweep shares: the data, L/K/D, the SPMs and lookup statistics per budget."""
  data: SequentialData
  codes: np.ndarray
  L: int
  K: int
  D: int
  base: RankerConfig
  embedding_dim: int
  budgets: tuple
  spms: dict
  stats: dict
  checkpoint_dir: Optional[str]


def _check_inputs(item_features: ItemFeatures, modes, budgets, seeds, use_history, codebook_size):
  """Validates the sweep arguments; returns (modes, sorted budgets, codes, L, K, D)."""
  modes = tuple(modes)
  unknown = [m for m in modes if m not in MODE_COMPONENTS]
  if unknown:
    raise ValueError(f"unknown representation mode(s) {unknown}; expected some of {ALL_MODES}")
  if not modes or not budgets or not seeds or not use_history:
    raise ValueError("modes, budgets, seeds and use_history must all be non-empty")
  budgets = tuple(sorted(int(b) for b in budgets))
  if "sid" not in item_features.arrays:
    raise ValueError("item_features has no 'sid' array ([N, L] int32 SID codes)")
  codes = np.asarray(item_features.arrays["sid"])
  L = int(codes.shape[1])
  K = int(codebook_size or int(codes.max()) + 1)
  if "dense" in modes and "content" not in item_features.arrays:
    raise ValueError("mode 'dense' needs item_features 'content' ([N, D] content embeddings)")
  D = int(np.asarray(item_features.arrays["content"]).shape[1]) if "content" in item_features.arrays else 0
  if any(m.startswith("spm") for m in modes) and budgets[0] < L * K + 1:
    raise ValueError(f"SPM modes need every budget >= L*K + 1 = {L * K + 1}; got budgets {budgets}")
  return modes, budgets, codes, L, K, D


def _fit_spm(sw: _Sweep, budget: int):
  """The budget's SPM, trained on the training periods' impression-weighted SIDs (cached on disk
  in the checkpoint directory, so a resumed sweep reuses the same piece table)."""
  from semrec.sid.spm import SidSpm, train_sid_spm
  path = os.path.join(sw.checkpoint_dir, f"spm_{budget}") if sw.checkpoint_dir else None
  if path and os.path.exists(os.path.join(path, "sid_spm.json")):
    return SidSpm.load(path)
  spm = train_sid_spm(sw.codes, sw.data.item_impressions(), vocab_size=budget, codebook_size=sw.K,
                      item_ids=sw.data.item_features.item_ids)
  if path:
    from semrec.atomic import atomic_directory
    with atomic_directory(path) as tmp:
      spm.save(tmp)
  return spm


def _mode_stats(sw: _Sweep, mode: str, budget: int) -> dict:
  """Lookup statistics (``piece_stats.lookup_statistics``) of the mode's first table component."""
  from semrec.ranking.piece_stats import lookup_statistics, representation_lookups
  from semrec.ranking.training import build_item_representation
  comp = [m for m in MODE_COMPONENTS[mode] if m != "dense"]
  if not comp:
    return {}
  rep = _rep_config(mode, budget, sw.L, sw.K, sw.embedding_dim, sw.D)
  layer = build_item_representation(rep, sw.data, spm=sw.spms.get(budget))
  fi = sw.data.item_features
  rows = representation_lookups(layer, sw.codes, fi.item_ids)[comp[0]]
  return lookup_statistics(rows, sw.data.item_impressions(), fi.index_of(sw.data.split.cold_items))


def _plan(modes, budgets, seeds, use_history, L: int, K: int) -> list:
  """(use_history, mode, budget, seed) per run: largest budget first, then history setting, then seed,
  so a sweep cut short has complete seed statistics for the largest tables first. A budget-independent
  mode runs once (at the smallest budget, whose rows stand for every budget), in the first pass."""
  plan = []
  for i, b in enumerate(sorted(budgets, reverse=True)):
    for hist in use_history:
      for seed in seeds:
        for mode in modes:
          if not _budget_independent(mode, L, K, budgets):
            plan.append((bool(hist), mode, b, int(seed)))
          elif i == 0:
            plan.append((bool(hist), mode, budgets[0], int(seed)))
  return plan


def _run_key(hist: bool, mode: str, budget: int, seed: int) -> str:
  return f"{'hist' if hist else 'nohist'}_{mode.replace('+', '-')}_{budget}_s{seed}"


def _train_one(sw: _Sweep, hist: bool, mode: str, budget: int, seed: int) -> list:
  """Trains one configuration; returns its result rows (one per task and budget it stands for)."""
  from semrec.ranking.training import build_item_representation
  from semrec.sid import budget as sb
  rep_cfg = _rep_config(mode, budget, sw.L, sw.K, sw.embedding_dim, sw.D)
  cfg = dataclasses.replace(sw.base, item_representation=rep_cfg, use_history=hist, seed=seed)
  spm = sw.spms.get(budget) if "spm" in rep_cfg.modes else None
  layer = build_item_representation(rep_cfg, sw.data, spm=spm)
  run = train_sequential(cfg, item_representation=layer, data=sw.data, progress=False)
  n_rows = sum(sb.table_rows(m, sw.L, sw.K, budget, budget) for m in rep_cfg.modes)
  extra = {"spm_vocab": spm.vocab_size if spm is not None else np.nan, **sw.stats.get((mode, budget), {})}
  same_for = sw.budgets if _budget_independent(mode, sw.L, sw.K, sw.budgets) else (budget,)
  return [{"use_history": hist, "mode": mode, "budget": rb, "rows": int(n_rows), "seed": seed, "task": task,
           "auc": m["auc"], "cold_auc": m["cold_auc"], "warm_auc": m["warm_auc"], "n_eval": m["n"],
           "n_cold": m["n_cold"], **extra, "train_seconds": run.train_seconds,
           "examples_per_second": run.examples_per_second}
          for task, m in run.metrics.items() for rb in same_for]


def _load_or_train(sw: _Sweep, hist: bool, mode: str, budget: int, seed: int, train: bool = True) -> list:
  """A finished configuration's rows from its checkpoint file, or trains it and writes that file
  (atomically, on completion: a kill loses at most the configuration in progress). A damaged file (e.g.
  edited or truncated outside semrec) is retrained, with a warning naming it. With ``train=False`` an
  unfinished configuration gives no rows."""
  from semrec.atomic import CorruptArtefactError, read_json, write_json
  path = os.path.join(sw.checkpoint_dir, "runs", _run_key(hist, mode, budget, seed) + ".json") \
      if sw.checkpoint_dir else None
  if path and os.path.exists(path):
    try:
      rows = read_json(path, "ranking sweep configuration")["rows"]
      if isinstance(rows, list) and rows:
        return rows
      raise CorruptArtefactError(f"{path}: no result rows")
    except (CorruptArtefactError, KeyError, TypeError) as e:
      logger.warning("%s: damaged finished configuration (%s); training it again", path, e)
  if not train:
    return []
  rows = _train_one(sw, hist, mode, budget, seed)
  if path:
    write_json(path, {"rows": rows})
  return rows


def _same_sweep(have, want, defaults) -> bool:
  """Whether a stored sweep identity ``have`` equals ``want``; a key only in ``want`` is accepted when it
  holds its value in ``defaults`` (a config field added after the checkpoint was written, at its default,
  changes nothing in the runs)."""
  if not (isinstance(have, dict) and isinstance(want, dict)):
    return have == want
  defaults = defaults if isinstance(defaults, dict) else {}
  if set(have) - set(want) or any(k not in defaults or want[k] != defaults[k] for k in set(want) - set(have)):
    return False
  return all(_same_sweep(have[k], want[k], defaults.get(k)) for k in have)


def _check_checkpoint(checkpoint_dir: str, identity: dict, defaults: dict):
  """Creates the checkpoint folder, or checks that it belongs to the same sweep (same data and config;
  ``defaults`` has the identity's layout with default config values, see :func:`_same_sweep`)."""
  from semrec.atomic import write_json
  os.makedirs(os.path.join(checkpoint_dir, "runs"), exist_ok=True)
  path = os.path.join(checkpoint_dir, "sweep.json")
  norm = lambda x: json.loads(json.dumps(x, default=str))  # noqa: E731
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      have = json.load(f)
    if not _same_sweep(have, norm(identity), norm(defaults)):
      raise ValueError(f"{checkpoint_dir}: the checkpoint holds a different sweep (data or base config changed); "
                       "use another checkpoint_dir or delete it")
  else:
    write_json(path, identity)


def run_ranking_experiment(dataset: Optional[RecDataset], item_features: ItemFeatures,
                           modes: Sequence[str] = HEADLINE_MODES, budgets: Sequence[int] = HEADLINE_BUDGETS,
                           seeds: Sequence[int] = (0,), use_history: Sequence[bool] = (True, False),
                           codebook_size: Optional[int] = None, num_periods: int = 10,
                           base_config: Optional[RankerConfig] = None, embedding_dim: int = 32,
                           output_dir: Optional[str] = None, data: Optional[SequentialData] = None,
                           progress: bool = True, checkpoint_dir: Optional[str] = None,
                           title: str = "", finished_only: bool = False) -> ExperimentResult:
  """Trains every (history setting, mode, budget, seed) ranker and tabulates AUC / cold AUC.

  Args:
    dataset: Interactions with the task columns (``label``, ``like``) and timestamps (unused when
      ``data`` is given).
    item_features: ``sid`` [N, L] int32 codes per item (and ``content`` [N, D] for ``dense``).
    modes: Names from ``ALL_MODES``: random_hash, dense, unigram, bigram, prefix, spm, spm+hash.
    budgets: Embedding-table budgets (rows): hash buckets for random_hash, the SPM vocabulary, the
      hashed row count of n-gram modes whose exact id space is larger (see ``semrec.sid.budget``).
      SPM needs budget >= L * K + 1.
    seeds: Seeds (weight init + shuffling); the data and split are the same for all.
    use_history: Which history settings to run (paper Figure 3 = True, Figure 2 = False).
    codebook_size: K (default: max code + 1).
    num_periods: Sequential protocol periods (train on the first N-1, evaluate on the last).
    base_config: Template :class:`RankerConfig` (MLP sizes, lr, batch size, tasks...).
    embedding_dim: d of every representation.
    output_dir: If set, writes ``ranking_experiment.{csv,md,json}`` and ``ranking_experiment.png``.
    data: Precomputed :class:`SequentialData` (else built from ``dataset``; e.g. from a
      ``daily_split`` for the day-by-day protocol).
    progress: tqdm bar over runs.
    checkpoint_dir: If set, every finished (history, mode, budget, seed) configuration is written there
      atomically on completion (``runs/<key>.json``) and the SPMs are cached; a rerun with the same directory
      (after a kill after configuration k) trains only the configurations k+1..n that did not finish. A
      directory holding another sweep (other data or base config) is refused.
    title: Dataset name shown in the PNG.
    finished_only: Report the configurations already in ``checkpoint_dir`` and train nothing (the
      tables of a sweep still running, or cut short).

  Returns:
    An :class:`ExperimentResult`.
  """
  start = time.perf_counter()
  modes, budgets, codes, L, K, D = _check_inputs(item_features, modes, budgets, seeds, use_history, codebook_size)
  base = base_config or RankerConfig(batch_size=512)
  data = data or prepare_sequential(dataset.interactions, item_features, num_periods, base.history_length,
                                    base.tasks)
  if checkpoint_dir:
    _check_checkpoint(checkpoint_dir, {"base": to_dict(base), "embedding_dim": embedding_dim, "L": L, "K": K,
                                       "split": data.split.summary(), "codes_sum": int(codes.sum())},
                      defaults={"base": to_dict(RankerConfig())})
  sw = _Sweep(data=data, codes=codes, L=L, K=K, D=D, base=base, embedding_dim=embedding_dim, budgets=budgets,
              spms={}, stats={}, checkpoint_dir=checkpoint_dir)
  if not finished_only:  # (finished rows carry their statistics)
    if any(m.startswith("spm") for m in modes):
      sw.spms = {b: _fit_spm(sw, b) for b in budgets}
    sw.stats = {(m, b): _mode_stats(sw, m, b) for m in modes for b in budgets}
  plan = _plan(modes, budgets, seeds, use_history, L, K)
  if finished_only and not checkpoint_dir:
    raise ValueError("finished_only needs a checkpoint_dir")
  rows = [r for cfg in tqdm(plan, desc="ranking experiment", disable=not progress)
          for r in _load_or_train(sw, *cfg, train=not finished_only)]
  runs = pd.DataFrame(rows)
  result = ExperimentResult(runs=runs, summary=summarise(runs), split=data.split.summary(),
                            seconds=time.perf_counter() - start, files={})
  if output_dir:
    result.files = write_outputs(result, output_dir, title=title)
  return result
