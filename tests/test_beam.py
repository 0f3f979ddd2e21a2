"""semrec.beam on the local FnApiRunner (1 and 2 worker processes): every pipeline's output equals the
in-process driver's -- store files and manifest byte for byte (also after a kill + resume), SID table byte for
byte, RunInference candidate embeddings to 1e-6, Beam Lloyd refinement = in-process refinement."""
import filecmp
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("apache_beam")

from semrec import beam as sbeam  # noqa: E402
from semrec.config import to_dict  # noqa: E402
from semrec.encoders import EmbeddingStore, EncoderConfig, build_encoder, encode_corpus  # noqa: E402

WORLD = dict(num_items=24, num_users=8, num_topics=3, num_days=3, impressions_per_user_per_day=3, seed=1)
SHARD = 8  # 24 items -> 3 shards
# Image + audio with small seeded random nets: a real encoder, cheap to build in each worker process.
ENCODER = EncoderConfig(modalities=("image", "audio"), image_weights="random", image_architecture="resnet18",
                        image_size=32, audio_weights="random", audio_architecture="vggish-small")


def _same_files(a: str, b: str):
  names = sorted(f for f in os.listdir(a) if not f.startswith("."))
  assert names == sorted(f for f in os.listdir(b) if not f.startswith("."))
  for f in names:
    pa, pb = os.path.join(a, f), os.path.join(b, f)
    if os.path.isdir(pa):
      _same_files(pa, pb)
    else:
      assert filecmp.cmp(pa, pb, shallow=False), f"{f} differs"
  return names


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def world(world_dir):
  from semrec.data import SyntheticConfig, make_synthetic
  return make_synthetic(SyntheticConfig(output_dir=world_dir, **WORLD))


@pytest.fixture(scope="module")
def reference_store(world, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("ref_store"))
  encode_corpus(world, build_encoder(ENCODER), path, shard_size=SHARD, progress=False)
  return path


def test_options():
  assert sbeam.parse_beam_options(["project=p", "num_workers=3", "save_main_session=true"]) == {
      "project": "p", "num_workers": 3, "save_main_session": True}
  with pytest.raises(ValueError, match="key=value"):
    sbeam.parse_beam_options(["oops"])
  with pytest.raises(ValueError, match="runner must be one of"):
    sbeam.make_pipeline("prism")
  with pytest.raises(ValueError, match="inprocess"):
    sbeam.make_pipeline("inprocess")


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.multiprocess)])
def test_encode_store_byte_identical(world, reference_store, tmp_path, workers):
  out = str(tmp_path / "beam")
  sbeam.encode_pipeline(world, ENCODER, out, shard_size=SHARD, num_workers=workers)
  names = _same_files(reference_store, out)
  assert names == ["manifest.json"] + [f"shard-{i:05d}-of-00003.npz" for i in range(3)]
  assert EmbeddingStore(out).is_complete()


def test_encode_killed_after_first_shard_resumes(world, world_dir, reference_store, tmp_path):
  out = str(tmp_path / "killed")
  # A real SIGKILL of the pipeline process right after its first shard file is written.
  script = textwrap.dedent(f"""
      import os, signal
      import semrec
      import semrec.beam.encode as be
      from semrec.data import SyntheticConfig, make_synthetic
      from semrec.encoders import EncoderConfig
      real = be.encode_shard
      def once(*a, **k):
        r = real(*a, **k)
        os.kill(os.getpid(), signal.SIGKILL)
      be.encode_shard = once
      ds = make_synthetic(SyntheticConfig(output_dir={world_dir!r}, **{WORLD!r}))
      be.encode_pipeline(ds, EncoderConfig(**{to_dict(ENCODER)!r}), {out!r}, shard_size={SHARD})
  """)
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
  assert proc.returncode == -9, proc.stderr[-2000:]
  shards = sorted(f for f in os.listdir(out) if f.startswith("shard-"))
  assert len(shards) == 1 and not EmbeddingStore(out).is_complete()
  first = os.path.join(out, shards[0])
  stamp = os.stat(first).st_mtime_ns
  sbeam.encode_pipeline(world, ENCODER, out, shard_size=SHARD)
  assert os.stat(first).st_mtime_ns == stamp  # kept, not re-encoded
  _same_files(reference_store, out)


