"""The run config of `semrec run`: what a user sets, one dataclass per stage, composed into :class:`RunConfig`.

The run config holds only what a user chooses (about 50 leaves, docs/config.md lists each one). Everything
else is derived:

* the library configs each stage calls with are built from these few fields by read-only properties
  (``sid.model`` -> ``RQVAEConfig``, ``retrieval.comparison`` -> ``ComparisonConfig``, ``ranking.ranker`` ->
  ``RankerConfig``, ``RunConfig.encoder_config()`` -> ``EncoderConfig``); the library defaults fill the rest;
* what a retriever variant or the ranking sweep sets per configuration (item representation, query tower,
  ``use_history``, table sizes) is set there, never in the config;
* one value per concept: one seed (``seed``; the stages copy it into every library config that takes one),
  one codebook size (``sid.codebook_size``: the SID stage's K, which retrieval and ranking read from the SID
  table), one embedding width per model (``retrieval.embedding_dim``: item parts and tower outputs;
  ``ranking.embedding_dim``: the ranker's item representation).

``<run_dir>/config.yaml`` is ``RunConfig`` written with ``semrec.config.save_yaml``. Loading and layering
(defaults < ``--quick`` preset < file < flags) go through OmegaConf (``semrec.config.merge``); validation
through ``semrec.config.validate``, the one path (:meth:`RunConfig.validate`).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional, Tuple

from semrec.config import ConfigError, leaves, merge, nested, read_yaml, setting, to_dict, validate
from semrec.data import RecDataset, SyntheticConfig, load_generic, load_movielens, make_synthetic
from semrec.data.split import SPLITS
from semrec.encoders import EncoderConfig
from semrec.encoders.multimodal import MODALITY_ORDER
from semrec.ranking import RankerConfig
from semrec.ranking.experiment import MODE_COMPONENTS
from semrec.sid.rqvae import MODES as SID_MODES
from semrec.sid.rqvae import RQVAEConfig
from semrec.towers.comparison import VARIANTS, ComparisonConfig

DATASETS = ("movielens", "synthetic", "generic")
SPLIT_FIELDS = ("split", "val_fraction", "cold_fraction", "exclude_history")  # DataConfig's retrieval protocol
INDEX_KINDS = ("auto", "scann", "brute_force")


@dataclasses.dataclass
class SyntheticWorldConfig:
  """Size of the synthetic world (``data.type: synthetic``; the rest of ``semrec.data.SyntheticConfig``, its
  seed included, keeps the library defaults, so a world is fixed by its size).

  Attributes:
    num_items: Catalogue size.
    num_users: Number of users.
    num_topics: Latent topics (one vocabulary each).
    num_days: Days of uploads and impressions.
    output_dir: Where the rendered media go (null: a folder under the system temp dir keyed by the world).
  """
  num_items: int = setting(600, min=1)
  num_users: int = setting(200, min=1)
  num_topics: int = setting(8, min=1, max=12)
  num_days: int = setting(30, min=1)
  output_dir: Optional[str] = None

  def build(self) -> SyntheticConfig:
    return SyntheticConfig(num_items=self.num_items, num_users=self.num_users, num_topics=self.num_topics,
                           num_days=self.num_days, output_dir=self.output_dir)


@dataclasses.dataclass
class DataConfig:
  """Which dataset a run uses, and the retrieval evaluation protocol.

  Attributes:
    type: ``movielens`` (bundled), ``synthetic`` (multimodal world) or ``generic`` (your CSV/Parquet files).
    interactions: Path of the interactions table (generic only).
    items: Path of the items table (generic only).
    text_columns: Item text columns (generic only; empty: ``title``, ``text``, ``description``, ... whichever
      the items table has, see ``semrec.data.generic.auto_text_columns``).
    quality_columns: Numeric item quality columns (generic only).
    synthetic: Size of the synthetic world (synthetic only).
    train_fraction: Fraction of interactions (by time) before the train/test cutoff (temporal split, and the
      ranking stage's time periods).
    split: Retrieval evaluation protocol (docs/protocols.md).
    val_fraction: temporal: the latest fraction of the pre-cutoff interactions used as the validation window.
    cold_fraction: cold_items: fraction of the items (with a positive interaction) held out, seeded by ``seed``.
    exclude_history: Remove each user's earlier items from the retrieval ranking (CLI ``--no-exclude-history``).
  """
  type: str = setting("movielens", choices=DATASETS)
  interactions: str = ""
  items: str = ""
  text_columns: Tuple[str, ...] = ()
  quality_columns: Tuple[str, ...] = ()
  synthetic: SyntheticWorldConfig = dataclasses.field(default_factory=SyntheticWorldConfig)
  train_fraction: float = setting(0.8, min=0.0, max=1.0, min_exclusive=True, max_exclusive=True)
  split: str = setting("temporal", choices=SPLITS)
  val_fraction: float = setting(0.1, min=0.0, max=1.0, min_exclusive=True, max_exclusive=True)
  cold_fraction: float = setting(0.2, min=0.0, max=1.0, min_exclusive=True, max_exclusive=True)
  exclude_history: bool = True

  def cross_checks(self) -> list:
    if self.type == "generic":
      return [(f, "data.type 'generic' needs the interactions and items paths")
              for f in ("interactions", "items") if not getattr(self, f)]
    return []


def load_dataset(config: DataConfig) -> RecDataset:
  """Loads the dataset a :class:`DataConfig` names."""
  if config.type == "movielens":
    return load_movielens()
  if config.type == "synthetic":
    return make_synthetic(config.synthetic.build()).validate()
  return load_generic(config.interactions, config.items, config.text_columns, config.quality_columns)


@dataclasses.dataclass
class EncoderStageConfig:
  """Content encoders. A null field keeps the dataset's preset (``EncoderConfig.movielens``: MiniLM text, for
  MovieLens and generic data; ``EncoderConfig.synthetic``: text + EfficientNet-Lite0 image + VGGish audio).

  Attributes:
    modalities: Modalities to encode, any of text, image, audio.
    text_model: ``all-MiniLM-L6-v2`` (packaged) or a local Hugging Face BERT directory.
    image_architecture: ``resnet50``, ``resnet18`` or ``efficientnet_lite0``.
    image_weights: ``pretrained``, ``imagenet``, a ``.h5``/``.pth`` path, a TF Hub handle or ``random``.
    image_size: Frame side in pixels.
    audio_architecture: ``vggish``, ``vggish-small`` or ``yamnet``.
    audio_weights: A TF Hub handle/directory, a ``.h5`` or VGGish checkpoint path, or ``random``.
  """
  modalities: Optional[Tuple[str, ...]] = setting(None, choices=MODALITY_ORDER)
  text_model: str = "all-MiniLM-L6-v2"
  image_architecture: Optional[str] = setting(None, choices=("resnet50", "resnet18", "efficientnet_lite0"))
  image_weights: Optional[str] = None
  image_size: Optional[int] = setting(None, min=32)
  audio_architecture: Optional[str] = setting(None, choices=("vggish", "vggish-small", "yamnet"))
  audio_weights: Optional[str] = None

  def build(self, dataset_type: str, seed: int) -> EncoderConfig:
    """The library ``EncoderConfig``: the dataset's preset with the fields set here."""
    overrides = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
    preset = EncoderConfig.synthetic if dataset_type == "synthetic" else EncoderConfig.movielens
    return preset(seed=seed, **overrides)


