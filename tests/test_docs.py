"""The docs stay true to the repository: every module docs/ARCHITECTURE.md names exists, the README is a product
page (under 200 lines, no work-log prose) whose layout lists every top-level folder, and every link to a docs page
(and its #anchor) resolves.

Pure text and syntax-tree checks (no semrec or TensorFlow import), so they run in well under a second. Each check
is a function returning what is wrong, and a test feeds it a hand-made drifted text to show it reports the drift.
"""
import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")

# Work-log phrases a product page must not contain (matched case-insensitively).
WORK_LOG = ("this round", "the issue", "last session", "this session", "last round", "previous round")
README_MAX_LINES = 200


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


# ---------------------------------------------------------------------------------------------------------------
# (a) module paths named in a page exist


def _top_level_names(tree: ast.Module) -> set:
  """Names a module binds at top level: defs, classes, assignments, imports, literal ``__all__`` entries and the
  string keys of top-level dict literals (a lazy ``__getattr__`` table such as semrec.beam's ``_LAZY``)."""
  names = set()
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names.update((a.asname or a.name).split(".")[0] for a in node.names)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      for t in targets:
        for n in ast.walk(t):
          if isinstance(n, ast.Name):
            names.add(n.id)
      value = node.value
      if isinstance(value, (ast.List, ast.Tuple)):
        names.update(e.value for e in value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str))
      if isinstance(value, ast.Dict):
        names.update(k.value for k in value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))
  return names


def _class_members(tree: ast.Module, cls: str):
  """Names bound in the body of top-level class ``cls`` (None when ``cls`` is not a class defined here)."""
  for node in tree.body:
    if isinstance(node, ast.ClassDef) and node.name == cls:
      out = set()
      for n in node.body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
          out.add(n.name)
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
          out.add(n.target.id)
        elif isinstance(n, ast.Assign):
          out.update(t.id for t in n.targets if isinstance(t, ast.Name))
      return out
  return None


def resolve_dotted(name: str, root: str = ROOT):
  """Why ``semrec.a.b...`` does not exist under ``root`` (the package root), or None when it does.

  The longest prefix that is a package folder or a module file must exist; what follows it must be a name that
  module binds at top level, and a further name a member of that class (when it is a class defined there).
  """
  parts = name.split(".")[1:]
  path, module_file, i = root, os.path.join(root, "__init__.py"), 0
  while i < len(parts):
    sub = os.path.join(path, parts[i])
    if os.path.isfile(os.path.join(sub, "__init__.py")):
      path, module_file = sub, os.path.join(sub, "__init__.py")
      i += 1
    elif os.path.isfile(sub + ".py"):
      module_file = sub + ".py"
      i += 1
      break
    else:
      break
  rest = parts[i:]
  if not rest:
    return None
  tree = ast.parse(_read(module_file))
  if rest[0] not in _top_level_names(tree):
    return f"{name}: {os.path.relpath(module_file, root)} has no module or name {rest[0]!r}"
  if len(rest) > 1:
    members = _class_members(tree, rest[0])
    if members is not None and rest[1] not in members:
      return f"{name}: class {rest[0]} in {os.path.relpath(module_file, root)} has no member {rest[1]!r}"
  return None


DOTTED = re.compile(r"(?<![\w.])semrec(?:\.[A-Za-z_]\w*)+")
# x/y.py (any depth), relative to the package root; and a bare root module such as `cli.py`.
PATH = re.compile(r"(?<![\w./<>-])((?:[A-Za-z_][\w-]*/)+[A-Za-z_]\w*\.py)\b")
BARE = re.compile(r"(?<![\w./<>-])([A-Za-z_]\w*\.py)\b")


def module_references(text: str) -> list:
  """Every `semrec.x.y` name, x/y.py path and bare root x.py file named in ``text``, in order, once each."""
  seen = []
  for rx in (DOTTED, PATH, BARE):
    for m in rx.finditer(text):
      ref = m.group(0) if rx is DOTTED else m.group(1)
      if ref not in seen:
        seen.append(ref)
  return seen


def missing_modules(text: str, root: str = ROOT) -> list:
  """What ``text`` names that does not exist under ``root``."""
  out = []
  for ref in module_references(text):
    if ref.startswith("semrec"):
      why = resolve_dotted(ref, root)
      if why:
        out.append(why)
    elif not os.path.isfile(os.path.join(root, ref)):
      out.append(f"{ref}: no such file")
  return out


