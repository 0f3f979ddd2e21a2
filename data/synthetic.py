"""A deterministic synthetic multimodal world with known topics.

Items are drawn from latent topics. Each topic fixes an image colour and stripe pattern, a
vocabulary for titles, an audio pitch, and a quality prior; users have topic preferences; items
are uploaded day by day and users see impressions with click and like labels. Because the
topics are known (``RecDataset.item_topics``), tests can check that cluster IDs and SID prefixes
are topic-pure. Images (PNG) and audio (16 kHz mono WAV) are real files, so the encoders read
them exactly as they read user data.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import wave
from typing import Optional

import numpy as np
import pandas as pd

from semrec.atomic import atomic_path
from semrec.data.dataset import RecDataset

_TOPIC_WORDS = [
    ["pasta", "recipe", "kitchen", "baking", "chef", "dinner", "sauce", "bread", "soup", "cooking", "dessert", "spices"],
    ["football", "goal", "match", "league", "striker", "stadium", "penalty", "coach", "team", "season", "derby", "keeper"],
    ["guitar", "concert", "song", "album", "drummer", "melody", "band", "piano", "singer", "chorus", "live", "acoustic"],
    ["beach", "travel", "island", "hotel", "flight", "mountain", "hiking", "city", "tour", "passport", "road", "trip"],
    ["console", "gameplay", "level", "boss", "speedrun", "controller", "quest", "arcade", "multiplayer", "gamer", "pixel", "loot"],
    ["physics", "experiment", "telescope", "galaxy", "chemistry", "molecule", "laboratory", "rocket", "planet", "atom", "theory", "science"],
    ["fashion", "dress", "outfit", "runway", "makeup", "style", "designer", "shoes", "jacket", "trend", "model", "wardrobe"],
    ["puppy", "kitten", "dog", "cat", "pet", "training", "vet", "parrot", "aquarium", "hamster", "leash", "fur"],
    ["engine", "car", "racing", "motor", "tires", "garage", "drift", "sedan", "truck", "horsepower", "repair", "highway"],
    ["workout", "fitness", "yoga", "gym", "cardio", "muscle", "stretching", "running", "protein", "squat", "trainer", "sweat"],
    ["election", "news", "report", "parliament", "economy", "interview", "policy", "debate", "minister", "breaking", "vote", "press"],
    ["garden", "flowers", "plants", "seeds", "soil", "tomato", "roses", "compost", "lawn", "tree", "harvest", "greenhouse"],
]
_FILLER = ["best", "new", "my", "top", "easy", "amazing", "daily", "ultimate", "quick", "first", "how", "why"]


@dataclasses.dataclass
class SyntheticConfig:
  """Sizes and seed of the synthetic world.

  Attributes:
    num_items: Catalogue size.
    num_users: Number of users.
    num_topics: Latent topics (at most 12, one vocabulary each).
    num_days: Days of uploads and impressions.
    impressions_per_user_per_day: Impressions each user sees per day.
    initial_fraction: Fraction of items already uploaded on day 0.
    image_size: Side of the square RGB images (pixels).
    audio_seconds: Length of each audio clip.
    sample_rate: Audio sample rate (Hz).
    seed: Everything is a function of the config, this seed included.
    output_dir: Where media files go; default a folder under the system temp dir keyed by the config.
  """
  num_items: int = 300
  num_users: int = 120
  num_topics: int = 6
  num_days: int = 20
  impressions_per_user_per_day: int = 6
  initial_fraction: float = 0.4
  image_size: int = 32
  audio_seconds: float = 1.0
  sample_rate: int = 16000
  seed: int = 0
  output_dir: Optional[str] = None

  def __post_init__(self):
    if not 1 <= self.num_topics <= len(_TOPIC_WORDS):
      raise ValueError(f"num_topics must be in [1, {len(_TOPIC_WORDS)}], got {self.num_topics}")
    for f in ("num_items", "num_users", "num_days", "impressions_per_user_per_day", "image_size"):
      if getattr(self, f) < 1:
        raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")

  def key(self) -> str:
    d = dataclasses.asdict(self)
    d.pop("output_dir")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _topic_image(rng, topic: int, num_topics: int, size: int) -> np.ndarray:
  """[size, size, 3] uint8: a topic hue, a topic stripe angle/frequency, item-level noise."""
  import colorsys
  hue = topic / num_topics
  base = np.array(colorsys.hsv_to_rgb(hue, 0.8, 0.9))
  yy, xx = np.mgrid[0:size, 0:size] / size
  angle = np.pi * topic / num_topics
  freq = 2 + topic % 4
  stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 6.3))
  img = base[None, None, :] * (0.55 + 0.45 * stripes[..., None])
  img += rng.normal(0, 0.06, size=img.shape)
  return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _topic_audio(rng, topic: int, num_topics: int, seconds: float, sr: int) -> np.ndarray:
  """[samples] int16: a topic pitch with harmonics, an item-level vibrato and noise."""
  n = int(seconds * sr)
  t = np.arange(n) / sr
  f0 = 180.0 * 2 ** (2.5 * topic / max(num_topics, 1)) * rng.uniform(0.97, 1.03)
  sig = sum((0.6 / h) * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3)) for h in (1, 2, 3))
  sig *= 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(1, 4) * t)
  sig += rng.normal(0, 0.05, size=n)
  sig = sig / (np.abs(sig).max() + 1e-9) * 0.8
  return (sig * 32767).astype(np.int16)


def write_wav(path: str, samples: np.ndarray, sample_rate: int):
  """Writes int16 mono samples as a WAV file (atomically)."""
  with atomic_path(path) as tmp, wave.open(tmp, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(sample_rate)
    w.writeframes(np.asarray(samples, dtype=np.int16).tobytes())


def make_synthetic(config: Optional[SyntheticConfig] = None) -> RecDataset:
  """Builds the synthetic world for ``config`` (deterministic in ``config.seed``)."""
  from PIL import Image

  cfg = config or SyntheticConfig()
  rng = np.random.default_rng(cfg.seed)
  T = cfg.num_topics
  out_dir = cfg.output_dir or os.path.join(tempfile.gettempdir(), "semrec-synthetic", cfg.key())
  os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
  os.makedirs(os.path.join(out_dir, "audio"), exist_ok=True)

  # Items: topic, upload day, hidden quality, content.
  topics = rng.integers(0, T, size=cfg.num_items)
  n0 = max(1, int(cfg.num_items * cfg.initial_fraction))
  upload_day = np.concatenate([np.zeros(n0, int), rng.integers(1, max(cfg.num_days, 2), size=cfg.num_items - n0)])
  upload_day = np.sort(upload_day)
  quality = rng.normal(0, 1, size=cfg.num_items)
  item_ids = [f"item_{i:05d}" for i in range(cfg.num_items)]
  titles, image_paths, audio_paths = [], [], []
  for i, z in enumerate(topics):
    words = list(rng.choice(_TOPIC_WORDS[z], size=3, replace=False))
    words.insert(int(rng.integers(0, 4)), str(rng.choice(_FILLER)))
    titles.append(" ".join(words))
    img_path = os.path.join(out_dir, "images", f"{item_ids[i]}.png")
    wav_path = os.path.join(out_dir, "audio", f"{item_ids[i]}.wav")
    img = _topic_image(rng, int(z), T, cfg.image_size)
    audio = _topic_audio(rng, int(z), T, cfg.audio_seconds, cfg.sample_rate)
    if not os.path.exists(img_path):
      with atomic_path(img_path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
    if not os.path.exists(wav_path):
      write_wav(wav_path, audio, cfg.sample_rate)
    image_paths.append(img_path)
    audio_paths.append(wav_path)
  items = pd.DataFrame({
      "item_id": item_ids,
      "title": titles,
      "image_path": image_paths,
      "audio_path": audio_paths,
      "production_score": (quality + rng.normal(0, 0.3, cfg.num_items)).astype(np.float32),
      "duration_s": rng.uniform(20, 600, cfg.num_items).astype(np.float32),
      "upload_day": upload_day.astype(np.float32),
  })

  # Users and day-by-day impressions.
  prefs = rng.dirichlet(np.full(T, 0.3), size=cfg.num_users)
  user_ids = np.array([f"user_{u:04d}" for u in range(cfg.num_users)], dtype=object)
  rows = []
  for day in range(cfg.num_days):
    avail = np.flatnonzero(upload_day <= day)
    age = day - upload_day[avail]
    p = np.exp(-age / 7.0)
    p /= p.sum()
    k = min(cfg.impressions_per_user_per_day, len(avail))
    for u in range(cfg.num_users):
      shown = avail[rng.choice(len(avail), size=k, replace=False, p=p)]
      affinity = np.log(prefs[u, topics[shown]] * T + 1e-3)
      click = rng.random(k) < 1 / (1 + np.exp(-(1.5 * affinity + 0.5 * quality[shown] - 1.0)))
      like = click & (rng.random(k) < 1 / (1 + np.exp(-(quality[shown] + affinity - 1.0))))
      secs = np.sort(rng.integers(0, 86400, size=k))
      for j in range(k):
        rows.append((user_ids[u], item_ids[shown[j]], day * 86400 + int(secs[j]), float(click[j]), float(like[j])))
  inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "label", "like"])
  inter["timestamp"] = inter["timestamp"].astype(np.int64)
  inter["label"] = inter["label"].astype(np.float32)
  inter["like"] = inter["like"].astype(np.float32)
  inter = inter.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)
  return RecDataset(name="synthetic", interactions=inter, items=items, text_columns=("title",),
                    quality_columns=("production_score", "duration_s"), item_topics=topics.astype(np.int32),
                    user_topics=prefs.astype(np.float32))
