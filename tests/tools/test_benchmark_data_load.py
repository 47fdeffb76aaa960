"""tools/benchmark.py data-load runs end to end on a tiny generated file: every variant is
timed in its own process, the cache makes the repeated load skip validation, and with 2
ranks x 2 workers each rank holds the same serialized records."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_benchmark_data_load_smoke(tmp_path):
    out = tmp_path / "data_load.json"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "data-load", "--images", "40", "--annotations", "200",
           "--repeats", "1", "--ddp-memory", "--workdir", str(tmp_path / "work"), "--json", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "vs pycocotools" in res.stdout and "2 ranks x 2 workers" in res.stdout
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"pycocotools", "retinakit_first", "retinakit_repeated", "retinakit_repeated_list"}
    assert all(len(runs) == 1 and runs[0]["seconds"] > 0 for runs in report["results"].values())
    for phase in ("first", "repeated"):
        ranks = report["ddp"][phase]["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1]
        assert ranks[0]["records_mib"] == ranks[1]["records_mib"] > 0
        for r in ranks:  # the two workers together read every box once
            assert sorted(w["worker"] for w in r["workers"]) == [0, 1] and sum(w["boxes"] for w in r["workers"]) == 200
    assert len(os.listdir(tmp_path / "work" / "cache_ddp")) == 1  # one entry, written by rank 0
