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