@dataclasses.dataclass
class SidStageConfig:
  """The SID stage: the Semantic-ID model and the cluster IDs.

  Attributes:
    mode: ``rqvae`` (encoder + residual quantiser + decoder) or ``rqkmeans`` (residual k-means, no network).
    num_levels: L, codes per SID.
    codebook_size: K, codes per level: the run's one codebook size (retrieval and ranking read it from the SID
      table); at most the catalogue size.
    epochs: RQ-VAE training epochs (rqvae only).
    batch_size: RQ-VAE training batch size (rqvae only; small catalogues need small batches to take enough steps).
    cluster_ks: k-means granularities of the cluster IDs (each clipped to the catalogue size).
    unique_suffix: Add the TIGER-style disambiguation suffix to the SID table.
  """
  mode: str = setting("rqvae", choices=SID_MODES)
  num_levels: int = setting(3, min=1)
  codebook_size: int = setting(256, min=2)
  epochs: int = setting(40, min=1)
  batch_size: int = setting(256, min=1)
  cluster_ks: Tuple[int, ...] = setting((100, 1000), min=1)
  unique_suffix: bool = True

  @property
  def model(self) -> RQVAEConfig:
    """The library ``RQVAEConfig`` (its other fields: library defaults; the stage sets the run seed)."""
    return RQVAEConfig(mode=self.mode, num_levels=self.num_levels, codebook_size=self.codebook_size,
                       epochs=self.epochs, batch_size=self.batch_size)


