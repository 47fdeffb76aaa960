"""One predictor API over .pth, .onnx (FP32/FP16) and .plan; bad inputs; missing extras."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from .conftest import QUICKSTART, RANDOM_MODEL_SCORE_THRESH, random_images


def test_predictor_backends_agree(random_setup, random_weights, e2e_onnx):
    from retinakit.export import load_predictor

    from .test_onnx_export import assert_same_detections

    images = random_images([(160, 160), (90, 200)], seed=7)
    pth = load_predictor(random_weights, config_file=QUICKSTART, opts=["MODEL.RETINANET.SCORE_THRESH_TEST", RANDOM_MODEL_SCORE_THRESH])
    onx = load_predictor(e2e_onnx)
    assert pth.backend.name == "pytorch" and onx.backend.name == "onnxruntime"
    for a, b in zip(pth(images), onx(images)):
        assert a.pred_classes.dtype == b.pred_classes.dtype == torch.int64
        assert_same_detections(a, b)
    # One image, numpy HWC and BGR inputs are accepted too.
    hwc = images[0].permute(1, 2, 0).numpy()
    single = onx(hwc)
    assert len(single) == 1 and single[0].image_size == (160, 160)
    bgr = onx(np.ascontiguousarray(hwc[:, :, ::-1]), input_format="BGR")[0]
    assert torch.equal(bgr.scores, single[0].scores)


def test_predictor_file_inputs_and_original_coordinates(e2e_onnx, tmp_path):
    from PIL import Image

    from retinakit.export import load_predictor

    arr = np.random.default_rng(3).integers(0, 255, (320, 240, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    p = load_predictor(e2e_onnx)
    inst = p([str(tmp_path / "a.png")])[0]
    assert inst.image_size == (320, 240)
    b = inst.pred_boxes.tensor
    assert b[:, 2].max() <= 240 + 1e-3 and b[:, 3].max() <= 320 + 1e-3
    assert b[:, 2].max() > 160, "boxes should be scaled back from the 160-px network input"


def test_predictor_bad_inputs(random_weights, heads_onnx, tmp_path):
    from retinakit.data.errors import BadImageError
    from retinakit.export import PredictorError, load_predictor

    with pytest.raises(PredictorError, match="does not exist"):
        load_predictor(str(tmp_path / "missing.onnx"))
    with pytest.raises(PredictorError, match="needs its config"):
        load_predictor(random_weights)
    r50 = QUICKSTART.replace("quickstart/retinanet_R18_shapes.yaml", "COCO-Detection/retinanet_R_50_FPN_1x.yaml")
    with pytest.raises(PredictorError, match=r"do not fit|do not cover"):
        load_predictor(random_weights, config_file=r50)
    with pytest.raises(PredictorError, match="heads-only"):
        load_predictor(heads_onnx)
    junk = tmp_path / "model.bin"
    junk.write_bytes(b"x")
    with pytest.raises(PredictorError, match="Unknown model type"):
        load_predictor(str(junk))
    notimg = tmp_path / "x.png"
    notimg.write_text("hello")
    p = load_predictor(random_weights, config_file=QUICKSTART)
    with pytest.raises(BadImageError, match=r"x\.png"):
        p([str(notimg)])


def test_missing_tensorrt_names_the_extra(monkeypatch, e2e_onnx, tmp_path):
    from retinakit.export import MissingDependencyError
    from retinakit.export.tensorrt import build_engine, tensorrt_available

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert not tensorrt_available()
    with pytest.raises(MissingDependencyError, match=r"pip install retinakit\[tensorrt\]"):
        build_engine(e2e_onnx, str(tmp_path / "m.plan"))


def test_missing_onnxruntime_names_the_extra(monkeypatch, e2e_onnx):
    from retinakit.export import MissingDependencyError, load_predictor

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match=r"pip install retinakit\[deploy\]"):
        load_predictor(e2e_onnx)
