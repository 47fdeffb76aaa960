"""tools/deploy.py on a model with a stride-4 level (the R10 P2 small-objects preset): FP32,
FP16 and INT8 ONNX models are written and all run in onnxruntime with six-level anchors."""
from __future__ import annotations

import os

import numpy as np
import pytest
from test_deploy_helpers import ROOT, random_checkpoint, run_tool

pytest.importorskip("onnxruntime")
pytest.importorskip("modelopt.onnx.quantization", reason="NVIDIA Model Optimizer (retinakit[deploy]) not installed")

P2 = os.path.join(ROOT, "configs", "small_objects", "retinanet_R10_FPN_P2_shapes_small.yaml")


@pytest.mark.slow
def test_deploy_p2_fp16_int8(tmp_path):
    import sys

    import onnxruntime as ort

    from retinakit.data.datasets import ShapesSpec, generate_shapes
    from retinakit.export import read_metadata

    if ROOT not in sys.path:  # the preset imports projects.ResNet10.resnet10
        sys.path.insert(0, ROOT)
    weights = random_checkpoint(str(tmp_path / "p2.pth"), config=P2)
    data = generate_shapes("p2_calib", ShapesSpec(num_images=4, image_size=256, min_object=4.0, max_object_frac=24 / 256,
                                                  max_objects=10, seed=41), root=str(tmp_path / "shapes"))
    out = str(tmp_path / "deploy")
    r = run_tool(["tools/deploy.py", "--config-file", P2, "--weights", weights, "--output", out, "--fp16", "--int8",
                  "--calibration-images", os.path.join(data, "images"), "--num-calibration-images", "4",
                  "--calibration-method", "max"], timeout=1800)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    image = (np.random.default_rng(0).random((1, 3, 256, 256)) * 255).astype(np.float32)
    sizes = np.array([[256.0, 256.0]], np.float32)
    for name, precision in (("model.onnx", "fp32"), ("model_fp16.onnx", "fp16"), ("model_int8.onnx", "int8")):
        path = os.path.join(out, name)
        meta = read_metadata(path)
        assert meta.get("precision", "fp32") == precision and meta["mode"] == "e2e"
        assert "p2" in str(meta["config"])  # the exported model's config has the P2 level
        num, boxes, _, _ = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
            None, {"images": image, "image_sizes": sizes})
        assert boxes.shape == (1, 100, 4) and 0 <= int(num[0]) <= 100
