"""tools/benchmark.py levels (P2 vs P3-P7 anchors and post-processing) runs end to end at a tiny
size: anchor counts match the level arithmetic, and the memory pass sees the P2 anchors."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_benchmark_levels_smoke(tmp_path):
    out = tmp_path / "levels.json"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "levels", "--sizes", "256x320", "--repeats", "1",
           "--warmup", "0", "--num-classes", "4", "--threads", "1", "--json", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "vs p3-p7" in res.stdout
    results = json.loads(out.read_text())["results"]
    assert [r["levels"] for r in results] == ["p3-p7", "p2-p7"]
    for r, first in zip(results, (3, 2)):
        expected = sum(math.ceil(256 / 2**lvl) * math.ceil(320 / 2**lvl) * 9 for lvl in range(first, 8))
        assert r["anchors_per_image"] == expected
        assert set(r["times_ms"]) == {"anchors", "retinakit", "torchvision"} and all(len(t) == 1 for t in r["times_ms"].values())
    p2_anchor_mib = math.ceil(256 / 4) * math.ceil(320 / 4) * 9 * 4 * 4 / 2**20  # the P2 level alone, float32
    peak = results[1]["peak_mib"]["anchors"]
    if peak is not None:  # None without /proc
        assert p2_anchor_mib * 0.9 <= peak <= p2_anchor_mib * 2 + 1
