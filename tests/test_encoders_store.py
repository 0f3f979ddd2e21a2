"""Embedding store: layout and manifest, fallbacks recorded, refusal of mixed inputs, and a real
kill-and-resume (encoding in a subprocess killed mid-run, resumed here, compared to an uninterrupted run)."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from semrec.encoders import EmbeddingStore, encode_corpus, read_shard

WORLD = dict(num_items=24, num_users=8, num_topics=3, num_days=3, impressions_per_user_per_day=3, seed=1)
SHARD = 4  # 24 items -> 6 shards


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  from semrec.data import SyntheticConfig, make_synthetic
  out = str(tmp_path_factory.mktemp("world"))
  return make_synthetic(SyntheticConfig(output_dir=out, **WORLD)), out


@pytest.fixture(scope="module")
def reference(world, synthetic_encoder, tmp_path_factory):
  """An uninterrupted run."""
  ds, _ = world
  path = str(tmp_path_factory.mktemp("reference"))
  done = []
  encode_corpus(ds, synthetic_encoder, path, shard_size=SHARD, progress=False,
                on_shard_done=lambda i, computed: done.append((i, computed)))
  assert done == [(i, True) for i in range(6)]
  return EmbeddingStore(path).load()


def test_store_layout_and_manifest(world, reference):
  ds, _ = world
  c = reference
  assert list(c.item_ids) == list(ds.item_ids)
  assert c.embeddings.shape == (24, 1024) and c.embeddings.dtype == np.float32
  assert c.mask.shape == (24, 3) and c.mask.dtype == np.float32
  np.testing.assert_array_equal(c.mask, 1.0)
  m = c.manifest
  assert m["complete"] and m["format"] == "semrec.embedding_store/1"
  assert m["dataset"] == {"name": "synthetic", "fingerprint": ds.fingerprint(), "num_items": 24}
  assert m["encoder"]["modality_order"] == ["text", "image", "audio"]
  assert m["encoder"]["dims"] == {"text": 384, "image": 512, "audio": 128}
  assert m["encoder"]["random_init"] == {"text": False, "image": True, "audio": True}
  assert m["encoder"]["encoders"]["text"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
  assert [s["file"] for s in m["shards"]] == [f"shard-{i:05d}-of-00006.npz" for i in range(6)]
  assert m["fallbacks"] == [] and m["shard_size"] == SHARD
  # Text embeddings of the synthetic titles group by topic (real MiniLM).
  t = c.embeddings[:, :384]
  sim = t @ t.T
  same = ds.item_topics[:, None] == ds.item_topics[None, :]
  off_diag = ~np.eye(24, dtype=bool)
  assert sim[same & off_diag].mean() > sim[~same].mean() + 0.2


def test_fallbacks_recorded_and_incomplete_store_refused(world, synthetic_encoder, tmp_path):
  ds, _ = world
  items = ds.items.copy()
  items.loc[2, "image_path"] = str(tmp_path / "gone.png")
  items.loc[5, "title"] = ""
  bad = dataclasses.replace(ds, items=items)
  path = str(tmp_path / "store")
  store = encode_corpus(bad, synthetic_encoder, path, shard_size=12, progress=False)
  c = store.load()
  fb = c.manifest["fallbacks"]
  assert [(f["item_id"], f["field"]) for f in fb] == [(items.item_id[2], "image_path"), (items.item_id[5], "text")]
  assert c.manifest["num_fallbacks"] == 2
  assert c.mask[2].tolist() == [1, 0, 1] and c.mask[5].tolist() == [0, 1, 1]
  # A store whose run did not finish is refused by load().
  manifest = json.loads(open(os.path.join(path, "manifest.json")).read())
  manifest["complete"] = False
  with open(os.path.join(path, "manifest.json"), "w") as f:
    json.dump(manifest, f)
  with pytest.raises(ValueError, match="incomplete"):
    EmbeddingStore(path).load()
  # Other inputs in the same directory are refused, unless overwrite=True.
  with pytest.raises(ValueError, match="other inputs"):
    encode_corpus(ds, synthetic_encoder, path, shard_size=12, progress=False)
  encode_corpus(ds, synthetic_encoder, path, shard_size=12, progress=False, overwrite=True)
  assert EmbeddingStore(path).load().manifest["fallbacks"] == []


_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import semrec
    from semrec.data import SyntheticConfig, make_synthetic
    from semrec.encoders import EncoderConfig, build_encoder, encode_corpus
    world, store_dir = json.loads(sys.argv[1]), sys.argv[2]
    ds = make_synthetic(SyntheticConfig(**world))
    enc = build_encoder(EncoderConfig.synthetic(image_architecture="resnet18", image_size=32,
                                                audio_architecture="vggish-small"))
    print("encoding", flush=True)
    # Slow the run down after each shard so the test can kill it between shards 1 and 6.
    encode_corpus(ds, enc, store_dir, shard_size=%d, progress=False, on_shard_done=lambda i, c: time.sleep(1))
    print("finished", flush=True)
""" % SHARD)


def test_kill_and_resume_matches_uninterrupted_run(world, synthetic_encoder, reference, tmp_path):
  ds, out_dir = world
  store_dir = str(tmp_path / "store")
  script = tmp_path / "encode.py"
  script.write_text(_SCRIPT)
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  proc = subprocess.Popen([sys.executable, str(script), json.dumps(dict(WORLD, output_dir=out_dir)), store_dir],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
  first = os.path.join(store_dir, "shard-00000-of-00006.npz")
  deadline = time.time() + 240
  while not os.path.exists(first):
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    assert time.time() < deadline, "encoding subprocess produced no shard in time"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  kept = sorted(f for f in os.listdir(store_dir) if f.startswith("shard-") and f.endswith(".npz"))
  assert 1 <= len(kept) < 6, kept
  assert not EmbeddingStore(store_dir).is_complete()
  with pytest.raises(ValueError, match="incomplete"):
    EmbeddingStore(store_dir).load()
  stats = {f: os.stat(os.path.join(store_dir, f)).st_mtime_ns for f in kept}

  done = []
  encode_corpus(ds, synthetic_encoder, store_dir, shard_size=SHARD, progress=False,
                on_shard_done=lambda i, computed: done.append((i, computed)))
  # Finished shards were kept (not recomputed, not rewritten); only the rest were encoded.
  assert [c for _, c in done] == [False] * len(kept) + [True] * (6 - len(kept))
  assert {f: os.stat(os.path.join(store_dir, f)).st_mtime_ns for f in kept} == stats
  assert not [f for f in os.listdir(store_dir) if ".tmp" in f]

  resumed = EmbeddingStore(store_dir).load()
  np.testing.assert_array_equal(resumed.item_ids, reference.item_ids)
  np.testing.assert_array_equal(resumed.mask, reference.mask)
  # Shards written by the killed process and by this one equal the uninterrupted run bit for bit.
  np.testing.assert_array_equal(resumed.embeddings, reference.embeddings)
  assert resumed.manifest == reference.manifest
  b = read_shard(os.path.join(store_dir, kept[0]))
  assert list(b.item_ids) == list(ds.item_ids[:SHARD])
