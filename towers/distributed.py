"""tf.distribute for the retriever: strategy selection, cross-replica in-batch negatives, local worker launcher.

Shape letters: B per-replica batch, G global batch (sum of B over replicas), d embedding width.

Strategies (``--strategy``):
  "none": the default strategy (one process, one replica).
  "mirrored": ``MirroredStrategy`` over the local devices.
  "mwms": ``MultiWorkerMirroredStrategy``; one process per worker, each started with ``TF_CONFIG`` and
    creating the strategy before any other TF op (``launch_workers`` starts N such processes on 127.0.0.1).
  "ps": ``ParameterServerStrategy`` (variables, e.g. large embedding tables, sharded over parameter
    servers; workers run steps asynchronously); ``TF_CONFIG`` names chief, worker and ps tasks.

In-batch softmax under a synchronous strategy: each replica sees only its B examples, so with its own batch
as negatives the task differs from the single process (20% identical top-10 lists in the spike).
``gather_candidates`` all-gathers the candidate embeddings (and their sampling probabilities and ids)
from every replica, so every query is scored against the G candidates of the global batch, as in one
process. Replicas may hold different B (MWMS's last batch): ``ReplicaContext.all_gather`` pads and
unpads, and the gathered rows are rotated so the replica's own candidates come first, which keeps the
task's diagonal labels (``tf.eye(B, G)``) pointing at each query's positive.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
from typing import Optional, Sequence

STRATEGIES = ("none", "mirrored", "mwms", "ps")


def gather_candidates(candidates, *aligned):
  """Cross-replica in-batch negatives: [B, ...] local tensors -> [G, ...], this replica's rows first.

  Args:
    candidates: [B, d] float32 candidate embeddings of this replica's batch.
    *aligned: further [B, ...] tensors aligned with ``candidates`` (sampling probabilities, ids) or None.
  Returns:
    (candidates [G, d], *aligned [G, ...]) gathered over all replicas in sync and rotated so rows
    0..B-1 are this replica's; the inputs unchanged with one replica (or outside ``strategy.run``).
    Gradients flow back to every replica's candidates (``all_gather``'s gradient).
  """
  import tensorflow as tf
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return (candidates,) + tuple(aligned)
  from semrec.sid.rqvae import replica_all_gather
  sizes = replica_all_gather(tf.shape(candidates)[:1])  # [R] per-replica batch sizes
  replica = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
  offset = tf.reduce_sum(sizes[:replica])

  def gather(x):
    if x is None:
      return None
    if x.dtype == tf.string:  # collectives carry numbers only; ids are compared for equality, so hash them
      x = tf.strings.to_hash_bucket_fast(x, 2 ** 62)
    return tf.roll(replica_all_gather(x), shift=-offset, axis=0)

  return (gather(candidates),) + tuple(gather(x) for x in aligned)


def make_strategy(name: str = "none"):
  """The ``tf.distribute.Strategy`` for ``name`` (see the module docstring).

  "mwms" and "ps" read the cluster from ``TF_CONFIG``; create them before any other TF op in the process.
  "ps" returns a ``ParameterServerStrategy`` only in the chief (the coordinator); ps and worker tasks must
  run ``run_ps_server()`` instead.
  Raises:
    ValueError: unknown name, or "mwms"/"ps" without TF_CONFIG.
  """
  if name not in STRATEGIES:
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
  import tensorflow as tf
  if name == "none":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if not os.environ.get("TF_CONFIG"):
    raise ValueError(f"strategy {name!r} needs TF_CONFIG (start the workers with `semrec launch-workers`)")
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  if name == "mwms":
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
  if resolver.task_type in ("ps", "worker"):
    raise ValueError(f"task {resolver.task_type}:{resolver.task_id} is a server: call run_ps_server()")
  num_ps = len(resolver.cluster_spec().as_dict().get("ps", []))
  # Variables larger than 256 KiB (embedding tables) are split over the parameter servers.
  partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(min_shard_bytes=256 << 10,
                                                                           max_shards=max(num_ps, 1))
  return tf.distribute.experimental.ParameterServerStrategy(resolver, variable_partitioner=partitioner)


def run_ps_server():
  """Runs this process's ps/worker server of a ParameterServerStrategy cluster (from TF_CONFIG); blocks."""
  import tensorflow as tf
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  server = tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type, task_index=resolver.task_id,
                                protocol=resolver.rpc_layer or "grpc", start=True)
  server.join()


