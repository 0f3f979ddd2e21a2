"""One-run comparison of retriever variants against non-learned baselines, on any ``semrec.data`` split.

A variant is a configuration of ONE model (``TwoTowerRetriever``): an item representation (the parts of the
shared ``ItemEncoder``) and a query tower. Names: ``<item>`` uses the pooled query tower (mean / attention /
GRU over the history, ``RetrieverConfig.query``), ``seq_<item>`` the causal self-attention tower
(``RetrieverConfig.sequential``). Item representations:
  hashed_id        hashed item-ID embedding only (no content: the classic baseline)
  content          Dense projection of the frozen content embedding
  cluster_id       trainable k-means cluster-ID embedding (Kuaishou), ids from the SID stage
  sid_unigram      SID unigram pieces (semrec.sid ItemRepresentation)
  sid_spm          SID SentencePiece pieces (trained on the interaction-weighted SID corpus)
  sid_spm_hashed   SID SPM pieces + hashed item ID
  hashed_content   hashed item ID + content projection (the ID memorises head items, content carries new ones)
  cold_content     content projection + the frozen content residual (retritem's cold-aware item tower)
  cold_hashed_content  hashed ID (ID dropout 0.3, zero for items without train interactions) + content
                   projection + content residual
  cold_hashed_cluster  cold_hashed_content + trainable cluster-ID embeddings (the SID stage's k-means ids;
                   a new item shares its cluster's row with the warm items of that cluster)

Every variant is trained and evaluated by ``semrec.towers.training.train_and_evaluate`` (the function the
pipeline's served retriever uses): early stopping on the validation selection score, then validation and
test metrics overall / warm / cold. The baselines (popularity, transition, content kNN;
``semrec.towers.evaluate_baselines``) are rows of the same table, on the same split. The served variant is
the one with the best validation selection score (``FitConfig.cold_weight`` weighs cold against warm
targets). With ``output_dir`` each finished variant is checkpointed, and a rerun resumes after the last one.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from semrec.data import ItemFeatures, RecDataset
from semrec.towers.model import RetrieverConfig
from semrec.towers.score_blocks import ScoreConfig
from semrec.towers.sequential import SequentialTowerConfig
from semrec.towers.training import FitConfig
from semrec.towers.towers import CandidateTowerConfig, QueryTowerConfig

ITEM_REPRESENTATIONS = ("hashed_id", "content", "cluster_id", "sid_unigram", "sid_spm", "sid_spm_hashed",
                        "hashed_content", "cold_content", "cold_hashed_content", "cold_hashed_cluster")
VARIANTS = ITEM_REPRESENTATIONS + tuple(f"seq_{r}" for r in ITEM_REPRESENTATIONS)
SID_REPRESENTATIONS = ("sid_unigram", "sid_spm", "sid_spm_hashed")
DEFAULT_VARIANTS = ("hashed_id", "content", "sid_spm_hashed", "cold_hashed_cluster", "seq_hashed_content",
                    "seq_cold_hashed_content")


def _default_retriever() -> RetrieverConfig:
  return RetrieverConfig(candidate=CandidateTowerConfig(mlp_dims=(), output_dim=64),
                         query=QueryTowerConfig(max_history=20, mlp_dims=(64,), output_dim=64),
                         sequential=SequentialTowerConfig(max_history=20), num_negatives=1024,
                         in_batch_negatives=True, temperature=0.05, learning_rate=2e-3,
                         scores=ScoreConfig(content_mix=True, content_mix_pooling="auto", content_mix_lexical="auto"))


@dataclasses.dataclass
class ComparisonConfig:
  """Settings of ``run_retrieval_comparison``.

  Attributes:
    retriever: The base ``RetrieverConfig`` (towers, query towers, loss, learning rate); a variant replaces
      only its item parts and ``query_tower``.
    fit: ``FitConfig`` (epochs, early stopping, batch size, selection metric).
    variants: Variant names (see the module docstring).
    embedding_dim: Width of each item part (hash, content projection, cluster, SID pieces).
    hash_bins: Item hash rows (0 = 2 x catalogue size).
    spm_vocab_size: SentencePiece vocabulary (= table budget) of the SPM parts; the SPM the comparison
      receives (trained from the SID stage's codes, ``semrec.sid.train_sid_spm``) has this vocabulary.
    quality_modes: Subset of ("none", "tuned"): "tuned" tunes the Etsy w on the validation queries after
      training and reports it as extra rows (``<variant> + quality``). It needs a time window (the temporal
      split: freshness and counts as of the validation start); on leave_one_out / cold_items it is skipped.
    baselines: Baselines evaluated as table rows (``semrec.towers.BASELINES`` names).
    lexical_dim: Width L of the content mix's lexical channel (``semrec.encoders.LexicalEncoder`` fitted on
      the catalogue's item texts, held-out items included, as the k-means ids are); 0, a dataset without text
      or ``retriever.scores.content_mix_lexical="off"`` = no lexical channel.
    seed: Seeds TF and shuffling.
  """
  retriever: RetrieverConfig = dataclasses.field(default_factory=_default_retriever)
  fit: FitConfig = dataclasses.field(default_factory=FitConfig)
  variants: Sequence[str] = DEFAULT_VARIANTS
  embedding_dim: int = 64
  hash_bins: int = 0
  spm_vocab_size: int = 1024
  quality_modes: Sequence[str] = ("none", "tuned")
  baselines: Sequence[str] = ("popularity", "transition", "content_knn")
  lexical_dim: int = 384
  seed: int = 0

  def __post_init__(self):
    if isinstance(self.retriever, dict):
      self.retriever = RetrieverConfig(**self.retriever)
    if isinstance(self.fit, dict):
      self.fit = FitConfig(**self.fit)
    self.variants = tuple(self.variants)
    self.quality_modes = tuple(self.quality_modes)
    self.baselines = tuple(self.baselines)
    bad = [v for v in self.variants if v not in VARIANTS]
    if bad or not self.variants:
      raise ValueError(f"unknown variants {bad or '(none)'}; expected a non-empty subset of {VARIANTS}")
    if self.lexical_dim < 0:
      raise ValueError(f"ComparisonConfig.lexical_dim must be >= 0, got {self.lexical_dim}")
    badq = [q for q in self.quality_modes if q not in ("none", "tuned")]
    if badq or "none" not in self.quality_modes:
      raise ValueError(f"quality_modes must include 'none' and be a subset of ('none', 'tuned'), got "
                       f"{self.quality_modes}")


  def sid_needs(self) -> set:
    """Which SID-stage inputs of ``run_retrieval_comparison`` the variants need: a subset of {"cluster_ids",
    "sid_codes", "spm"} (``semrec.sid.retrieval_inputs.fit_sid_artefacts`` fits them outside the pipeline)."""
    reps = {item_representation_of(v) for v in self.variants}
    out = {"cluster_ids"} if any("cluster" in _REPRESENTATIONS[r][0] for r in reps) else set()
    if reps & set(SID_REPRESENTATIONS):
      out.add("sid_codes")
    if any("spm" in _REPRESENTATIONS[r][0] for r in reps):
      out.add("spm")
    return out

  def quick(self) -> "ComparisonConfig":
    """A copy with tiny sizes (smoke tests, ``semrec run --quick``): 1 epoch, 8-d parts, H = 5."""
    rep = dataclasses.replace
    r = self.retriever
    small = rep(r, candidate=rep(r.candidate, output_dim=8), query=rep(r.query, output_dim=8, mlp_dims=(16,),
                                                                        max_history=5),
                sequential=rep(r.sequential, max_history=5), num_negatives=min(r.num_negatives, 64))
    return rep(self, retriever=small, fit=rep(self.fit, max_epochs=1, batch_size=64), embedding_dim=8,
               spm_vocab_size=64)


def item_representation_of(variant: str) -> str:
  return variant[4:] if variant.startswith("seq_") else variant


@dataclasses.dataclass
class ItemSide:
  """Per-item inputs shared by every variant: features (content, lexical, cluster_id, sid), the trained SPM and
  lexical encoder, L, K."""
  features: ItemFeatures
  spm: object = None
  lexical_encoder: object = None
  sid_levels: int = 0
  sid_codebook_size: int = 0
  hash_bins: int = 0
  num_clusters: int = 0


def prepare_item_side(dataset: RecDataset, split, content_ids, content, cfg: ComparisonConfig,
                      sid_codes: Optional[np.ndarray] = None, sid_codebook_size: Optional[int] = None,
                      cluster_ids: Optional[np.ndarray] = None, spm=None, lexical=None) -> ItemSide:
  """Content rows in catalogue order, the SID stage's artefacts the configured variants need, and the lexical
  rows of the content mix (``lexical_encoder``; ``lexical``: the encode stage's fitted ``LexicalEncoder``,
  fitted here only when none is given, e.g. by a benchmark).

  The comparison fits nothing but towers: ``cluster_ids`` [N] (cluster variants), ``sid_codes`` [N, L] with
  ``sid_codebook_size`` (SID variants) and ``spm`` (a ``semrec.sid.SidSpm`` over those codes, SPM variants),
  all catalogue order, come from the SID stage; a configured variant whose input is missing raises, naming
  the variants and the argument.
  """
  from semrec.sid import validate_embeddings
  ids = dataset.item_ids.astype(str).astype(object)
  emb = validate_embeddings(content, item_ids=np.asarray(content_ids), name="content embeddings")
  idx = pd.Index(np.asarray(content_ids).astype(str)).get_indexer(ids)
  if (idx < 0).any():
    raise ValueError(f"no content embedding for item {ids[idx < 0][0]!r} ({int((idx < 0).sum())} items missing)")
  x = emb[idx]
  arrays, reps = {"content": x}, {item_representation_of(v) for v in cfg.variants}

  given = {"cluster_ids": cluster_ids, "sid_codes": sid_codes, "spm": spm}
  missing = sorted(n for n in cfg.sid_needs() if given[n] is None)
  if missing:
    raise ValueError(f"variants {list(cfg.variants)} need {missing} from the SID stage (the comparison fits "
                     "none; semrec.sid.retrieval_inputs.fit_sid_artefacts fits them outside semrec run)")
  num_clusters = 0
  if any("cluster" in _REPRESENTATIONS[r][0] for r in reps):
    from semrec.sid import cluster_feature
    cluster_ids = np.asarray(cluster_ids, np.int32)
    num_clusters = int(cluster_ids.max()) + 1
    arrays[cluster_feature(num_clusters)] = cluster_ids
  if any(_REPRESENTATIONS[r][1].get("gate_unknown_ids") for r in reps):
    from semrec.sid import ID_KNOWN
    trained = split.train_positives["item_id"].astype(str)
    arrays[ID_KNOWN] = pd.Index(ids).isin(trained).astype(np.float32)  # items whose ID row gets trained
  texts = dataset.item_texts()
  encoder = lexical_encoder(texts, cfg, item_ids=ids, fitted=lexical)
  if encoder is not None:
    arrays["lexical"] = encoder.encode(texts, item_ids=ids)
  side = ItemSide(ItemFeatures(ids, arrays), hash_bins=cfg.hash_bins or 2 * len(ids), num_clusters=num_clusters,
                  lexical_encoder=encoder)
  if reps & set(SID_REPRESENTATIONS):
    if sid_codebook_size is None:
      raise ValueError("sid_codebook_size is required with sid_codes")
    arrays["sid"] = np.asarray(sid_codes, np.int32)
    side.sid_levels, side.sid_codebook_size = int(arrays["sid"].shape[1]), int(sid_codebook_size)
    side.spm = spm if reps & {"sid_spm", "sid_spm_hashed"} else None
    side.features = ItemFeatures(ids, arrays)
  return side


def lexical_encoder(texts, cfg: ComparisonConfig, item_ids=None, fitted=None):
  """The ``LexicalEncoder`` fitted on the catalogue's item ``texts`` (``RecDataset.item_texts``), or None when
  the configuration has no lexical channel (``lexical_dim`` 0, no content mix, ``content_mix_lexical="off"``)
  or no item has text. ``fitted``: an encoder fitted already (the encode stage's), returned instead of fitting
  one; its width must be ``lexical_dim``."""
  r = cfg.retriever
  if not (cfg.lexical_dim and r.scores.content_mix and r.scores.content_mix_lexical != "off"
          and any(t.strip() for t in texts)):
    return None
  if fitted is not None:
    if fitted.config.dim != cfg.lexical_dim:
      raise ValueError(f"the given lexical encoder was fitted with dim {fitted.config.dim}, the comparison's "
                       f"lexical_dim is {cfg.lexical_dim}: refit it (`semrec encode --force`)")
    return fitted
  from semrec.encoders import LexicalEncoder, LexicalEncoderConfig
  return LexicalEncoder(LexicalEncoderConfig(dim=cfg.lexical_dim, seed=cfg.seed)).fit(texts, item_ids=item_ids)


# The cold-aware ID part: ID dropout (DropoutNet), and a zero ID part for items the training data never had.
_COLD_ID = {"id_dropout": 0.3, "gate_unknown_ids": True}
# Item representation -> (ItemRepresentation modes, ItemEncoderConfig cold-start options).
_REPRESENTATIONS = {
    "hashed_id": (("random_hash",), {}),
    "content": (("dense",), {}),
    "cluster_id": (("cluster",), {}),
    "sid_unigram": (("unigram",), {}),
    "sid_spm": (("spm",), {}),
    "sid_spm_hashed": (("spm", "random_hash"), {}),
    "hashed_content": (("random_hash", "dense"), {}),
    "cold_content": (("dense",), {"content_residual": True}),
    "cold_hashed_content": (("random_hash", "dense"), {"content_residual": True, **_COLD_ID}),
    "cold_hashed_cluster": (("random_hash", "dense", "cluster"), {"content_residual": True, **_COLD_ID}),
}


def _item_parts(rep: str, cfg: ComparisonConfig, side: ItemSide):
  """``ItemEncoderConfig`` of an item representation (``_REPRESENTATIONS``)."""
  from semrec.sid import ItemRepresentationConfig
  from semrec.towers.towers import ItemEncoderConfig
  modes, opts = _REPRESENTATIONS[rep]
  opts = dict(opts)
  id_dropout = opts.pop("id_dropout", 0.0)
  gate = opts.pop("gate_unknown_ids", False)
  budget = cfg.spm_vocab_size if "spm" in modes else max(side.sid_levels * side.sid_codebook_size, 1)
  rc = ItemRepresentationConfig(modes=modes, embedding_dim=cfg.embedding_dim, num_levels=max(side.sid_levels, 1),
                                codebook_size=max(side.sid_codebook_size, 1), table_budget=budget,
                                hash_buckets=side.hash_bins, id_dropout=id_dropout, gate_unknown_ids=gate,
                                cluster_sizes=(side.num_clusters,) if "cluster" in modes else ())
  return ItemEncoderConfig(representation=rc, **opts)


def variant_config(variant: str, cfg: ComparisonConfig, side: ItemSide, quality_dim: int = 0,
                   time_mean: float = 0.0, time_scale: float = 1.0) -> RetrieverConfig:
  """The ``RetrieverConfig`` of ``variant``: ``cfg.retriever`` with the variant's item parts and query tower."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
  item = _item_parts(item_representation_of(variant), cfg, side)
  base = cfg.retriever
  scores = dataclasses.replace(base.scores, quality_dim=quality_dim, quality_mode="tuned" if quality_dim else "none",
                               content_mix=base.scores.content_mix and item.needs_content,
                               content_mix_lexical=(base.scores.content_mix_lexical
                                                    if "lexical" in side.features.arrays else "off"))
  return dataclasses.replace(base, item=item, query_tower="sequential" if variant.startswith("seq_") else "pooled",
                             query=dataclasses.replace(base.query, time_mean=time_mean, time_scale=time_scale),
                             scores=scores)


def build_variant_retriever(variant: str, cfg: ComparisonConfig, side: ItemSide, quality=None):
  """(``TwoTowerRetriever``, ``RetrievalInputs``) of ``variant``; ``quality`` is an optional QualityVector."""
  import tensorflow as tf
  from semrec.towers.inputs import RetrievalInputs
  from semrec.towers.model import TwoTowerRetriever
  tf.keras.utils.set_random_seed(cfg.seed)
  qdim = quality.dim if quality is not None else 0
  rc = variant_config(variant, cfg, side, qdim)
  basis = None
  if rc.item.content_residual:
    from semrec.towers.towers import content_basis
    basis = content_basis(side.features.arrays["content"], rc.candidate.output_dim)
  model = TwoTowerRetriever(rc, spm=side.spm if "spm" in rc.item.representation.modes else None,
                            content_basis=basis)
  inputs = RetrievalInputs(side.features, model.required_features(), rc.max_history,
                           quality=quality.features() if quality is not None else None,
                           unknown_quality=quality.new_item_features() if quality is not None else None)
  return model, inputs


def _variant_key(variant: str, cfg: ComparisonConfig, split, side: ItemSide) -> str:
  from semrec.towers.training import fingerprint
  from semrec.towers.score_blocks import POST_HOC_FIELDS
  rc = dataclasses.asdict(variant_config(variant, cfg, side))
  for f in POST_HOC_FIELDS:  # chosen after training (post_hoc_settings): the weights do not depend on them
    rc["scores"].pop(f)
  return fingerprint({"variant": variant, "retriever": rc, "fit": dataclasses.asdict(cfg.fit),
                      "seed": cfg.seed, "split": split.summary(), "items": len(side.features.item_ids),
                      "sid": side.sid_levels, "k": side.sid_codebook_size})


def run_variant(variant: str, cfg: ComparisonConfig, split, side: ItemSide, quality=None,
                output_dir: Optional[str] = None, callbacks: tuple = ()) -> tuple:
  """(model, inputs, result): ``variant`` trained and evaluated by ``train_and_evaluate`` (resumable)."""
  from semrec.towers.training import train_and_evaluate
  model, inputs = build_variant_retriever(variant, cfg, side, quality)
  vdir = os.path.join(output_dir, "variants", variant) if output_dir else None
  result = train_and_evaluate(model, inputs, split, cfg.fit, seed=cfg.seed, output_dir=vdir,
                              key=_variant_key(variant, cfg, split, side), callbacks=callbacks)
  return model, inputs, result


def select_served(results: dict) -> dict:
  """The variant with the best validation selection score, and why (every variant's score). A tie for the best
  score is logged as a warning naming the tied variants (the first in variant order is served: a tie, not a
  quality difference) and recorded as ``tied``."""
  scores = {v: float(r["selection_score"]) for v, r in results.items()}
  best = max(scores, key=scores.get)
  tied = [v for v, x in scores.items() if x == scores[best]]
  if len(tied) > 1:
    import logging
    logging.getLogger(__name__).warning(
        "served retriever: %s tie for the best validation selection score (%.4f); %r is served by variant order, "
        "not by quality (e.g. too few candidates for the selection k, or too few validation queries)",
        ", ".join(tied), scores[best], best)
  out = {"variant": best, "selection_score": scores[best], "scores": scores}
  return {**out, "tied": tied} if len(tied) > 1 else out


def run_retrieval_comparison(dataset: RecDataset, split, content_ids, content,
                             config: Optional[ComparisonConfig] = None, sid_codes=None, sid_codebook_size=None,
                             cluster_ids=None, spm=None, output_dir: Optional[str] = None, verbose: bool = True,
                             callbacks: tuple = (), lexical=None) -> dict:
  """Trains, evaluates and tables every configured variant next to the baselines on ``split``.

  Args:
    dataset: The ``RecDataset`` ``split`` was made from (``semrec.data.make_split``).
    split: An ``EvalSplit`` (temporal, leave_one_out or cold_items).
    content_ids, content: [M] ids and [M, D] content embeddings (must cover the catalogue).
    config: ``ComparisonConfig``.
    sid_codes, sid_codebook_size, cluster_ids, spm: The SID stage's codes / cluster ids / SPM (catalogue order),
      needed by the variants that use them (``prepare_item_side``).
    output_dir: Per-variant checkpoints (resume) and ``retrieval_comparison.csv`` / ``.json``.
    callbacks: Extra Keras callbacks for every variant's training.
    lexical: The fitted ``LexicalEncoder`` of the content mix's lexical channel (semrec run: the encode stage's);
      None fits one here and saves it to ``output_dir/lexical_encoder.npz``.

  Returns:
    {"table": DataFrame, "results": {variant: result}, "baselines": {name: metrics by stage},
     "content_knn": {"decay", "validation_recall@10"} (the baseline's validation-chosen recency decay),
     "served": select_served(...), "split": summary, "config": dict, "seconds": float,
     "item_side": the ``ItemSide`` used (for ``served_retriever``)}.
  """
  from semrec.towers.baselines import evaluate_baselines, select_knn_decay
  from semrec.towers.comparison_report import comparison_table, write_outputs
  cfg = config or ComparisonConfig()
  t0 = time.time()
  side = prepare_item_side(dataset, split, content_ids, content, cfg, sid_codes, sid_codebook_size, cluster_ids, spm,
                           lexical=lexical)
  x, ids = side.features.arrays["content"], side.features.item_ids
  base, knn = {}, {}
  if "content_knn" in cfg.baselines:  # the recency decay that suits this split, chosen on validation
    knn["decay"], knn["validation_recall@10"] = select_knn_decay(split, ids, x)
  for stage in ("valid", "test"):
    for name, m in evaluate_baselines(split, ids, x, stage=stage, names=cfg.baselines, ks=cfg.fit.ks,
                                      knn_decay=knn.get("decay", 0.5), seed=cfg.seed).items():
      base.setdefault(name, {})[stage] = m
  quality = _quality(dataset, split, cfg)
  results = {}
  for variant in cfg.variants:
    model, inputs, res = run_variant(variant, cfg, split, side, None, output_dir, callbacks)
    if quality is not None:
      res["tuned"] = _tuned_quality(model, variant, cfg, split, side, quality)
    results[variant] = res
    if verbose:
      m = res["test"]["overall"]
      print(f"  {variant}: test R@10 {m['recall@10']:.4f} R@100 {m.get('recall@100', float('nan')):.4f} "
            f"(valid score {res['selection_score']:.4f}, best epoch {res['best_epoch']}, "
            f"{'resumed' if res['resumed'] else str(res['train_seconds']) + ' s'})", flush=True)
  table = comparison_table(results, base)
  if output_dir and lexical is None and side.lexical_encoder is not None:  # fitted here: keep it for serving
    side.lexical_encoder.save(os.path.join(output_dir, "lexical_encoder.npz"))
  out = {"table": table, "results": results, "baselines": base, "content_knn": knn, "served": select_served(results),
         "split": split.summary(), "config": dataclasses.asdict(cfg), "seconds": time.time() - t0}
  if output_dir:
    write_outputs(out, output_dir)
  out["item_side"] = side
  return out


def served_retriever(comparison: dict, cfg: ComparisonConfig, split, output_dir: str,
                     variant: Optional[str] = None) -> tuple:
  """(model, inputs, result) of the served variant (default: the validation choice) from its checkpoint.

  The served model IS the comparison's trained model of that variant (``run_variant`` resumes it from
  ``output_dir`` without retraining), so the figures in the comparison table are the served model's.
  """
  variant = variant or comparison["served"]["variant"]
  if variant not in comparison["results"]:
    raise ValueError(f"served variant {variant!r} was not in the comparison ({sorted(comparison['results'])})")
  return run_variant(variant, cfg, split, comparison["item_side"], None, output_dir)


def _quality(dataset: RecDataset, split, cfg: ComparisonConfig):
  if "tuned" not in cfg.quality_modes or split.kind != "temporal":
    return None  # no time window to compute freshness / counts "as of" on leave_one_out and cold_items
  from semrec.towers.quality import QualityVector
  return QualityVector.fit(split.train, dataset.items, reference_time=split.info["valid_start"],
                           quality_columns=dataset.quality_columns)


def _tuned_quality(model, variant, cfg, split, side, quality) -> dict:
  """Validation-tuned Etsy w on the trained towers (no retraining); valid/test metrics with w applied."""
  from semrec.towers.inputs import RetrievalInputs
  from semrec.towers.model import embed_candidates
  from semrec.towers.training import query_embeddings
  from semrec.towers.tuning import tune_quality_weights
  valid = split.queries("valid")
  inputs = RetrievalInputs(side.features, model.required_features(), model.config.max_history)
  qb, cb = query_embeddings(model, inputs, valid), embed_candidates(model, inputs)
  targets = inputs.rows_of(np.array([t[0] for t in valid.targets], dtype=object))
  excl = [inputs.rows_of(np.asarray(e, dtype=object)) for e in valid.exclude]
  f = quality.gather(side.features.item_ids)  # [N, Q] catalogue order (new items: the new-item prior)
  # Cold-constrained (semrec.towers.tuning): validation cold Recall@k stays within 10% of w = 0.
  w, info = tune_quality_weights(qb, cb, f, targets, [e[e < inputs.num_items] for e in excl], k=max(cfg.fit.ks),
                                 cold=np.asarray(valid.cold, bool))
  from semrec.towers.evaluation import dot_scores, evaluate_scores
  out = {"w": dict(zip(quality.feature_names, map(float, w))), **info}
  for stage in ("valid", "test"):
    q = split.queries(stage)
    qe = query_embeddings(model, inputs, q)
    out[stage] = evaluate_scores(lambda r: dot_scores(qe[r], cb) + (f @ w)[None], q, side.features.item_ids,
                                 ks=cfg.fit.ks)
  return out


__all__ = ["DEFAULT_VARIANTS", "ITEM_REPRESENTATIONS", "VARIANTS", "ComparisonConfig", "ItemSide",
           "build_variant_retriever", "lexical_encoder", "prepare_item_side",
           "run_retrieval_comparison", "run_variant", "select_served", "served_retriever", "variant_config"]
