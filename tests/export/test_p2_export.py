"""A model with a stride-4 level (P2, the R10 small-objects preset) through the public export
API: end-to-end ONNX equals the eager model, the one predictor (and DefaultPredictor) on its
weights, and FP16 / INT8 Q/DQ copies of its ONNX stay close to FP32."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from .conftest import RANDOM_MODEL_SCORE_THRESH, ROOT, model_testutils, ort_run, random_images

if ROOT not in sys.path:  # the preset imports projects.ResNet10.resnet10
    sys.path.insert(0, ROOT)
P2_CONFIG = os.path.join(ROOT, "configs", "small_objects", "retinanet_R10_FPN_P2_shapes_small.yaml")
OPTS = ["MODEL.DEVICE", "cpu", "MODEL.RETINANET.SCORE_THRESH_TEST", RANDOM_MODEL_SCORE_THRESH]


def _cfg():
    from retinakit.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(P2_CONFIG)
    cfg.merge_from_list(OPTS)
    return cfg


def _p2_candidates(model, images) -> int:
    """How many P2 anchors pass the score threshold (P2 must take part in the comparisons)."""
    with torch.no_grad():
        cls_logits, _, _ = model.inference_outputs(model.preprocess_image([{"image": im} for im in images]))
    return int((cls_logits[0].sigmoid() > RANDOM_MODEL_SCORE_THRESH).sum())


@pytest.fixture(scope="module")
def p2_setup(tmp_path_factory):
    """``(cfg, model, weights, e2e onnx)``: the P2 preset with conditioned random weights."""
    from retinakit.export import export_onnx, model_metadata
    from retinakit.modeling import build_model

    from .conftest import condition_random_model_

    cfg = _cfg()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    condition_random_model_(model, seed=3)
    d = tmp_path_factory.mktemp("p2")
    weights = str(d / "p2.pth")
    torch.save({"model": model.state_dict()}, weights)
    onnx_path = str(d / "p2.onnx")
    export_onnx(model, onnx_path, mode="e2e", example_size=(1, 256, 256), metadata=model_metadata(cfg, model))
    return cfg, model, weights, onnx_path


def _assert_same(a, b, **tol):
    tu = model_testutils()
    assert a.image_size == b.image_size
    nms = tu.NmsSettings(score_thresh=RANDOM_MODEL_SCORE_THRESH, nms_thresh=0.5, max_detections=100)
    tu.assert_same_detections(tu.Detections.of(b), tu.Detections.of(a), nms, **{"score_tol": 1e-4, "box_rtol": 1e-4, **tol})


def test_p2_e2e_onnx_equals_pytorch(p2_setup):
    from retinakit.data import build_inference_preprocess
    from retinakit.export import Predictor, load_predictor
    from retinakit.export.predictor import TorchBackend

    cfg, model, _, onnx_path = p2_setup
    images = random_images([(256, 256), (200, 240)], seed=21)
    assert _p2_candidates(model, images) > 100
    ref = Predictor(TorchBackend(model), build_inference_preprocess(cfg))(images)
    out = load_predictor(onnx_path)(images)
    assert all(len(r) > 0 for r in ref)
    # Detections from P2-sized boxes (anchors of 6-9.5 px, small deltas) are among those compared.
    assert any(bool(((r.pred_boxes.tensor[:, 2:] - r.pred_boxes.tensor[:, :2]).max(dim=1).values < 12).any()) for r in ref)
    for a, b in zip(ref, out):
        _assert_same(a, b)


def test_p2_predictor_and_default_predictor(p2_setup):
    from retinakit.engine import DefaultPredictor
    from retinakit.export import load_predictor

    cfg, model, weights, onnx_path = p2_setup
    image = random_images([(240, 256)], seed=22)[0]
    pth = load_predictor(weights, config_file=P2_CONFIG, opts=OPTS[2:])
    with torch.no_grad():
        ref = model([{"image": image}])[0]["instances"]
    got = pth([image])[0]
    assert len(ref) > 0
    _assert_same(ref, got)
    _assert_same(got, load_predictor(onnx_path)([image])[0])
    dcfg = cfg.clone()
    dcfg.MODEL.WEIGHTS = weights
    hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    _assert_same(ref, DefaultPredictor(dcfg)(hwc)["instances"].to("cpu"))


@pytest.fixture(scope="module")
def p2_calibration():
    from retinakit.export.calibration import pad_batch

    images, sizes = pad_batch(random_images([(256, 256)] * 6 + [(192, 256), (256, 160)], seed=23), 32)
    return {"images": images.astype(np.float32), "image_sizes": sizes}


def test_p2_fp16_and_int8(p2_setup, p2_calibration, tmp_path):
    pytest.importorskip("modelopt.onnx.quantization", reason="NVIDIA Model Optimizer (retinakit[deploy]) not installed")
    from retinakit.export import convert_fp16, quantize_int8

    _, _, _, onnx_path = p2_setup
    images, sizes = p2_calibration["images"][:2], p2_calibration["image_sizes"][:2]
    ref = ort_run(onnx_path, images, sizes)
    fp16 = ort_run(convert_fp16(onnx_path, str(tmp_path / "fp16.onnx")), images, sizes)
    tu = model_testutils()
    nms = tu.NmsSettings(score_thresh=RANDOM_MODEL_SCORE_THRESH, nms_thresh=0.5, max_detections=100)
    for i in range(2):
        dets = [tu.Detections(torch.as_tensor(o[1][i, :int(o[0][i])]), torch.as_tensor(o[2][i, :int(o[0][i])]),
                              torch.as_tensor(o[3][i, :int(o[0][i])]).long()) for o in (fp16, ref)]
        tu.assert_same_detections(*dets, nms, score_tol=2e-3, box_rtol=3e-3, score_margin=1e-2, iou_margin=0.05, max_excluded=0.1)
    int8_path = quantize_int8(onnx_path, str(tmp_path / "int8.onnx"), calibration_data=p2_calibration, method="max",
                              cache_path=str(tmp_path / "calibration.cache"))
    int8 = ort_run(int8_path, images, sizes)
    assert ref[2][:, 0].min() > 0.2, "the FP32 model should give confident detections"
    # Same bound as tests/export/test_quantize.py: 15% of the best FP32 score on the top 10.
    assert np.abs(np.sort(int8[2][:, :10]) - np.sort(ref[2][:, :10])).max() < 0.15 * ref[2][:, 0].max()
