"""tools/benchmark.py inference --device cuda / --eager-only: the per-batch PyTorch variants,
run here on CPU with small models (the GPU check runs the same code at 800 px on a GPU)."""
from __future__ import annotations

import argparse
import json
import os
import sys

import pytest
import torch
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_eager_batches_times_every_variant_and_writes_json(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        from benchmarks import inference
    finally:
        sys.path.pop(0)
    from retinakit.config import get_cfg
    from retinakit.modeling import build_model

    torch.manual_seed(0)
    tv = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None, min_size=64, max_size=96).eval()
    cfg = get_cfg()
    cfg.merge_from_file(inference.CONFIG)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 96])
    rk = build_model(cfg).eval()
    out = str(tmp_path / "inf.json")
    args = argparse.Namespace(device="cpu", eager_only=True, batch_sizes=[1, 2], compile=False, onnx=True, repeats=2, warmup=1,
                              size=(128, 160), threads=1, json=out)
    assert inference._main_eager_batches(args, tv, rk, cfg) == 0
    with open(out) as f:
        data = json.load(f)
    assert set(data["batches"]) == {"1", "2"}
    for b, res in data["batches"].items():
        assert res["torchvision eager FP32"]["speedup_vs_torchvision"] == 1.0
        assert {"retinakit eager BF16 autocast", "retinakit predictor FP32 (folded + channels_last)",
                "retinakit ONNX Runtime FP32"} <= set(res)
        for r in res.values():
            assert r["median_ms"] > 0 and r["images_per_s"] == int(b) * 1000.0 / r["median_ms"]