def task_info() -> tuple:
  """(task_type, task_id, is_chief) from TF_CONFIG; ("worker", 0, True) without it.

  The chief is task chief:0, or worker 0 when the cluster has no chief (MWMS). Only the chief writes
  final artefacts and computes metrics after training; other workers write to scratch directories.
  """
  cfg = json.loads(os.environ.get("TF_CONFIG") or "{}")
  task = cfg.get("task") or {}
  ttype, tid = task.get("type", "worker"), int(task.get("index", 0))
  has_chief = "chief" in (cfg.get("cluster") or {})
  return ttype, tid, (ttype == "chief") or (not has_chief and ttype == "worker" and tid == 0)


def free_ports(n: int) -> list:
  """``n`` distinct free TCP ports on 127.0.0.1."""
  socks, ports = [], []
  for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
    ports.append(s.getsockname()[1])
  for s in socks:
    s.close()
  return ports


def tf_configs(num_workers: int, num_ps: int = 0) -> list:
  """TF_CONFIG JSON strings for a localhost cluster: ``num_workers`` workers (MWMS), or with ``num_ps`` > 0 a
  chief + ``num_workers`` workers + ``num_ps`` parameter servers (PS); the chief's config comes first."""
  if num_workers < 1:
    raise ValueError(f"num_workers must be >= 1, got {num_workers}")
  ports = iter(free_ports(num_workers + num_ps + (1 if num_ps else 0)))
  addr = lambda k: [f"127.0.0.1:{next(ports)}" for _ in range(k)]  # noqa: E731
  cluster = {"worker": addr(num_workers)}
  if num_ps:
    cluster = {"chief": addr(1), "worker": cluster["worker"], "ps": addr(num_ps)}
  tasks = [(t, i) for t in ("chief", "worker", "ps") for i in range(len(cluster.get(t, [])))]
  return [json.dumps({"cluster": cluster, "task": {"type": t, "index": i}}) for t, i in tasks]


def launch_workers(command: Sequence[str], num_workers: int = 2, num_ps: int = 0, timeout: Optional[float] = None,
                   log_dir: Optional[str] = None, env: Optional[dict] = None) -> int:
  """Runs ``command`` once per task of a localhost cluster, each with its own TF_CONFIG; waits for all.

  MWMS: ``num_workers`` copies of ``command``. PS (``num_ps`` > 0): the chief runs ``command``; the worker and
  ps tasks run ``command`` too and are expected to call ``run_ps_server()`` (``semrec train-retrieval
  --strategy ps`` does); they are stopped when the chief ends.
  Args:
    command: argv, e.g. ["semrec", "train-retrieval", "--strategy", "mwms", ...].
    log_dir: if set, task i writes stdout+stderr to ``<log_dir>/task-<i>.log`` (else inherits).
  Returns:
    The chief's exit code, or the first non-zero exit code of a synchronous (MWMS) worker.
  """
  configs = tf_configs(num_workers, num_ps)
  procs, logs = [], []
  for i, cfg in enumerate(configs):
    e = dict(os.environ if env is None else env, TF_CONFIG=cfg)
    out = None
    if log_dir:
      os.makedirs(log_dir, exist_ok=True)
      out = open(os.path.join(log_dir, f"task-{i}.log"), "w")
      logs.append(out)
    procs.append(subprocess.Popen(list(command), env=e, stdout=out, stderr=subprocess.STDOUT if out else None))
  try:
    if num_ps:
      rc = procs[0].wait(timeout=timeout)
      return rc
    codes = [p.wait(timeout=timeout) for p in procs]
    return next((c for c in codes if c != 0), 0)
  finally:
    for p in procs:
      if p.poll() is None:
        p.terminate()
        try:
          p.wait(timeout=10)
        except subprocess.TimeoutExpired:
          p.kill()
    for f in logs:
      f.close()

