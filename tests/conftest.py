"""Test setup: semrec must be imported before TensorFlow (it sets TF_USE_LEGACY_KERAS)."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import semrec  # noqa: E402,F401
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_small(tmp_path_factory):
  """A tiny synthetic world (media files under a session temp dir)."""
  from semrec.data import SyntheticConfig, make_synthetic
  cfg = SyntheticConfig(num_items=120, num_users=40, num_topics=4, num_days=8, impressions_per_user_per_day=5,
                        seed=0, output_dir=str(tmp_path_factory.mktemp("synthetic")))
  return make_synthetic(cfg)


@pytest.fixture(scope="session")
def movielens():
  from semrec.data import load_movielens
  return load_movielens()


@pytest.fixture(scope="session")
def synthetic_encoder():
  """A fast MultimodalEncoder for the synthetic corpus: real MiniLM text, light random-init image/audio nets.

  Output width 384 (text) + 512 (resnet18 image) + 128 (vggish-small audio) = 1024, mask [N, 3].
  """
  from semrec.encoders import EncoderConfig, build_encoder
  return build_encoder(EncoderConfig.synthetic(image_architecture="resnet18", image_size=32,
                                               audio_architecture="vggish-small"))


@pytest.fixture
def tiny_cold_items():
  """(dataset, cold_items split): 12 items, 8 users with 6 distinct items each (seeded), half the items held out."""
  import numpy as np
  import pandas as pd
  from semrec.data import RecDataset, make_split
  rng = np.random.default_rng(0)
  rows = [(f"u{u}", f"i{i}", t) for u in range(8) for t, i in enumerate(rng.choice(12, 6, replace=False))]
  inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
  inter["label"] = np.float32(1)
  ids = np.array([f"i{i}" for i in range(12)], dtype=object)
  ds = RecDataset("c", inter, pd.DataFrame({"item_id": ids, "title": ids}))
  return ds, make_split(ds, "cold_items", cold_fraction=0.5, seed=0)