# The variants `semrec run` trains: the library's DEFAULT_VARIANTS minus seq_cold_hashed_content, the costliest
# (about a third of the sweep on MovieLens) and with the lowest validation score of the six in
# the last MovieLens run.
RUN_VARIANTS = ("hashed_id", "content", "sid_spm_hashed", "cold_hashed_cluster", "seq_hashed_content")


@dataclasses.dataclass
class RetrievalStageConfig:
  """The retrieval stage: the retriever comparison, the served retriever and its index.

  Attributes:
    variants: Retriever variants compared (``semrec.towers.VARIANTS``; docs/retrieval.md).
    production_variant: ``auto``: the variant with the best validation selection score; or a variant of
      ``variants`` to force it.
    embedding_dim: The retriever's width: every item part, the query and candidate tower outputs and the
      query MLP.
    max_history: History items the query towers read (most recent last).
    epochs: Maximum training epochs per variant (early stopping on the validation selection score).
    spm_vocab_size: SentencePiece vocabulary (= table rows) of the SID-piece item parts.
    tune_quality: Also tune the Etsy quality vector on validation after training (temporal split only) and
      report it as extra rows.
    index_kind: ``auto`` (brute force below 20k items, ScaNN above), ``scann`` or ``brute_force``.
    top_k: k of the exported retrieval models.
  """
  variants: Tuple[str, ...] = setting(RUN_VARIANTS, choices=VARIANTS)
  production_variant: str = setting("auto", choices=("auto",) + VARIANTS)
  embedding_dim: int = setting(64, min=1)
  max_history: int = setting(20, min=1)
  epochs: int = setting(20, min=1)
  spm_vocab_size: int = setting(1024, min=2)
  tune_quality: bool = True
  index_kind: str = setting("auto", choices=INDEX_KINDS)
  top_k: int = setting(100, min=1)

  @property
  def comparison(self) -> ComparisonConfig:
    """The library ``ComparisonConfig`` (towers, loss and fit settings not named here: the comparison's
    defaults; the stage sets the run seed)."""
    base = ComparisonConfig()
    r, d, h = base.retriever, self.embedding_dim, self.max_history
    rep = dataclasses.replace
    retriever = rep(r, candidate=rep(r.candidate, output_dim=d), query=rep(r.query, output_dim=d, mlp_dims=(d,),
                                                                            max_history=h),
                    sequential=rep(r.sequential, max_history=h))
    return rep(base, retriever=retriever, fit=rep(base.fit, max_epochs=self.epochs), variants=self.variants,
               embedding_dim=d, spm_vocab_size=self.spm_vocab_size,
               quality_modes=("none", "tuned") if self.tune_quality else ("none",))

  def cross_checks(self) -> list:
    if not self.variants:
      return [("variants", "name at least one variant")]
    if self.production_variant not in ("auto",) + tuple(self.variants):
      return [("production_variant", f"{self.production_variant!r} is not among retrieval.variants "
                                     f"{list(self.variants)}")]
    return []