def test_every_module_named_in_architecture_exists():
  text = _read(os.path.join(DOCS, "ARCHITECTURE.md"))
  refs = module_references(text)
  # The page names modules of every package (guards the extraction itself: a regex that found nothing passes).
  for pkg in ("data", "encoders", "sid", "towers", "generative", "ranking", "export", "pipeline", "beam"):
    assert any(r.startswith(pkg + "/") or r.startswith("semrec." + pkg) for r in refs), pkg
  for must in ("ranking/candidates.py", "ranking/cascade.py", "ranking/two_stage.py", "export/cascade.py"):
    assert must in refs, must
  assert missing_modules(text) == []


def test_module_check_reports_drift():
  """A renamed module, a file that is not there and a name a package does not export are each reported; real
  ones are not."""
  text = ("`semrec.towers.score_blocks` and `semrec.towers.score_block` (renamed), ranking/cascade.py and "
          "ranking/cascades.py, `semrec.ranking.run_two_stage` and `semrec.ranking.run_three_stage`, "
          "`semrec.export.CascadeServer.recommend` and `semrec.export.cascade.CascadeServer.serve`, cli.py, nope.py")
  missing = missing_modules(text)
  assert [m.split(":")[0] for m in missing] == [
      "semrec.towers.score_block", "semrec.ranking.run_three_stage", "semrec.export.cascade.CascadeServer.serve",
      "ranking/cascades.py", "nope.py"], missing


# ---------------------------------------------------------------------------------------------------------------
# (b) the README is a product page


def work_log_phrases(text: str) -> list:
  low = text.lower()
  return [p for p in WORK_LOG if p in low]


def test_readme_is_short_and_not_a_work_log():
  text = _read(os.path.join(ROOT, "README.md"))
  n = len(text.splitlines())
  print(f"README.md: {n} lines")
  assert n < README_MAX_LINES
  assert work_log_phrases(text) == []


def test_work_log_check_reports_phrases():
  assert work_log_phrases("What changed This Round: ... within the issue's bound") == ["this round", "the issue"]
  assert work_log_phrases("Recall@10 .1337 on commit 928b4d6") == []


# ---------------------------------------------------------------------------------------------------------------
# (c) the README's layout lists every top-level folder


def top_level_folders(root: str = ROOT) -> list:
  """Top-level folders holding a package, Python files or docs (hidden ones, __pycache__ and *.egg-info
  ignored; so are generated folders such as runs/ or build/, which hold none of these directly)."""
  out = []
  for name in sorted(os.listdir(root)):
    path = os.path.join(root, name)
    if (not os.path.isdir(path) or name.startswith(".") or name == "__pycache__" or name.endswith(".egg-info")):
      continue
    if any(f.endswith((".py", ".md")) for f in os.listdir(path)):
      out.append(name)
  return out


def section(text: str, heading: str) -> str:
  """The body of the markdown section ``## heading`` (up to the next ``## ``)."""
  m = re.search(rf"(?m)^## {re.escape(heading)}\s*$", text)
  assert m, f"no '## {heading}' section"
  nxt = re.search(r"(?m)^## ", text[m.end():])
  return text[m.end(): m.end() + nxt.start() if nxt else len(text)]


def folders_missing_from_layout(layout: str, folders) -> list:
  """Folders not listed as an entry (`name/` at the start of a line) of ``layout``."""
  return [f for f in folders if not re.search(rf"(?m)^\s*{re.escape(f)}/", layout)]


def test_readme_layout_names_every_top_level_folder():
  folders = top_level_folders()
  for expected in ("data", "encoders", "sid", "towers", "generative", "ranking", "export", "pipeline", "beam",
                   "benchmarks", "tests", "docs"):
    assert expected in folders, expected
  layout = section(_read(os.path.join(ROOT, "README.md")), "Project layout")
  assert folders_missing_from_layout(layout, folders) == []


