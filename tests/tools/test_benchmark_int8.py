"""tools/benchmark.py int8 runs end to end on a tiny model: every requested recipe is built,
evaluated against the same validation set and reported relative to ONNX Runtime FP32."""
from __future__ import annotations

import json

import pytest
from test_deploy_helpers import R10, random_checkpoint, run_tool, tiny_shapes

pytest.importorskip("onnxruntime")
pytest.importorskip("modelopt.onnx.quantization", reason="NVIDIA Model Optimizer (retinakit[deploy]) not installed")


@pytest.mark.slow
def test_benchmark_int8_smoke(tmp_path):
    ann, images = tiny_shapes(str(tmp_path / "data"), num_images=4)
    weights = random_checkpoint(str(tmp_path / "w.pth"), R10)
    out = tmp_path / "int8.json"
    r = run_tool(["tools/benchmark.py", "int8", "--config-file", R10, "--weights", weights, "--calibration-images", images,
                  "--val-images", images, "--val-annotations", ann, "--methods", "max", "percentile", "--num-images", "2",
                  "--ort-per-tensor", "--threads", "1", "--json", str(out), "EXPORT.INT8.PERCENTILE", "99.9"])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["variant"] for row in rows] == [
        "pytorch fp32", "onnxruntime fp32", "int8 Q/DQ (TensorRT layout) max n=2", "int8 Q/DQ (TensorRT layout) percentile n=2",
        "int8 ORT CPU layout max n=2", "int8 ORT CPU layout max per-tensor n=2"]
    # A random model scores near ties, so its APs are not compared; each is a COCO AP in percent.
    assert all(0.0 <= row["ap"] <= 100.0 and row["latency_ms"] > 0 and row["speedup_vs_ort_fp32"] > 0 for row in rows)
