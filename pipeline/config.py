"""The run config of `semrec run`: one dataclass per stage, composed into :class:`RunConfig`.

``<run_dir>/config.yaml`` is ``RunConfig`` written with ``semrec.config.save_yaml``; docs/config.md lists
the sections and shows two examples.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Optional

from semrec.config import ConfigError, setting
from semrec.data import (SPLITS, RecDataset, SyntheticConfig, load_generic, load_movielens, make_synthetic)
from semrec.encoders import EncoderConfig
from semrec.ranking import RankerConfig
from semrec.ranking.experiment import MODE_COMPONENTS
from semrec.sid.rqvae import RQVAEConfig
from semrec.towers.comparison import VARIANTS, ComparisonConfig


SPLIT_FIELDS = ("split", "val_fraction", "cold_fraction", "exclude_history")  # DataConfig's retrieval protocol


@dataclasses.dataclass
class DataConfig:
  """Which dataset a run uses.

  Attributes:
    type: "movielens" (bundled default), "synthetic" (multimodal world) or "generic" (CSV/Parquet files).
    interactions: Path of the interactions table (generic only).
    items: Path of the items table (generic only).
    text_columns: Item text columns (generic only).
    quality_columns: Numeric item quality columns (generic only).
    synthetic: Sizes and seed of the synthetic world.
    train_fraction: Fraction of interactions (by time) before the train/test cutoff (temporal split, and the
      ranking stage's time periods).
    split: Retrieval evaluation protocol: "temporal", "leave_one_out" or "cold_items" (docs/protocols.md).
    val_fraction: temporal: the latest fraction of the pre-cutoff interactions used as the validation window.
    cold_fraction: cold_items: fraction of the items (with a positive interaction) held out, seeded by ``seed``.
    exclude_history: Remove each user's earlier items from the retrieval ranking (CLI ``--no-exclude-history``).
  """
  type: str = setting("movielens", choices=("movielens", "synthetic", "generic"))
  interactions: str = ""
  items: str = ""
  text_columns: tuple = ("title",)
  quality_columns: tuple = ()
  synthetic: SyntheticConfig = dataclasses.field(default_factory=lambda: SyntheticConfig(
      num_items=600, num_users=200, num_topics=8, num_days=30))
  train_fraction: float = setting(0.8, min=0.0, max=1.0, min_exclusive=True, max_exclusive=True)
  split: str = "temporal"
  val_fraction: float = 0.1
  cold_fraction: float = 0.2
  exclude_history: bool = True

  def __post_init__(self):
    if self.type not in ("movielens", "synthetic", "generic"):
      raise ValueError(f"data.type must be movielens, synthetic or generic, got {self.type!r}")
    if self.split not in SPLITS:
      raise ValueError(f"data.split must be one of {SPLITS}, got {self.split!r}")
    for name in ("train_fraction", "val_fraction", "cold_fraction"):
      if not 0.0 < getattr(self, name) < 1.0:
        raise ValueError(f"data.{name} must be in (0, 1), got {getattr(self, name)}")
    if self.type == "generic" and not (self.interactions and self.items):
      raise ValueError("data.type 'generic' needs data.interactions and data.items paths")


def load_dataset(config: DataConfig) -> RecDataset:
  """Loads the dataset a :class:`DataConfig` names."""
  if config.type == "movielens":
    return load_movielens()
  if config.type == "synthetic":
    return make_synthetic(config.synthetic).validate()
  return load_generic(config.interactions, config.items, config.text_columns, config.quality_columns)


@dataclasses.dataclass
class SidStageConfig:
  """The SID stage: cluster IDs and the Semantic-ID model.

  Attributes:
    model: The RQ-VAE / RQ-KMeans config (L, K, mode, epochs...).
    cluster_ks: k-means granularities of the cluster IDs (each clipped to the catalogue size).
    unique_suffix: Add the TIGER-style disambiguation suffix to the SID table.
  """
  model: RQVAEConfig = dataclasses.field(default_factory=RQVAEConfig)
  cluster_ks: tuple = (100, 1000)
  unique_suffix: bool = True


@dataclasses.dataclass
class RankingStageConfig:
  """The ranking stage: the representation sweep and the production ranker.

  Attributes:
    ranker: The ranker every configuration trains (``semrec.ranking.RankerConfig``: history length, tasks,
      crosses, MLP, learning rate, batch size). Its ``item_representation`` and ``use_history`` are set per
      configuration by the sweep (``modes`` x ``budgets`` x ``use_history`` below), its ``seed`` from the run.
    modes: Representation modes compared (see ``semrec.ranking.ALL_MODES``).
    budgets: Embedding-table budgets (rows); SPM needs each >= L*K + 1.
    num_seeds: Seeds per configuration (seed, seed+1, ...).
    use_history: History settings compared (True = the paper's Figure 3, False = Figure 2).
    num_periods: Sequential protocol: train on periods 1..N-1 in order, evaluate on period N.
    embedding_dim: d of every item representation.
    production_mode: Mode of the ranker exported for serving (trained with history).
    production_budget: Its table budget (rows).
  """
  # Before the stage held a RankerConfig, these were ranking-level keys; older files still load.
  MOVED_KEYS: typing.ClassVar[dict] = {"history_length": "ranker.history_length", "batch_size": "ranker.batch_size"}

  ranker: RankerConfig = dataclasses.field(default_factory=lambda: RankerConfig(history_length=20, batch_size=512))
  modes: tuple = setting(("random_hash", "unigram", "bigram", "spm", "spm+hash"), choices=tuple(MODE_COMPONENTS))
  budgets: tuple = (1024, 4096)
  num_seeds: int = 1
  use_history: tuple = (True, False)
  num_periods: int = setting(10, min=2)
  embedding_dim: int = 32
  production_mode: str = setting("spm+hash", choices=tuple(MODE_COMPONENTS))
  production_budget: int = 1024


# The variants `semrec run` trains: the library's DEFAULT_VARIANTS minus seq_cold_hashed_content, the costliest
# (about a third of the sweep on MovieLens) and with the lowest validation score of the six in
# the last MovieLens run.
RUN_VARIANTS = ("hashed_id", "content", "sid_spm_hashed", "cold_hashed_cluster", "seq_hashed_content")


@dataclasses.dataclass
class RetrievalStageConfig:
  """The retrieval stage: the item-tower comparison, then the production retriever and its index.

  Attributes:
    comparison: Settings of the comparison (variants, quality modes, epochs, sizes); the variants default to
      ``RUN_VARIANTS``.
    production_variant: "auto" (default): the variant with the best validation selection score
      (``semrec.towers.FitConfig.cold_weight`` weighs cold against warm targets); or one of
      ``semrec.towers.VARIANTS`` to force it (it must be among ``comparison.variants``).
    index_kind: "auto" (brute force below 20k items, ScaNN above), "scann" or "brute_force".
    top_k: k of the exported retrieval models.
  """
  comparison: ComparisonConfig = dataclasses.field(default_factory=lambda: ComparisonConfig(variants=RUN_VARIANTS))
  production_variant: str = setting("auto", choices=("auto",) + VARIANTS)
  index_kind: str = setting("auto", choices=("auto", "scann", "brute_force"))
  top_k: int = 100


@dataclasses.dataclass
class ExportStageConfig:
  """The export and verify stages.

  Attributes:
    base_path_prefix: Path prefix written into models.config (where TF Serving will see the models, e.g.
      "/models" in the tensorflow/serving container); empty = the local absolute paths.
    verify_saved_model_cli: Also run ``saved_model_cli show --all`` on each export during verification.
  """
  base_path_prefix: str = ""
  verify_saved_model_cli: bool = True


@dataclasses.dataclass
class RunConfig:
  """Everything `semrec run` does, in one place (written to ``<run_dir>/config.yaml``).

  Attributes:
    data: Which dataset.
    encoder: Content encoders; ``None`` picks the preset of the dataset (MiniLM text for MovieLens and
      generic data, text + image + audio for the synthetic world).
    sid: Cluster IDs and Semantic IDs.
    retrieval: The retrieval comparison, the production retriever and its index.
    ranking: The ranker comparison and the production ranker.
    export: Export and verification.
    seed: Global seed (copied into the sub-configs that take one).
  """
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  encoder: Optional[EncoderConfig] = None
  sid: SidStageConfig = dataclasses.field(default_factory=SidStageConfig)
  retrieval: RetrievalStageConfig = dataclasses.field(default_factory=RetrievalStageConfig)
  ranking: RankingStageConfig = dataclasses.field(default_factory=RankingStageConfig)
  export: ExportStageConfig = dataclasses.field(default_factory=ExportStageConfig)
  seed: int = 0

  def encoder_config(self) -> EncoderConfig:
    if self.encoder is not None:
      return self.encoder
    if self.data.type == "synthetic":
      return EncoderConfig.synthetic(seed=self.seed)
    return EncoderConfig.movielens(seed=self.seed)

  def quick(self) -> "RunConfig":
    """A copy with tiny sizes: a smoke test of the whole job (all stages, all artefacts) in minutes.

    The synthetic world shrinks to 120 items; SIDs become L=3, K=16; one epoch per model; the light
    image/audio networks (ResNet-18-style, narrow VGGish) replace ResNet50/VGGish.
    """
    rep = dataclasses.replace
    data = rep(self.data, synthetic=rep(self.data.synthetic, num_items=120, num_users=40, num_topics=4, num_days=8,
                                        impressions_per_user_per_day=5))
    encoder = self.encoder
    if encoder is None and self.data.type == "synthetic":
      encoder = EncoderConfig.synthetic(seed=self.seed, image_architecture="resnet18", image_size=32,
                                        audio_architecture="vggish-small")
    sid = rep(self.sid, model=rep(self.sid.model, codebook_size=16, epochs=2, init_batch_size=512, batch_size=64),
              cluster_ks=(8, 16))
    retrieval = rep(self.retrieval, top_k=10, comparison=self.retrieval.comparison.quick())
    ranking = rep(self.ranking, modes=("random_hash", "unigram", "spm"), budgets=(64, 128), use_history=(True,),
                  num_periods=4, embedding_dim=8, production_budget=64,
                  ranker=rep(self.ranking.ranker, history_length=5, batch_size=64))
    export = rep(self.export, verify_saved_model_cli=False)
    return rep(self, data=data, encoder=encoder, sid=sid, retrieval=retrieval, ranking=ranking, export=export)

  def validate(self):
    """Cross-field checks (each field's type and range: ``semrec.config.validate``).

    Raises:
      ConfigError: naming the fields.
    """
    m = self.sid.model
    if m.codebook_size < 2:
      raise ConfigError(f"sid.model.codebook_size: must be >= 2, got {m.codebook_size}")
    need = m.num_levels * m.codebook_size + 1  # SPM pieces: every single code + the pad row
    spm = [b for b in self.ranking.budgets if any(x.startswith("spm") for x in self.ranking.modes)]
    if self.ranking.production_mode.startswith("spm"):
      spm.append(self.ranking.production_budget)
    for b in spm:
      if b < need:
        raise ConfigError(f"ranking.budgets: {b} rows is too small for SPM: it needs >= L*K+1 = {need} "
                          f"(sid.model.num_levels={m.num_levels} x codebook_size={m.codebook_size} + 1)")
