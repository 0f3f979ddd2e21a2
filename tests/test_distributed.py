"""tf.distribute: cross-replica in-batch negatives, 2 MWMS worker processes on 127.0.0.1 vs one process, the
RQ-VAE's dead-code reset under MirroredStrategy, the localhost cluster configs."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from semrec.towers.distributed import STRATEGIES, free_ports, gather_candidates, launch_workers, make_strategy, tf_configs

TRAIN = ["--rows", "2048", "--batch-size", "256", "--epochs", "2", "--queries", "400"]


def test_tf_configs_localhost_cluster():
  mw = [json.loads(c) for c in tf_configs(2)]
  assert [c["task"] for c in mw] == [{"type": "worker", "index": 0}, {"type": "worker", "index": 1}]
  addrs = mw[0]["cluster"]["worker"]
  assert all(a.startswith("127.0.0.1:") for a in addrs) and len(set(addrs)) == 2
  ps = [json.loads(c) for c in tf_configs(2, num_ps=1)]
  assert [c["task"]["type"] for c in ps] == ["chief", "worker", "worker", "ps"]
  assert {k: len(v) for k, v in ps[0]["cluster"].items()} == {"chief": 1, "worker": 2, "ps": 1}
  assert len(set(free_ports(3))) == 3


def test_task_info_and_strategy_errors(monkeypatch):
  from semrec.towers.distributed import task_info
  monkeypatch.delenv("TF_CONFIG", raising=False)
  assert task_info() == ("worker", 0, True)
  monkeypatch.setenv("TF_CONFIG", tf_configs(2)[1])
  assert task_info() == ("worker", 1, False)
  monkeypatch.setenv("TF_CONFIG", tf_configs(1, num_ps=1)[0])
  assert task_info() == ("chief", 0, True)
  with pytest.raises(ValueError, match="strategy must be one of"):
    make_strategy("horovod")
  monkeypatch.delenv("TF_CONFIG")
  with pytest.raises(ValueError, match="needs TF_CONFIG"):
    make_strategy("mwms")
  # Every listed strategy is one make_strategy builds: the in-process ones without TF_CONFIG, the multi-worker
  # ones refusing only for the missing TF_CONFIG (never "must be one of").
  import tensorflow as tf
  assert make_strategy("none") is tf.distribute.get_strategy()
  assert isinstance(make_strategy("mirrored"), tf.distribute.MirroredStrategy)
  for name in STRATEGIES:
    if name in ("none", "mirrored"):
      continue
    with pytest.raises(ValueError, match=f"strategy '{name}' needs TF_CONFIG"):
      make_strategy(name)


def test_gather_is_identity_with_one_replica():
  import tensorflow as tf
  c = tf.constant([[1.0, 2.0], [3.0, 4.0]])
  ids = tf.constant(["a", "b"])
  out_c, out_p, out_ids = gather_candidates(c, None, ids)
  assert out_c is c and out_p is None and out_ids is ids


def _run(args, timeout=600):
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  return proc.stdout


@pytest.mark.multiprocess
def test_mirrored_two_replicas_gather_matches_one_replica():
  """MirroredStrategy over 2 logical CPUs: gathered candidates are the global batch, own rows first."""
  out = _run([sys.executable, "-c", textwrap.dedent("""
      import os
      import tensorflow as tf
      cpu = tf.config.list_physical_devices("CPU")[0]
      tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
      import semrec
      from semrec.towers.distributed import gather_candidates
      s = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
      def step(i):
        # replica 0 holds rows [0, 1, 2], replica 1 rows [10, 11] (uneven, as MWMS's last batch).
        ctx = tf.distribute.get_replica_context()
        r = ctx.replica_id_in_sync_group
        c = tf.cond(tf.equal(r, 0), lambda: tf.constant([[0.], [1.], [2.]]), lambda: tf.constant([[10.], [11.], [-1.]]))
        n = 3 - r
        ids = tf.strings.as_string(tf.cast(c[:n, 0], tf.int32))
        g, gi = gather_candidates(c[:n], ids)
        return g[:, 0], gi
      res = s.run(tf.function(step), args=(0,))
      print([v.numpy().tolist() for v in s.experimental_local_results(res[0])])
      print([len(set(v.numpy().tolist())) for v in s.experimental_local_results(res[1])])
  """)])
  lines = out.strip().splitlines()
  assert lines[-2] == "[[0.0, 1.0, 2.0, 10.0, 11.0], [10.0, 11.0, 0.0, 1.0, 2.0]]"
  assert lines[-1] == "[5, 5]"  # string ids hashed to distinct int64 values


@pytest.mark.multiprocess
def test_mwms_two_workers_match_single_process(tmp_path):
  """2 MWMS worker processes on 127.0.0.1, 2 epochs: every weight within 1e-6 of one process, >= 99% same top-10.

  Adam runs with epsilon 1e-5, not Keras' 1e-7: MWMS sums each gradient in a different float32 order (per-replica
  partial sums + all-reduce), which moves gradient components by ~1e-8..7e-8. On the first update of a weight
  (v = 0) Adam's step alpha * m / (sqrt(v) + eps) has slope alpha * (1 - beta1) / eps around g = 0: ~950 with
  eps = 1e-7, so a component whose true gradient is ~1e-7 ends 2.5e-5 apart (measured with the default eps:
  max 1.9e-5 in 6 of 294,146 values, one hash row whose first gradient had a 4.2e-7 component; docs/scale.md).
  With eps = 1e-5 the slope is <= 9.5 and the rounding stays below 1e-6: the gradients themselves match.
  """
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  args = TRAIN + ["--adam-epsilon", "1e-5"]
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
  # The single-process reference runs beside the two workers (independent processes: wall time, not CPU).
  ref = subprocess.Popen([sys.executable, "-m", "semrec.benchmarks.dist_retriever", "--strategy", "none", "--out",
                          one] + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  rc = launch_workers([sys.executable, "-m", "semrec.benchmarks.dist_retriever", "--strategy", "mwms", "--out", two]
                      + args, num_workers=2, timeout=600, log_dir=str(tmp_path / "logs"), env=env)
  ref_out = ref.communicate(timeout=600)[0]
  logs = "".join(open(os.path.join(tmp_path, "logs", f)).read()[-2000:] for f in sorted(os.listdir(tmp_path / "logs")))
  assert rc == 0, logs
  assert ref.returncode == 0, ref_out[-3000:]
  a, b = np.load(os.path.join(one, "result.npz")), np.load(os.path.join(two, "result.npz"))
  assert int(a["replicas"]) == 1 and int(b["replicas"]) == 2
  weights = [k for k in a.files if k.startswith("w")]
  assert len(weights) >= 4
  for k in weights:  # a wrong gather (each replica's own batch as negatives): 20% same top-10 in the spike
    np.testing.assert_allclose(b[k], a[k], atol=1e-6, rtol=0, err_msg=k)
  assert (a["top10"] == b["top10"]).all(axis=1).mean() >= 0.99
  # The training moved the weights (the comparison is not between two untouched initialisations).
  assert a["loss"][-1] < a["loss"][0]


@pytest.mark.multiprocess
def test_rqvae_dead_code_reset_identical_on_every_replica():
  """MirroredStrategy, 2 replicas, resets every 2 idle steps: codebooks identical with the all-gather; the
  per-replica decision (without it) diverges -- the check can fail. Both runs share one process (one TF start)."""
  script = textwrap.dedent("""
      import numpy as np
      import tensorflow as tf
      cpu = tf.config.list_physical_devices("CPU")[0]
      tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
      import semrec
      import semrec.sid.rqvae as R
      x = np.random.default_rng(0).normal(size=(256, 8)).astype(np.float32)
      s = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
      for variant in ("gathered", "local"):
        if variant == "local":  # each replica decides from its own half batch (a fresh model traces this)
          R.replica_all_gather = lambda x: x
        tf.keras.utils.set_random_seed(0)
        with s.scope():
          net = R.RQVAE(8, num_levels=2, codebook_size=16, hidden_dims=(16,), latent_dim=4, dead_code_window=2)
          net(tf.zeros([1, 8]))
          net.assigner.normalizer.adapt(x)
          net.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
        h = net.fit(tf.data.Dataset.from_tensor_slices(x).batch(64, drop_remainder=True), epochs=3, verbose=0)
        q = net.assigner.quantizer
        b = [v.numpy() for v in q.codebooks.values]
        st = [v.numpy() for v in q.steps_since_used.values]
        print(variant, sum(h.history["codes_reset"]), float(np.abs(b[0] - b[1]).max()),
              float(np.abs(st[0] - st[1]).max()))
  """)
  lines = {ln.split()[0]: ln.split()[1:] for ln in _run([sys.executable, "-c", script]).strip().splitlines()[-2:]}
  resets, book_diff, steps_diff = map(float, lines["gathered"])
  assert resets > 0 and book_diff == 0.0 and steps_diff == 0.0
  assert float(lines["local"][1]) > 1e-3  # per-replica resets diverge


@pytest.mark.multiprocess
def test_parameter_server_retriever_shards_table_and_evaluates_from_saved_towers(tmp_path):
  """Chief + 1 worker + 2 ps on 127.0.0.1: the item hash table is split over both ps, training runs, and the
  chief evaluates from the trained weights copied into a strategy-free model (FactorizedTopK fails under PS)."""
  out = str(tmp_path / "ps")
  rc = launch_workers([sys.executable, "-m", "semrec.benchmarks.dist_retriever", "--strategy", "ps", "--out", out,
                       "--rows", "1024", "--epochs", "1", "--queries", "100"], num_workers=1, num_ps=2, timeout=600,
                      log_dir=str(tmp_path / "logs"), env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))
  assert rc == 0, open(tmp_path / "logs" / "task-0.log").read()[-3000:]
  r = np.load(os.path.join(out, "result.npz"))
  assert int(r["ps_tasks"]) == 2  # variables live on both parameter servers
  assert int(r["weight_pieces"]) > int(r["weight_arrays"])  # the hash table was split; the reloaded model is whole
  top = r["top10"]
  assert top.shape == (100, 10) and np.isfinite(r["loss"]).all()
  assert all(len(set(row)) == 10 for row in top.tolist())


def test_cli_launch_workers_sets_one_tf_config_per_task(tmp_path):
  from click.testing import CliRunner
  from semrec.cli import main
  script = ("import json, os, sys; c = json.loads(os.environ['TF_CONFIG']); "
            f"open(os.path.join({str(tmp_path)!r}, 'task-%d.json' % c['task']['index']), 'w').write(json.dumps(c))")
  with pytest.raises(SystemExit) as e:
    main.main(["launch-workers", "-n", "2", "--", sys.executable, "-c", script], standalone_mode=False)
  assert e.value.code == 0
  got = [json.load(open(tmp_path / f"task-{i}.json")) for i in range(2)]
  assert [g["task"] for g in got] == [{"type": "worker", "index": 0}, {"type": "worker", "index": 1}]
  assert got[0]["cluster"] == got[1]["cluster"]
  fail = CliRunner().invoke(main, ["launch-workers", "-n", "2", "--", sys.executable, "-c", "raise SystemExit(3)"])
  assert fail.exit_code == 3