def test_layout_check_reports_a_missing_folder(tmp_path):
  for name, f in (("alpha", "__init__.py"), ("notes", "a.md"), ("runs", None), (".hidden", "x.py"),
                  ("x.egg-info", "PKG-INFO.py"), ("__pycache__", "m.py")):
    (tmp_path / name).mkdir()
    if f:
      (tmp_path / name / f).write_text("")
  assert top_level_folders(str(tmp_path)) == ["alpha", "notes"]
  # "alpha" mentioned in prose only is not a layout entry.
  assert folders_missing_from_layout("```\nnotes/   docs\n```\nsee alpha/ too", ["alpha", "notes"]) == ["alpha"]


# ---------------------------------------------------------------------------------------------------------------
# (d) links to docs pages (and their anchors) resolve


def slug(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation dropped (word characters, spaces, hyphens kept),
  spaces -> hyphens."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set:
  """Anchors of every heading outside code fences (a repeated heading gets -1, -2, ... as on GitHub)."""
  out, counts, fenced = set(), {}, False
  for line in text.splitlines():
    if line.lstrip().startswith("```"):
      fenced = not fenced
      continue
    m = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
    if m:
      s = slug(m.group(1))
      n = counts.get(s, 0)
      out.add(s if n == 0 else f"{s}-{n}")
      counts[s] = n + 1
  return out


LINK = re.compile(r"\]\(([^)\s]*)\)")


def broken_links(text: str, base_dir: str) -> list:
  """Relative links to .md files (and #anchors, also same-page ones) in ``text`` that do not resolve from
  ``base_dir``."""
  out = []
  own = None
  for target in LINK.findall(text):
    if re.match(r"^[a-z]+:", target):
      continue
    page, _, anchor = target.partition("#")
    if page and not page.endswith(".md"):
      continue
    if page:
      path = os.path.normpath(os.path.join(base_dir, page))
      if not os.path.isfile(path):
        out.append(f"{target}: no such page")
        continue
      heads = anchors(_read(path))
    else:
      own = anchors(text) if own is None else own
      heads = own
    if anchor and anchor not in heads:
      out.append(f"{target}: no heading with anchor #{anchor}")
  return out


def test_readme_links_to_docs_resolve():
  text = _read(os.path.join(ROOT, "README.md"))
  linked = {p for p in re.findall(r"\]\((docs/[^)#\s]+)", text)}
  for page in ("docs/ARCHITECTURE.md", "docs/results.md", "docs/retrieval.md", "docs/ranking.md",
               "docs/generative.md", "docs/project.md"):
    assert page in linked, page
  assert broken_links(text, ROOT) == []


def test_links_between_docs_resolve():
  bad = []
  for name in sorted(os.listdir(DOCS)):
    if name.endswith(".md"):
      bad += [f"docs/{name}: {b}" for b in broken_links(_read(os.path.join(DOCS, name)), DOCS)]
  assert bad == []


def test_link_check_reports_a_missing_page_and_anchor(tmp_path):
  (tmp_path / "docs").mkdir()
  (tmp_path / "docs" / "results.md").write_text("# Results\n## Retrieval against the baselines\n")
  text = ("[a](docs/results.md) [b](docs/towers-old.md) [c](docs/results.md#no-such-heading) "
          "[d](docs/results.md#retrieval-against-the-baselines) [e](#here) [f](#not-here) "
          "[g](https://example.com/x.md) [h](img/plot.png)\n## Here\n")
  assert broken_links(text, str(tmp_path)) == [
      "docs/towers-old.md: no such page",
      "docs/results.md#no-such-heading: no heading with anchor #no-such-heading",
      "#not-here: no heading with anchor #not-here"]


def test_slug_follows_github():
  # "## How far content alone goes on new items" -> #how-far-content-alone-goes-on-new-items
  assert slug("How far content alone goes on new items") == "how-far-content-alone-goes-on-new-items"
  # backticks, dots, slashes, parentheses and commas are dropped; the hyphen and underscore stay
  assert slug("Ranking (`semrec.ranking`): the two-stage recommender") == "ranking-semrecranking-the-two-stage-recommender"
  assert slug("Serving the cascade (`semrec.export.export_cascade`, `CascadeServer`)") == \
      "serving-the-cascade-semrecexportexport_cascade-cascadeserver"
  assert anchors("# A\n## A\n```\n# not a heading\n```\n## B") == {"a", "a-1", "b"}
