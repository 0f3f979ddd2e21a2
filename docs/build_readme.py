"""Assembles README.md from docs/readme/*.md (in file-name order: 00_intro, 01_quickstart, ... sections).

Run `python docs/build_readme.py` after editing a section; the README is generated, the sections are the source.
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = ["00_intro", "01_quickstart", "02_usage", "encoders", "sid", "adapters", "towers", "ranking", "export",
         "99_project"]


def main():
  parts = []
  for name in ORDER:
    with open(os.path.join(HERE, "readme", name + ".md"), encoding="utf-8") as f:
      parts.append(f.read().strip() + "\n")
  out = os.path.join(HERE, "..", "README.md")
  tmp = out + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("\n".join(parts))
  os.replace(tmp, out)


if __name__ == "__main__":
  main()
