"""tools/deploy.py end to end on a briefly trained quickstart model (slow).

Trains the R10 quickstart config on the built-in shapes dataset with tools/train_net.py,
then ``deploy.py --fp16 --winograd --int8 --calibration-images --verify``. deploy enforces the
default INT8 tolerance (AP drop <= 1% relative, exit 1 and a FAILED row otherwise): the test
checks that verdict against the reported APs, whichever way it goes, and bounds the INT8 AP
drop at 5% relative. The 1% budget is for trained models: this 120-iteration model (AP ~7 on
100 images) has most detections near the score threshold, so whether INT8 lands inside 1%
depends on the CPU's rounding (AVX2 vs AVX-512, thread count), not on the export; meeting the
budget by mixed precision is issue 16's. Then the calibration cache is reused without images
and gives the same scales.
``RETINAKIT_TEST_DEPLOY_ITERS`` sets the training length (default 120 iterations of 8 images).
"""
from __future__ import annotations

import json
import os

import pytest
from test_deploy_helpers import R10, run_tool

pytest.importorskip("onnxruntime")
pytest.importorskip("modelopt.onnx.quantization", reason="NVIDIA Model Optimizer (retinakit[deploy]) not installed")

ITERS = int(os.environ.get("RETINAKIT_TEST_DEPLOY_ITERS", "120"))


@pytest.mark.slow
def test_deploy_int8_verify_and_cache_reuse(tmp_path):
    from retinakit.data import MetadataCatalog
    from retinakit.export.calib_cache import read_cache, scales_from_qdq_model

    train, val = MetadataCatalog.get("shapes_train"), MetadataCatalog.get("shapes_val")
    out = str(tmp_path / "train")
    r = run_tool(["tools/train_net.py", "--config-file", R10, "SOLVER.MAX_ITER", str(ITERS), "SOLVER.IMS_PER_BATCH", "8",
                  "SOLVER.WARMUP_ITERS", "20", "SOLVER.CHECKPOINT_PERIOD", "100000", "DATALOADER.NUM_WORKERS", "0",
                  "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", out, "MODEL.DEVICE", "cpu"], timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    weights = os.path.join(out, "model_final.pth")
    dep = str(tmp_path / "deploy")
    r = run_tool(["tools/deploy.py", "--config-file", R10, "--weights", weights, "--output", dep, "--fp16", "--winograd",
                  "--int8", "--calibration-images", train.image_root, "--num-calibration-images", "32", "--verify",
                  "--val-images", val.image_root, "--val-annotations", val.json_file,
                  "EXPORT.WINOGRAD_MIN_CHANNELS", "64"], timeout=1800)
    with open(os.path.join(dep, "verify.json")) as f:
        report = json.load(f)
    rows = {x["precision"] if x["backend"] != "pytorch" else "pytorch": x for x in report["results"]}
    assert rows["pytorch"]["ap"] > 1.0, f"the trained model is too weak for a meaningful check: {rows}"
    assert abs(rows["fp32"]["delta_ap"]) < 0.05 and rows["fp32"]["max_box_diff"] < 0.05, rows
    assert abs(rows["fp16"]["delta_ap"]) < 0.5, rows
    assert abs(rows["fp32-winograd"]["delta_ap"]) < 0.05 and rows["fp32-winograd"]["max_box_diff"] < 0.05, rows
    assert report["max_relative_ap_drop"] == 0.01  # EXPORT.INT8.MAX_RELATIVE_AP_DROP
    over_budget = rows["int8"]["ap"] < rows["pytorch"]["ap"] * (1 - 0.01)
    log = (r.stdout + r.stderr)[-3000:]
    if over_budget:
        assert r.returncode == 1 and rows["int8"]["status"] == "FAILED (AP drop > 1.0% relative)", log
    else:
        assert r.returncode == 0 and rows["int8"]["status"] == "ok", log
    assert rows["int8"]["ap"] >= rows["pytorch"]["ap"] * (1 - 0.05), rows
    # Reuse the cache: no images, same activation scales.
    import onnx

    cache = os.path.join(dep, "calibration.cache")
    dep2 = str(tmp_path / "deploy_from_cache")
    r = run_tool(["tools/deploy.py", "--config-file", R10, "--weights", weights, "--output", dep2, "--int8",
                  "--calibration-cache", cache], timeout=1800)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    scales = scales_from_qdq_model(onnx.load(os.path.join(dep2, "model_int8.onnx")))
    assert scales == pytest.approx(read_cache(cache), rel=1e-6)