@dataclasses.dataclass
class RankingStageConfig:
  """The ranking stage: the representation sweep and the production ranker.

  Attributes:
    modes: Item representations compared (``semrec.ranking.ALL_MODES``); the sweep sets each one.
    budgets: Embedding-table budgets (rows) compared; SPM needs each >= L*K + 1.
    use_history: History settings compared (true = the paper's Figure 3, false = Figure 2).
    num_seeds: Seeds per configuration (seed, seed+1, ...).
    num_periods: Sequential protocol: train on periods 1..N-1 in order, evaluate on period N.
    embedding_dim: The ranker's width: d of every item representation.
    history_length: H, history items per example (most recent last).
    batch_size: Training batch size.
    production_mode: Item representation of the ranker exported for serving (trained with history).
    production_budget: Its table budget (rows).
    candidates: M, candidates merged per query for the cascade ranker (every source is asked for M).
    fresh_window: The fresh-item source returns items first seen at most this long before the request (timestamp
      units; 0 = items without an interaction before the request).
    compare_modes: Further cascade-ranker representations trained on the same candidates and reported beside
      the served one (default: random-hash item IDs, the seed paper's SPM-vs-hash comparison; () = none).
  """
  modes: Tuple[str, ...] = setting(("random_hash", "unigram", "bigram", "spm", "spm+hash"),
                                   choices=tuple(MODE_COMPONENTS))
  budgets: Tuple[int, ...] = setting((1024, 4096), min=1)
  use_history: Tuple[bool, ...] = (True, False)
  num_seeds: int = setting(1, min=1)
  num_periods: int = setting(10, min=2)
  embedding_dim: int = setting(32, min=1)
  history_length: int = setting(20, min=1)
  batch_size: int = setting(512, min=1)
  production_mode: str = setting("spm+hash", choices=tuple(MODE_COMPONENTS))
  production_budget: int = setting(1024, min=1)
  candidates: int = setting(200, min=1)
  fresh_window: int = setting(0, min=0)
  compare_modes: Tuple[str, ...] = setting(("random_hash",), choices=tuple(MODE_COMPONENTS))

  def cascade(self, seed: int):
    """The ``semrec.ranking.CascadeConfig`` of `semrec run`'s ranking stage: ``candidates`` merged per query,
    the fresh-item ``fresh_window``, the ranker's representation ``production_mode`` (SPM + hash pieces by
    default) with the sweep's width, history and batch size; the rest library defaults. ``compare_modes``:
    further ranker representations trained on the same candidates (the SPM-vs-hash comparison)."""
    from semrec.ranking.cascade import CascadeConfig
    return CascadeConfig(candidates=self.candidates, per_source=self.candidates, fresh_window=self.fresh_window,
                         mode=self.production_mode, table_budget=max(self.budgets), embedding_dim=self.embedding_dim,
                         history_length=self.history_length, batch_size=self.batch_size, seed=seed)

  @property
  def ranker(self) -> RankerConfig:
    """The library ``RankerConfig`` every configuration trains (tasks, crosses, MLP, learning rate: library
    defaults; the sweep sets ``item_representation`` and ``use_history``, the stage the seed and the tasks
    the data has)."""
    return RankerConfig(history_length=self.history_length, batch_size=self.batch_size)

  def cross_checks(self) -> list:
    out = [(f, "name at least one") for f in ("modes", "budgets", "use_history") if not getattr(self, f)]
    return out


@dataclasses.dataclass
class ExportStageConfig:
  """The export and verify stages.

  Attributes:
    base_path_prefix: Path prefix written into models.config (where TF Serving will see the models, e.g.
      ``/models`` in the tensorflow/serving container); empty = the local absolute paths.
    verify_saved_model_cli: Also run ``saved_model_cli show --all`` on each export during verification.
  """
  base_path_prefix: str = ""
  verify_saved_model_cli: bool = True