@pytest.fixture(scope="module")
def sid_model_dir(reference_store, tmp_path_factory):
  from semrec.sid import RQVAEConfig, train_sid_model
  x = EmbeddingStore(reference_store).load().embeddings
  path = str(tmp_path_factory.mktemp("sid") / "model")
  train_sid_model(x, RQVAEConfig(mode="rqkmeans", num_levels=2, codebook_size=4), progress=False).save(path)
  return path


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.multiprocess)])
def test_assign_table_byte_identical(reference_store, sid_model_dir, tmp_path, workers):
  from semrec.beam.inprocess import cluster_layers
  from semrec.sid import SidModel, assign_sids, fit_kmeans
  contents = EmbeddingStore(reference_store).load()
  cents = {"k3": fit_kmeans(contents.embeddings, 3, seed=0)}
  ref = assign_sids(EmbeddingStore(reference_store), SidModel.load(sid_model_dir).assigner, str(tmp_path / "a"),
                    shard_size=10, suffix=True, cluster_layers=cluster_layers(cents), progress=False)
  table = sbeam.assign_pipeline(reference_store, sid_model_dir, str(tmp_path / "b"), shard_size=10, suffix=True,
                                cluster_centroids=cents, num_workers=workers)
  names = _same_files(str(tmp_path / "a"), str(tmp_path / "b"))
  assert names == ["codes-000000000000.npz", "codes-000000000010.npz", "codes-000000000020.npz", "table"]
  assert list(table.item_ids) == list(contents.item_ids) and set(table.cluster_ids) == {"k3"}
  np.testing.assert_array_equal(table.codes, ref.codes)
  assert table.suffix is not None and len(np.unique(table.full_codes(), axis=0)) == len(table)


def test_embed_candidates_run_inference(movielens, tmp_path):
  """RunInference over the exported candidate tower == embed_candidates on the live model (1e-6)."""
  from semrec.data import ItemFeatures
  from semrec.export import export_candidate_tower
  from semrec.sid import ItemRepresentationConfig
  from semrec.towers import (CandidateTowerConfig, ItemEncoderConfig, QueryTowerConfig, RetrievalInputs,
                             RetrieverConfig, TwoTowerRetriever, embed_candidates, init_model)
  ids = np.asarray(movielens.item_ids[:300], dtype=object)
  content = np.random.default_rng(0).normal(size=(len(ids), 8)).astype(np.float32)
  # The "content" item tower: a dense projection of the content embedding.
  cfg = RetrieverConfig(
      item=ItemEncoderConfig(representation=ItemRepresentationConfig(modes=("dense",), embedding_dim=8,
                                                                     content_dim=8)),
      candidate=CandidateTowerConfig(mlp_dims=(16,), output_dim=8),
      query=QueryTowerConfig(max_history=3, mlp_dims=(16,), output_dim=8))
  model = TwoTowerRetriever(cfg)
  inputs = RetrievalInputs(ItemFeatures(ids, {"content": content}), model.required_features(), 3)
  batches = [{k: v.numpy() for k, v in b.items()} for b in inputs.catalogue_dataset(128)]
  inter = movielens.interactions
  rows = inter[inter["item_id"].astype(str).isin(set(ids))].head(64)
  init_model(model, next(iter(inputs.dataset(inputs.encode(rows), 64))))
  export = export_candidate_tower(str(tmp_path / "export"), model.candidate_embedding, batches[0])
  ref = embed_candidates(model, inputs)
  feats = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  got = sbeam.embed_pipeline(export.path, ids, feats, str(tmp_path / "emb.npz"), max_batch_size=64)
  assert got.shape == ref.shape == (300, 8)
  np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)
  with np.load(tmp_path / "emb.npz") as f:
    assert list(f["item_ids"]) == [str(i) for i in ids]


def test_kmeans_sample_fit_and_beam_lloyd_refinement(reference_store):
  from semrec.sid import fit_kmeans, lloyd_statistics, refine_kmeans
  x = EmbeddingStore(reference_store).load().embeddings
  sample_only = sbeam.fit_kmeans_pipeline(reference_store, 3, seed=0, sample_size=12)
  np.testing.assert_array_equal(sample_only, fit_kmeans(x, 3, seed=0, sample_size=12))
  refined = sbeam.fit_kmeans_pipeline(reference_store, 3, seed=0, sample_size=12, refine_steps=2)
  np.testing.assert_allclose(refined, refine_kmeans(x, sample_only, 2), atol=1e-5)
  # Lloyd on all data cannot raise the full-data error of the sample fit.
  assert lloyd_statistics(x, refined)[2] <= lloyd_statistics(x, sample_only)[2] + 1e-6


