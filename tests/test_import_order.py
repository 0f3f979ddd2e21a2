"""Imports flow one way: data -> encoders -> sid -> towers -> generative -> ranking -> export -> pipeline / cli.

Walks every library module's syntax tree (module-level, function-level and ``TYPE_CHECKING`` imports, and
``importlib.import_module("semrec...")`` calls) and fails on any import of a higher layer. The root
utility modules (atomic, config, report, version, the package ``__init__``) are the bottom layer: every
layer may use them, and they use no layer.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Layer of each top-level name of the package; a module may import its own layer or lower ones.
# beam (the Beam drivers of the batch jobs) is a driver like pipeline and cli.
LAYERS = {"": 0, "atomic": 0, "config": 0, "report": 0, "version": 0,
          "data": 1, "encoders": 2, "sid": 3, "towers": 4, "generative": 5, "ranking": 6, "export": 7, "pipeline": 8,
          "cli": 8, "cli_common": 8, "beam": 8}
NOT_LIBRARY = ("tests", "benchmarks", "docs", "setup.py", "runs", "build")


def _library_modules():
  """(dotted module name, path) of every library module under the package root."""
  for dirpath, dirnames, filenames in os.walk(ROOT):
    rel = os.path.relpath(dirpath, ROOT)
    dirnames[:] = [d for d in dirnames if not d.startswith((".", "_")) and
                   not (rel == "." and d in NOT_LIBRARY)]
    for f in filenames:
      if f.endswith(".py") and not (rel == "." and f in NOT_LIBRARY):
        parts = [] if rel == "." else rel.split(os.sep)
        name = ".".join(["semrec"] + parts + ([] if f == "__init__.py" else [f[:-3]]))
        yield name, os.path.join(dirpath, f)


def _layer_of(module: str):
  """Layer of a ``semrec...`` module name (None outside the package)."""
  parts = module.split(".")
  if parts[0] != "semrec":
    return None
  top = parts[1] if len(parts) > 1 else ""
  if top not in LAYERS:
    raise AssertionError(f"{module}: top-level name {top!r} has no layer; add it to LAYERS")
  return LAYERS[top]


def imports_of(module: str, source: str, is_package: bool = False):
  """(imported module, line) for every import anywhere in ``source`` (relative ones resolved)."""
  out = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      out += [(a.name, node.lineno) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        pkg = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join(pkg + ([base] if base else []))
      # `from semrec import ranking` imports the subpackage: resolve each name against the base.
      out += [(f"{base}.{a.name}" if base == "semrec" else base, node.lineno) for a in node.names]
    elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
          and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
      out.append((node.args[0].value, node.lineno))
  return out


def violations():
  found = []
  for name, path in _library_modules():
    src_layer = _layer_of(name)
    with open(path, encoding="utf-8") as f:
      source = f.read()
    for target, line in imports_of(name, source, path.endswith("__init__.py")):
      layer = _layer_of(target)
      if layer is not None and layer > src_layer:
        found.append(f"{os.path.relpath(path, ROOT)}:{line} imports {target}")
  return found


def test_library_imports_flow_one_way():
  found = violations()
  assert not found, ("imports against data -> encoders -> sid -> towers -> generative -> ranking -> export -> "
                     "pipeline/cli:\n" + "\n".join(found))


@pytest.mark.parametrize("module,source,expected", [
    ("semrec.ranking.model", "def f():\n  from semrec.export import x\n", [("semrec.export", 2)]),  # lazy
    ("semrec.ranking.model", "from ..export import serving\n", [("semrec.export", 1)]),  # relative
    ("semrec.sid.table", "import semrec.towers.model as m\n", [("semrec.towers.model", 1)]),
    ("semrec.sid.table", "from semrec import towers\n", [("semrec.towers", 1)]),
    ("semrec.data.x", "importlib.import_module('semrec.pipeline')\n", [("semrec.pipeline", 1)]),
    ("semrec.generative.model", "from semrec.ranking import Ranker\n", [("semrec.ranking", 1)]),
    ("semrec.towers.model", "from semrec.generative import Trie\n", [("semrec.generative", 1)]),
])
def test_import_walker_sees_every_kind_of_import(module, source, expected):
  assert imports_of(module, source) == expected
  assert all(_layer_of(t) > _layer_of(module) for t, _ in expected)  # each one is a violation


def test_walker_finds_the_library():
  names = {n for n, _ in _library_modules()}
  assert {"semrec.cli", "semrec.pipeline.run", "semrec.ranking.model", "semrec.export", "semrec.atomic"} <= names
  assert not any(n.startswith(("semrec.tests", "semrec.benchmarks")) for n in names)
