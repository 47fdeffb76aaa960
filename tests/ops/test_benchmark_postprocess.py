"""tools/benchmark.py postprocess runs end to end (tiny sizes) and writes its JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from rk_ops_testutils import needs_ext

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@needs_ext
def test_benchmark_postprocess_smoke(tmp_path):
    out = tmp_path / "pp.json"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "postprocess", "--image-size", "96", "128",
           "--batch-sizes", "1", "--repeats", "1", "--warmup", "0", "--json", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "vs torchvision" in res.stdout
    data = json.loads(out.read_text())
    ours = [r for r in data["results"] if r["impl"] == "retinakit"]
    assert len(ours) == 1 and all(r["identical_to_torchvision"] for r in ours)