def test_cli_batch_assign_runners_agree(reference_store, sid_model_dir, tmp_path):
  from click.testing import CliRunner
  from semrec.cli import main
  from semrec.sid import SidTable
  cents = tmp_path / "k3.npy"
  from semrec.sid import fit_kmeans
  np.save(cents, fit_kmeans(EmbeddingStore(reference_store).load().embeddings, 3, seed=0))
  outs = {}
  for runner in ("inprocess", "direct"):
    out = str(tmp_path / runner)
    res = CliRunner().invoke(main, ["batch", "assign", "--store", reference_store, "--sid-model", sid_model_dir,
                                    "--out", out, "--centroids", f"k3={cents}", "--shard-size", "10",
                                    "--runner", runner], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    outs[runner] = out
  _same_files(outs["inprocess"], outs["direct"])
  assert set(SidTable.load(os.path.join(outs["direct"], "table")).cluster_ids) == {"k3"}
  bad = CliRunner().invoke(main, ["batch", "assign", "--store", reference_store, "--sid-model", sid_model_dir,
                                  "--out", str(tmp_path / "x"), "--centroids", "k3"])
  assert bad.exit_code != 0 and "NAME=FILE.npy" in bad.output


@pytest.fixture(scope="module")
def rq_store(tmp_path_factory):
  from semrec.benchmarks.bench_scale import random_store
  path = str(tmp_path_factory.mktemp("rq") / "store")
  random_store(path, 300, 16, 100)  # 300 random unit vectors, 3 shards
  return path


RQ = dict(mode="rqkmeans", num_levels=2, codebook_size=8, kmeans_sample_size=200)


@pytest.mark.parametrize("workers,refine", [(1, 0), (1, 2), pytest.param(2, 1, marks=pytest.mark.multiprocess)])
def test_rqkmeans_level_by_level_equals_in_process(rq_store, tmp_path, workers, refine):
  """Beam RQ-KMeans (normaliser moments, per-level sample fit, Lloyd combines) == train_sid_model(rqkmeans)."""
  from semrec.sid import RQVAEConfig, SidModel, train_sid_model
  cfg = RQVAEConfig(**RQ, kmeans_refine_steps=refine)
  x = EmbeddingStore(rq_store).load().embeddings
  ref = train_sid_model(x, cfg, progress=False)
  got = sbeam.fit_rqkmeans_pipeline(rq_store, cfg, num_workers=workers, out_dir=str(tmp_path / "model"))
  for a, b in zip(ref.assigner.normalizer.get_weights(), got.assigner.normalizer.get_weights()):
    np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)
  assert got.codebooks().shape == (2, 8, 16)  # whitening capped at F = 16 dims
  np.testing.assert_allclose(got.codebooks(), ref.codebooks(), atol=1e-6, rtol=0)
  codes = SidModel.load(str(tmp_path / "model")).codes(x)
  np.testing.assert_array_equal(codes, ref.codes(x))
  assert len(np.unique(codes[:, 0])) == 8


def test_rqkmeans_refinement_lowers_full_data_error(rq_store):
  """In-process kmeans_refine_steps: Lloyd passes over all items move the sample-fitted level-0 codebook and
  cannot raise its full-data squared error (the check the Beam refinement is compared against above)."""
  from semrec.sid import RQVAEConfig, lloyd_statistics, train_sid_model
  x = EmbeddingStore(rq_store).load().embeddings
  plain = train_sid_model(x, RQVAEConfig(**RQ), progress=False)
  refined = train_sid_model(x, RQVAEConfig(**RQ, kmeans_refine_steps=2), progress=False)
  z = sbeam.level_residuals(plain.assigner, x, plain.codebooks()[:0])  # level-0 input: the normalised items
  assert np.abs(refined.codebooks()[0] - plain.codebooks()[0]).max() > 1e-3
  assert lloyd_statistics(z, refined.codebooks()[0])[2] < lloyd_statistics(z, plain.codebooks()[0])[2]
  with pytest.raises(ValueError, match="mode='rqkmeans'"):
    sbeam.fit_rqkmeans_pipeline(rq_store, RQVAEConfig(mode="rqvae"))


def test_cli_batch_rqkmeans_runners_agree(rq_store, tmp_path):
  from click.testing import CliRunner
  from semrec.cli import main
  from semrec.sid import SidModel
  x = EmbeddingStore(rq_store).load().embeddings
  models = {}
  for runner in ("inprocess", "direct"):
    out = str(tmp_path / runner)
    res = CliRunner().invoke(main, ["batch", "rqkmeans", "--store", rq_store, "--out", out, "--levels", "2",
                                    "--codebook-size", "8", "--sample-size", "200", "--refine-steps", "1",
                                    "--runner", runner], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    models[runner] = SidModel.load(out)
  np.testing.assert_allclose(models["direct"].codebooks(), models["inprocess"].codebooks(), atol=1e-6, rtol=0)
  np.testing.assert_array_equal(models["direct"].codes(x), models["inprocess"].codes(x))
