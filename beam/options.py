"""Runner selection for semrec's Beam pipelines: ``--runner`` + repeated ``--beam-option key=value``.

Runners:
  "inprocess": no Beam at all; the caller runs the in-process driver (``encode_corpus``, ``assign_sids``, ...).
  "direct": Beam's local FnApiRunner. One worker runs in-process; ``num_workers > 1`` starts that many SDK
    worker *processes* (``direct_running_mode=multi_processing``). The plain ``DirectRunner`` is not used: it
    first tries to download a Prism binary (fails offline), and ``multi_threading`` held > 5 GB at 50k rows.
  "dataflow" | "flink" | "spark": ``DataflowRunner`` / ``FlinkRunner`` / ``SparkRunner``; everything else
    (project, region, temp_location, flink_master, spark_master_url, setup_file, sdk_container_image, ...) comes
    from ``--beam-option``. Workers must be able to ``import semrec``: locally the SDK worker processes inherit
    the environment (PYTHONPATH / the venv); on a cluster pass ``setup_file=/path/to/semrec/setup.py`` or a
    container image with semrec installed (see docs/scale.md).
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

RUNNERS = ("inprocess", "direct", "dataflow", "flink", "spark")
_RUNNER_NAMES = {"dataflow": "DataflowRunner", "flink": "FlinkRunner", "spark": "SparkRunner"}


def require_beam():
  """Imports apache_beam or raises an ImportError with the install hint."""
  try:
    import apache_beam  # noqa: F401
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("semrec.beam needs Apache Beam: pip install 'semrec[beam]' (or --runner inprocess)") from e
  return apache_beam


def parse_beam_options(pairs: Optional[Iterable[str]]) -> dict:
  """["key=value", ...] -> {key: value}; values "true"/"false" and integers are converted.

  Raises:
    ValueError: an item without "=" (named).
  """
  out = {}
  for p in pairs or ():
    if "=" not in p:
      raise ValueError(f"--beam-option {p!r}: expected key=value")
    k, v = p.split("=", 1)
    k = k.strip().lstrip("-")
    low = v.strip().lower()
    out[k] = True if low == "true" else False if low == "false" else int(v) if v.strip().lstrip("-").isdigit() else v
  return out


def check_runner(runner: str):
  if runner not in RUNNERS:
    raise ValueError(f"runner must be one of {RUNNERS}, got {runner!r}")


def make_pipeline(runner: str = "direct", num_workers: int = 1, beam_options: Optional[Sequence[str]] = None):
  """A ``beam.Pipeline`` for ``runner`` (not "inprocess").

  Args:
    runner: "direct" | "dataflow" | "flink" | "spark".
    num_workers: local worker processes for "direct" (ignored otherwise: set ``num_workers`` /
      ``max_num_workers`` / parallelism through ``beam_options``).
    beam_options: ["key=value", ...] passed to ``PipelineOptions``.
  """
  check_runner(runner)
  if runner == "inprocess":
    raise ValueError("runner 'inprocess' runs without Beam: call the in-process driver instead")
  beam = require_beam()
  from apache_beam.options.pipeline_options import PipelineOptions
  opts = parse_beam_options(beam_options)
  if runner == "direct":
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    if num_workers < 1:
      raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if num_workers > 1:
      opts.setdefault("direct_running_mode", "multi_processing")
      opts.setdefault("direct_num_workers", int(num_workers))
    return beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(flags=[], **opts))
  opts["runner"] = _RUNNER_NAMES[runner]
  return beam.Pipeline(options=PipelineOptions(flags=[], **opts))