@dataclasses.dataclass
class RunConfig:
  """Everything `semrec run` does, in one place (written to ``<run_dir>/config.yaml``).

  Attributes:
    data: Which dataset, and the retrieval evaluation protocol.
    encoder: Content encoders (null fields: the dataset's preset).
    sid: Semantic IDs and cluster IDs.
    retrieval: The retriever comparison, the served retriever and its index.
    ranking: The ranker comparison and the production ranker.
    export: Export and verification.
    seed: The run's one seed: every stage copies it into the library configs that take one.
  """
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  encoder: EncoderStageConfig = dataclasses.field(default_factory=EncoderStageConfig)
  sid: SidStageConfig = dataclasses.field(default_factory=SidStageConfig)
  retrieval: RetrievalStageConfig = dataclasses.field(default_factory=RetrievalStageConfig)
  ranking: RankingStageConfig = dataclasses.field(default_factory=RankingStageConfig)
  export: ExportStageConfig = dataclasses.field(default_factory=ExportStageConfig)
  seed: int = setting(0, min=0)

  def encoder_config(self) -> EncoderConfig:
    """The library ``EncoderConfig``: the dataset's preset, the ``encoder`` fields set, the run seed."""
    return self.encoder.build(self.data.type, self.seed)

  def quick(self) -> "RunConfig":
    """A copy with tiny sizes: a smoke test of the whole job (all stages, all artefacts) in minutes.

    The synthetic world shrinks to 120 items; SIDs become K=16 with 2 epochs; one retrieval epoch at width
    8, H = 5; the light image/audio networks (ResNet-18-style at 32 px, narrow VGGish) replace the presets'.
    """
    rep = dataclasses.replace
    data = rep(self.data, synthetic=rep(self.data.synthetic, num_items=120, num_users=40, num_topics=4, num_days=8))
    encoder = self.encoder
    if self.data.type == "synthetic":
      encoder = rep(encoder, image_architecture="resnet18", image_size=32, audio_architecture="vggish-small")
    sid = rep(self.sid, codebook_size=16, epochs=2, batch_size=64, cluster_ks=(8, 16))
    retrieval = rep(self.retrieval, embedding_dim=8, max_history=5, epochs=1, spm_vocab_size=64, top_k=10)
    ranking = rep(self.ranking, modes=("random_hash", "unigram", "spm"), budgets=(64, 128), use_history=(True,),
                  num_periods=4, embedding_dim=8, history_length=5, batch_size=64, production_budget=64)
    export = rep(self.export, verify_saved_model_cli=False)
    return rep(self, data=data, encoder=encoder, sid=sid, retrieval=retrieval, ranking=ranking, export=export)

  def validate(self) -> "RunConfig":
    """``semrec.config.validate(self)``: every field's type and range, then the cross-field rules
    (:meth:`cross_checks`). Returns self.

    Raises:
      ConfigError: naming the field.
    """
    validate(self)
    return self

  def cross_checks(self) -> list:
    """Rules across sections, and the library configs built from the fields (their own checks name the
    section here)."""
    L, K = self.sid.num_levels, self.sid.codebook_size
    need = L * K + 1  # SPM pieces: every single code + the pad row
    r = self.ranking
    spm = [b for b in r.budgets if any(m.startswith("spm") for m in r.modes)]
    for b in spm + ([r.production_budget] if r.production_mode.startswith("spm") else []):
      if b < need:
        field = "ranking.budgets" if b in spm else "ranking.production_budget"
        return [(field, f"{b} rows is too small for SPM: it needs >= L*K+1 = {need} "
                        f"(sid.num_levels={L} x sid.codebook_size={K} + 1)")]
    for section, build in (("encoder", self.encoder_config), ("sid", lambda: self.sid.model),
                           ("retrieval", lambda: self.retrieval.comparison), ("ranking", lambda: self.ranking.ranker),
                           ("data.synthetic", self.data.synthetic.build)):
      try:
        build()
      except (TypeError, ValueError) as e:
        return [(section, str(e))]
    return []


