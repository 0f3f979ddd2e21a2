"""The run report: ``metrics.json``, ``report.md`` with tables and PNG plots, and a console table."""
from __future__ import annotations

import math
import os
from typing import Mapping, Optional, Sequence

from semrec.atomic import write_json as atomic_write_json
from semrec.atomic import write_text as atomic_write_text


def _fmt(v) -> str:
  if isinstance(v, float):
    if math.isnan(v):
      return "-"
    return f"{v:.4f}" if abs(v) < 100 else f"{v:,.1f}"
  return str(v)


def markdown_table(rows: Sequence[Mapping], columns: Optional[Sequence[str]] = None) -> str:
  """A GitHub-markdown table of ``rows`` (dicts); ``columns`` default to the first row's keys."""
  rows = list(rows)
  if not rows:
    return "_(no rows)_\n"
  columns = list(columns or rows[0].keys())
  out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
  for r in rows:
    out.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
  return "\n".join(out) + "\n"


def console_table(rows: Sequence[Mapping], columns: Optional[Sequence[str]] = None) -> str:
  """A fixed-width text table for the terminal."""
  rows = list(rows)
  if not rows:
    return "(no rows)"
  columns = list(columns or rows[0].keys())
  cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
  line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
  sep = "  ".join("-" * w for w in widths)
  body = ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))) for row in cells]
  return "\n".join([line, sep, *body])


class Report:
  """Collects sections (text, tables, images) and writes ``report.md`` into a run directory."""

  def __init__(self, title: str):
    self.title = title
    self.sections: list[tuple[str, list[str]]] = []

  def section(self, heading: str, *parts: str):
    self.sections.append((heading, [p for p in parts if p]))

  @staticmethod
  def image(path: str, run_dir: str, caption: str = "") -> str:
    rel = os.path.relpath(path, run_dir)
    return f"![{caption or os.path.basename(path)}]({rel})\n"

  def write(self, path: str):
    lines = [f"# {self.title}\n"]
    for heading, parts in self.sections:
      lines.append(f"\n## {heading}\n")
      lines.extend(p if p.endswith("\n") else p + "\n" for p in parts)
    atomic_write_text(path, "\n".join(lines))
