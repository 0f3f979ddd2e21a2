"""semrec.atomic: a failed write leaves the previous artefact intact; a successful one replaces it whole."""
import json
import os

import pytest

from semrec.atomic import atomic_directory, write_json, write_text


def test_atomic_directory_replaces_on_success_and_keeps_old_on_failure(tmp_path):
  target = str(tmp_path / "artefact")
  with atomic_directory(target) as tmp:
    write_text(os.path.join(tmp, "a.txt"), "v1")
  assert open(os.path.join(target, "a.txt")).read() == "v1"
  with pytest.raises(RuntimeError):
    with atomic_directory(target) as tmp:
      write_text(os.path.join(tmp, "a.txt"), "half")
      raise RuntimeError("killed")
  assert open(os.path.join(target, "a.txt")).read() == "v1"
  with atomic_directory(target) as tmp:
    write_text(os.path.join(tmp, "b.txt"), "v2")
  assert sorted(os.listdir(target)) == ["b.txt"]
  assert sorted(os.listdir(tmp_path)) == ["artefact"]  # no temp or old directories left behind


def test_write_json_handles_numpy(tmp_path):
  import numpy as np
  path = str(tmp_path / "m.json")
  write_json(path, {"a": np.float32(0.5), "b": np.arange(3), "c": np.int64(7)})
  assert json.load(open(path)) == {"a": 0.5, "b": [0, 1, 2], "c": 7}
  assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