# ------------------------------------------------------------------------------------------------------------
# Layers: defaults < --quick preset < config file < flags, and where each value comes from
# ------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class EffectiveConfig:
  """A :class:`RunConfig` built from layers, with the origin of every leaf.

  Attributes:
    config: The RunConfig (not yet validated: call ``config.validate()``).
    origins: {dotted leaf: "default" | "quick" | "file" | "flag <name>"}.
    notes: Human-readable notes (a file value kept over the ``--quick`` preset).
  """
  config: RunConfig
  origins: dict
  notes: list
  config_path: Optional[str] = None

  def validate(self) -> RunConfig:
    """``config.validate()``; an error about a value the file or a flag set names that file or flag first."""
    try:
      return self.config.validate()
    except ConfigError as e:
      origin = self.origins.get(str(e).split(":", 1)[0].split("[", 1)[0], "default")
      if origin == "file":
        raise ConfigError(f"{self.config_path}: {e}") from e
      if origin.startswith("flag "):
        raise ConfigError(f"{origin[len('flag '):]}: {e}") from e
      raise

  def table(self) -> str:
    """``key  value  (origin)`` lines, one per leaf, in field order (values as JSON)."""
    flat = leaves(to_dict(self.config))
    width = max(len(k) for k in flat)
    return "\n".join(f"{k.ljust(width)}  {json.dumps(v)}  ({self.origins.get(k, 'default')})"
                     for k, v in flat.items())


def build_run_config(config_path: Optional[str] = None, flags: Optional[dict] = None,
                     quick: bool = False) -> EffectiveConfig:
  """The RunConfig of a command: defaults < ``--quick`` preset < the config file < flags.

  ``flags`` maps dotted keys to values and flag names: ``{"data.type": ("synthetic", "--dataset")}``. With
  ``quick``, only the file values that differ from the defaults win over the preset (a full dump of a
  RunConfig, every field written out, still gets the quick sizes for the fields it leaves at their
  defaults); each file value kept over the preset is noted.

  Raises:
    ConfigError: an unknown key or a wrongly typed value, naming the file and the dotted key.
  """
  raw = read_yaml(config_path) if config_path else {}
  flag_values = nested({k: v for k, (v, _) in (flags or {}).items()})
  try:
    file_cfg = merge(RunConfig, raw)
  except ConfigError as e:
    raise ConfigError(f"{config_path}: {e}") from e
  defaults = leaves(to_dict(RunConfig()))
  file_set = {k: v for k, v in leaves(to_dict(file_cfg)).items() if k in leaves(raw)}
  origins = {k: "file" for k in file_set}
  notes, layers = [], [raw]
  if quick:
    current = merge(RunConfig, raw, flag_values)
    before, after = leaves(to_dict(current)), leaves(to_dict(current.quick()))
    preset = {k: v for k, v in after.items() if v != before[k]}
    changed = {k: v for k, v in file_set.items() if v != defaults[k]}
    for k in preset:
      if k in changed:
        notes.append(f"--quick keeps {k}={changed[k]!r} from {config_path} (the file wins over the preset)")
      else:
        origins[k] = "quick"
    layers = [nested(preset), nested(changed)]
  origins.update({k: f"flag {name}" for k, (_, name) in (flags or {}).items()})
  config = merge(RunConfig, *layers, flag_values)
  return EffectiveConfig(config, origins, notes, config_path)


__all__ = ["DATASETS", "RUN_VARIANTS", "SPLIT_FIELDS", "DataConfig", "EffectiveConfig", "EncoderStageConfig",
           "ExportStageConfig", "RankingStageConfig", "RetrievalStageConfig", "RunConfig", "SidStageConfig",
           "SyntheticWorldConfig", "build_run_config", "load_dataset"]
