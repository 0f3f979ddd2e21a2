"""A scaled impression world for the ranker: 10^5 items, 10^6+ impressions, uploads every day.

The synthetic multimodal world (``data.synthetic``) renders images and audio and is sized for the
encoders (hundreds of items). The SID-adaptation regimes of Singh et al. need a catalogue far
larger than the embedding tables, a steady flow of new items and many impressions per SID piece,
so this generator skips media and draws *content vectors* directly from a two-level topic
hierarchy (topic -> subtopic -> item). SIDs are then computed from those vectors with semrec's own
RQ-KMeans / RQ-VAE, exactly as from encoder embeddings.

Click-through is ``sigmoid(base + affinity(user, topic) + content quality(topic, subtopic) +
item quality + noise)``: the content terms are a function of the item's content (what SIDs can
share with a new item), the per-item quality is not (it must be memorised from the item's own
impressions). Everything is vectorised NumPy and a function of the config (seed included).

Shape letters: N items, U users, T topics, S subtopics per topic, D content width, n impressions.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import pandas as pd

from semrec.data.dataset import RecDataset
from semrec.data.pipelines import ItemFeatures

DAY_SECONDS = 86400


@dataclasses.dataclass
class ImpressionWorldConfig:
  """Sizes, CTR model and seed of the scaled impression world.

  Attributes:
    num_items: N, catalogue size over all days.
    num_users: U.
    num_days: Days of uploads and impressions (day 0 .. num_days - 1).
    impressions_per_day: Impressions logged each day.
    num_topics: T top-level topics.
    subtopics_per_topic: S subtopics inside each topic (T * S leaf concepts).
    content_dim: D, width of the content vectors.
    initial_fraction: Share of the catalogue already online on day 0; the rest is uploaded
      uniformly over days 1 .. num_days - 1 (so every day has new items).
    freshness_days: Exposure of an item decays as exp(-age / freshness_days).
    popularity_sigma: Log-normal spread of per-item exposure (head vs tail).
    on_topic_share: Share of a user's impressions drawn from the user's preferred topics (the
      rest from the whole catalogue).
    user_concentration: Dirichlet concentration of user topic preferences (small = focused users).
    affinity_weight: Weight of log(T * preference) in the click logit.
    topic_quality_std, subtopic_quality_std: Std of the content-driven quality terms.
    item_quality_std: Std of the per-item quality (not predictable from content).
    noise_std: Std of per-impression logit noise.
    base_logit: Click logit offset (sets the click rate).
    like_quality_weight: Weight of item + content quality in the like-given-click logit.
    seed: Everything is a function of the config, this seed included.
  """
  num_items: int = 120_000
  num_users: int = 20_000
  num_days: int = 30
  impressions_per_day: int = 80_000
  num_topics: int = 32
  subtopics_per_topic: int = 16
  content_dim: int = 32
  initial_fraction: float = 0.3
  freshness_days: float = 3.0
  popularity_sigma: float = 1.0
  on_topic_share: float = 0.7
  user_concentration: float = 0.1
  affinity_weight: float = 0.6
  topic_quality_std: float = 0.5
  subtopic_quality_std: float = 0.5
  item_quality_std: float = 0.8
  noise_std: float = 0.3
  base_logit: float = -2.0
  like_quality_weight: float = 1.0
  seed: int = 0

  def __post_init__(self):
    for f in ("num_items", "num_users", "num_days", "impressions_per_day", "num_topics", "subtopics_per_topic",
              "content_dim"):
      if int(getattr(self, f)) < 1:
        raise ValueError(f"ImpressionWorldConfig.{f} must be >= 1, got {getattr(self, f)}")
    if self.num_days < 2:
      raise ValueError(f"ImpressionWorldConfig.num_days must be >= 2 (uploads after day 0), got {self.num_days}")
    if not 0.0 < self.initial_fraction < 1.0:
      raise ValueError(f"ImpressionWorldConfig.initial_fraction must be in (0, 1), got {self.initial_fraction}")
    if not 0.0 <= self.on_topic_share <= 1.0:
      raise ValueError(f"ImpressionWorldConfig.on_topic_share must be in [0, 1], got {self.on_topic_share}")
    if self.freshness_days <= 0 or self.user_concentration <= 0:
      raise ValueError("ImpressionWorldConfig.freshness_days and user_concentration must be > 0")


@dataclasses.dataclass
class ImpressionWorld:
  """The generated world.

  Attributes:
    config: The :class:`ImpressionWorldConfig` it came from.
    dataset: ``RecDataset`` (interactions: user_id, item_id, timestamp, day, label = click, like;
      items: item_id, upload_day, topic, subtopic), ``item_topics`` = topic per item.
    content: [N, D] float32 unit-norm content vectors (catalogue order).
    topic: [N] int32 topic per item; subtopic: [N] int32 subtopic (0 .. S-1) within it.
    upload_day: [N] int32 day each item goes online.
    content_logit: [N] float32 content-driven part of the click logit (topic + subtopic quality).
    item_quality: [N] float32 per-item part (to be memorised).
  """
  config: ImpressionWorldConfig
  dataset: RecDataset
  content: np.ndarray
  topic: np.ndarray
  subtopic: np.ndarray
  upload_day: np.ndarray
  content_logit: np.ndarray
  item_quality: np.ndarray

  def item_features(self, sid: Optional[np.ndarray] = None) -> ItemFeatures:
    """``ItemFeatures`` with ``content`` [N, D] (and ``sid`` [N, L] when given)."""
    arrays = {"content": self.content}
    if sid is not None:
      arrays["sid"] = np.asarray(sid, np.int32)
    return ItemFeatures(self.dataset.item_ids, arrays)


def _items(cfg: ImpressionWorldConfig, rng: np.random.Generator) -> dict:
  """Item topics, content vectors, quality terms and upload days (catalogue ordered by upload)."""
  T, S, D, N = cfg.num_topics, cfg.subtopics_per_topic, cfg.content_dim, cfg.num_items
  topic_center = rng.normal(size=(T, D))
  topic_center /= np.linalg.norm(topic_center, axis=1, keepdims=True)
  sub_offset = rng.normal(size=(T, S, D)) / np.sqrt(D)
  topic_q = rng.normal(0, cfg.topic_quality_std, size=T)
  sub_q = rng.normal(0, cfg.subtopic_quality_std, size=(T, S))
  # Topic sizes are skewed (Zipf-like), as real catalogues are.
  topic_p = 1.0 / np.arange(1, T + 1) ** 0.7
  topic = rng.choice(T, size=N, p=topic_p / topic_p.sum())
  subtopic = rng.integers(0, S, size=N)
  x = topic_center[topic] + 0.8 * sub_offset[topic, subtopic] + 0.35 * rng.normal(size=(N, D)) / np.sqrt(D)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  n0 = int(round(N * cfg.initial_fraction))
  upload = np.sort(np.concatenate([np.zeros(n0, np.int64), rng.integers(1, cfg.num_days, size=N - n0)]))
  return {"topic": topic.astype(np.int32), "subtopic": subtopic.astype(np.int32), "content": x.astype(np.float32),
          "upload_day": upload.astype(np.int32),
          "content_logit": (topic_q[topic] + sub_q[topic, subtopic]).astype(np.float32),
          "item_quality": rng.normal(0, cfg.item_quality_std, size=N).astype(np.float32),
          "exposure": rng.lognormal(0.0, cfg.popularity_sigma, size=N)}


def _sample_by_topic(rng, topics_wanted: np.ndarray, items_topic: np.ndarray, weight: np.ndarray) -> np.ndarray:
  """One item per entry of ``topics_wanted``, drawn from that topic's items with prob ~ ``weight``
  (vectorised: cumulative weights sorted by topic, one searchsorted for all draws). A topic with no
  available item falls back to the whole catalogue."""
  order = np.argsort(items_topic, kind="stable")
  cum = np.cumsum(weight[order])
  T = int(max(items_topic.max(), topics_wanted.max())) + 1
  bounds = np.searchsorted(items_topic[order], np.arange(T + 1), side="left")
  lo = np.where(bounds[:-1] > 0, cum[np.maximum(bounds[:-1] - 1, 0)], 0.0)
  hi = np.where(bounds[1:] > 0, cum[np.maximum(bounds[1:] - 1, 0)], 0.0)
  empty = (hi - lo) <= 0
  lo_w, hi_w = lo[topics_wanted], hi[topics_wanted]
  e = empty[topics_wanted]
  lo_w[e], hi_w[e] = 0.0, cum[-1]
  u = lo_w + rng.random(len(topics_wanted)) * (hi_w - lo_w)
  pos = np.minimum(np.searchsorted(cum, u, side="right"), len(cum) - 1)
  return order[pos]


def _day_impressions(cfg, rng, day: int, items: dict, prefs: np.ndarray, activity: np.ndarray) -> dict:
  """The impressions of one day: users by activity, items by freshness x exposure, on-topic or not."""
  n = cfg.impressions_per_day
  avail = np.flatnonzero(items["upload_day"] <= day)
  w = items["exposure"][avail] * np.exp(-(day - items["upload_day"][avail]) / cfg.freshness_days)
  users = rng.choice(len(activity), size=n, p=activity)
  # On-topic draws: a topic from the user's preferences (inverse-CDF, vectorised over rows).
  cum_pref = np.cumsum(prefs[users], axis=1)
  want = (cum_pref < rng.random((n, 1)) * cum_pref[:, -1:]).sum(axis=1)
  on_topic = rng.random(n) < cfg.on_topic_share
  shown = np.empty(n, np.int64)
  shown[on_topic] = avail[_sample_by_topic(rng, want[on_topic], items["topic"][avail], w)]
  cum = np.cumsum(w)
  shown[~on_topic] = avail[np.minimum(np.searchsorted(cum, rng.random((~on_topic).sum()) * cum[-1]), len(avail) - 1)]
  t = items["topic"][shown]
  affinity = np.log(prefs[users, t] * cfg.num_topics + 1e-3)
  quality = items["content_logit"][shown] + items["item_quality"][shown]
  logit = (cfg.base_logit + cfg.affinity_weight * affinity + quality + rng.normal(0, cfg.noise_std, n))
  click = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
  like = click & (rng.random(n) < 1.0 / (1.0 + np.exp(-(cfg.like_quality_weight * quality - 0.5))))
  secs = rng.integers(0, DAY_SECONDS, size=n)
  return {"user": users, "item": shown, "timestamp": day * DAY_SECONDS + secs, "day": np.full(n, day),
          "label": click, "like": like}


def make_impression_world(config: Optional[ImpressionWorldConfig] = None) -> ImpressionWorld:
  """Generates the world for ``config`` (deterministic in ``config.seed``; ~10 s at the defaults)."""
  cfg = config or ImpressionWorldConfig()
  rng = np.random.default_rng(cfg.seed)
  items = _items(cfg, rng)
  prefs = rng.dirichlet(np.full(cfg.num_topics, cfg.user_concentration), size=cfg.num_users)
  activity = rng.lognormal(0.0, 1.0, size=cfg.num_users)
  activity /= activity.sum()
  days = [_day_impressions(cfg, rng, d, items, prefs, activity) for d in range(cfg.num_days)]
  cols = {k: np.concatenate([d[k] for d in days]) for k in days[0]}
  order = np.lexsort((cols["item"], cols["user"], cols["timestamp"]))
  item_ids = np.array([f"i{i:07d}" for i in range(cfg.num_items)], dtype=object)
  user_ids = np.array([f"u{u:06d}" for u in range(cfg.num_users)], dtype=object)
  inter = pd.DataFrame({"user_id": user_ids[cols["user"][order]], "item_id": item_ids[cols["item"][order]],
                        "timestamp": cols["timestamp"][order].astype(np.int64),
                        "day": cols["day"][order].astype(np.int32),
                        "label": cols["label"][order].astype(np.float32),
                        "like": cols["like"][order].astype(np.float32)})
  catalogue = pd.DataFrame({"item_id": item_ids, "upload_day": items["upload_day"], "topic": items["topic"],
                            "subtopic": items["subtopic"]})
  ds = RecDataset(name="impressions", interactions=inter, items=catalogue, text_columns=(),
                  item_topics=items["topic"], user_topics=prefs.astype(np.float32))
  return ImpressionWorld(config=cfg, dataset=ds, content=items["content"], topic=items["topic"],
                         subtopic=items["subtopic"], upload_day=items["upload_day"],
                         content_logit=items["content_logit"], item_quality=items["item_quality"])
