"""The CLI's native-log filter: absl-format INFO/WARNING lines written to fd 2 by native code are dropped."""
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(r'''
    import os, sys
    from semrec.cli_common import _NativeLogFilter
    _NativeLogFilter.set(True)
    os.write(2, b"I0000 00:00:1796190819.183294   12776 partitioner_factory_base.cc:58] Size of sampled dataset\n")
    os.write(2, b"W0000 00:00:1796190775.859203   12776 gmm_utils.cc:1026] Could not normalize centroid\n")
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    os.write(2, b"E0000 00:00:1796190775.859203   12776 scann.cc:1] a native error\n")
    os.write(2, b"plain native line\n")
    print("python stderr line", file=sys.stderr)
    _NativeLogFilter.set(False)
    os.write(2, b"after the filter\n")
''')


def test_native_info_and_warning_lines_are_dropped_others_kept():
  out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, timeout=120, check=True)
  lines = out.stderr.decode().splitlines()
  # Python's own stderr bypasses the filter thread, so where it lands among the filtered native lines depends on
  # the scheduler; the native lines keep their order, and the filter is flushed before it is switched off.
  assert lines.count("python stderr line") == 1, lines
  assert [ln for ln in lines if ln != "python stderr line"] == [
      "E0000 00:00:1796190775.859203   12776 scann.cc:1] a native error", "plain native line",
      "after the filter"], lines


def test_without_the_filter_native_lines_pass():
  script = SCRIPT.replace("_NativeLogFilter.set(True)", "pass")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120, check=True)
  assert "partitioner_factory_base.cc:58]" in out.stderr.decode()
