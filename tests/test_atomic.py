"""semrec.atomic: a failed write leaves the previous artefact intact; a successful one replaces it whole."""
import json
import os

import pytest

from semrec.atomic import (atomic_directory, atomic_path, save_figure, save_npy, save_npz, write_bytes, write_json,
                           write_text)


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


def test_atomic_path_keeps_old_file_on_failure_and_leaves_no_temp(tmp_path):
  path = str(tmp_path / "sub" / "f.bin")
  write_bytes(path, b"v1")
  with pytest.raises(RuntimeError):
    with atomic_path(path) as tmp:
      with open(tmp, "wb") as f:
        f.write(b"half")
      raise RuntimeError("killed mid-write")
  assert open(path, "rb").read() == b"v1"
  write_text(path, "v2")
  assert open(path).read() == "v2"
  assert os.listdir(tmp_path / "sub") == ["f.bin"]


def test_save_npz_npy_round_trip(tmp_path):
  import numpy as np
  npz, npy = str(tmp_path / "a.npz"), str(tmp_path / "b.npy")
  save_npz(npz, x=np.arange(4), y=np.array(["a", "b"]))
  save_npy(npy, np.eye(2, dtype=np.float32))
  with np.load(npz) as f:
    assert f["x"].tolist() == [0, 1, 2, 3] and f["y"].tolist() == ["a", "b"]
  assert np.load(npy).tolist() == [[1.0, 0.0], [0.0, 1.0]]
  assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.npy"]  # np.savez did not append a second suffix


def test_save_figure_writes_png_and_closes_the_figure(tmp_path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots()
  ax.plot([0, 1], [1, 0])
  path = str(tmp_path / "p.png")
  assert save_figure(fig, path) == path
  assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert not plt.fignum_exists(fig.number)
  assert os.listdir(tmp_path) == ["p.png"]
