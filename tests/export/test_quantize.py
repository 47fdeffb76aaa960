"""FP16 and INT8 Q/DQ ONNX models (NVIDIA Model Optimizer), calibration cache, calibration inputs."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from .conftest import RANDOM_MODEL_SCORE_THRESH, model_testutils, ort_run

pytest.importorskip("modelopt.onnx.quantization", reason="NVIDIA Model Optimizer (retinakit[deploy]) not installed")


@pytest.fixture(scope="module")
def int8_from_images(e2e_onnx, calibration_data, tmp_path_factory):
    from retinakit.export import quantize_int8

    d = tmp_path_factory.mktemp("int8")
    cache = str(d / "calibration.cache")
    path = quantize_int8(e2e_onnx, str(d / "int8.onnx"), calibration_data=calibration_data, method="max", cache_path=cache)
    return path, cache


def test_fp16_within_fp16_tolerance(e2e_onnx, calibration_data, tmp_path):
    import onnx

    from retinakit.export import convert_fp16, read_metadata

    path = convert_fp16(e2e_onnx, str(tmp_path / "fp16.onnx"))
    m = onnx.load(path)
    conv_w = {n.input[1] for n in m.graph.node if n.op_type == "Conv"}
    fp16_weights = [i for i in m.graph.initializer if i.name in conv_w and i.data_type == onnx.TensorProto.FLOAT16]
    assert len(fp16_weights) >= len(conv_w) * 0.9, "backbone/head convolutions should be FP16"
    assert [i.type.tensor_type.elem_type for i in m.graph.input] == [onnx.TensorProto.FLOAT] * 2
    assert read_metadata(path)["precision"] == "fp16"
    images, sizes = calibration_data["images"][:2], calibration_data["image_sizes"][:2]
    ref, got = ort_run(e2e_onnx, images, sizes), ort_run(path, images, sizes)
    # FP16 rounding (~1e-3 on logits and deltas) may flip NMS decisions within a wider margin.
    tu = model_testutils()
    nms = tu.NmsSettings(score_thresh=RANDOM_MODEL_SCORE_THRESH, nms_thresh=0.5, max_detections=100)
    for i in range(2):
        n = [int(out[0][i]) for out in (got, ref)]
        dets = [tu.Detections(torch.as_tensor(out[1][i, :k]), torch.as_tensor(out[2][i, :k]), torch.as_tensor(out[3][i, :k]).long())
                for out, k in zip((got, ref), n)]
        tu.assert_same_detections(*dets, nms, score_tol=2e-3, box_rtol=3e-3, score_margin=1e-2, iou_margin=0.05, max_excluded=0.1)


def test_int8_qdq_model_and_cache_round_trip(e2e_onnx, int8_from_images, tmp_path):
    import onnx

    from retinakit.export import quantize_int8
    from retinakit.export.calib_cache import read_cache, scales_from_qdq_model

    path, cache = int8_from_images
    q = onnx.load(path)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") >= 40 and "NonMaxSuppression" in ops and q.ir_version <= 10
    cached = read_cache(cache)
    assert cached == pytest.approx(scales_from_qdq_model(q), rel=1e-6)
    # Reuse the cache without images: same scales, same outputs.
    again = quantize_int8(e2e_onnx, str(tmp_path / "again.onnx"), calibration_data=None, cache_path=cache)
    assert scales_from_qdq_model(onnx.load(again)) == pytest.approx(cached, rel=1e-6)
    x = np.random.default_rng(0).random((1, 3, 160, 160), dtype=np.float32) * 255
    s = np.array([[160.0, 160.0]], np.float32)
    for a, b in zip(ort_run(path, x, s), ort_run(again, x, s)):
        np.testing.assert_array_equal(a, b)


def test_int8_close_to_fp32_head_outputs(e2e_onnx, int8_from_images, calibration_data):
    """Q/DQ detections stay close to FP32 on the calibration distribution (same top scores).

    The random model's scores depend on the image (rk_model_testutils conditioning), so INT8
    rounding of every layer moves them by a few 1e-2; the bound is 15% of the best FP32 score
    (a wrong scale or a dropped Q/DQ pair moves them by far more)."""
    images, sizes = calibration_data["images"][:2], calibration_data["image_sizes"][:2]
    ref, got = ort_run(e2e_onnx, images, sizes), ort_run(int8_from_images[0], images, sizes)
    assert ref[2][:, 0].min() > 0.2, "the FP32 model should give confident detections"
    assert np.abs(np.sort(got[2][:, :10]) - np.sort(ref[2][:, :10])).max() < 0.15 * ref[2][:, 0].max()


def test_cache_errors(e2e_onnx, tmp_path):
    from retinakit.export import CacheError, quantize_int8

    with pytest.raises(CacheError, match="not found"):
        quantize_int8(e2e_onnx, str(tmp_path / "x.onnx"), calibration_data=None, cache_path=str(tmp_path / "none.cache"))
    bad = tmp_path / "other.cache"
    bad.write_text("TRT-10000-EntropyCalibration2\nsome_other_tensor: 3c23d70a\n")
    with pytest.raises(CacheError, match="another model"):
        quantize_int8(e2e_onnx, str(tmp_path / "x.onnx"), calibration_data=None, cache_path=str(bad))
    garbage = tmp_path / "garbage.cache"
    garbage.write_text("header\nnot a cache line\n")
    with pytest.raises(CacheError, match="line 2"):
        quantize_int8(e2e_onnx, str(tmp_path / "x.onnx"), calibration_data=None, cache_path=str(garbage))


def test_unknown_method(e2e_onnx, calibration_data, tmp_path):
    from retinakit.export import quantize_int8

    with pytest.raises(ValueError, match="entropy"):
        quantize_int8(e2e_onnx, str(tmp_path / "x.onnx"), calibration_data=calibration_data, method="kl")


def test_calibration_inputs_use_inference_preprocessing(random_setup, tmp_path):
    """Calibration images are resized exactly like predictor inputs and padded to the divisibility."""
    import torch
    from PIL import Image

    from retinakit.data import build_inference_preprocess
    from retinakit.export import CalibrationError, calibration_arrays

    cfg, _ = random_setup
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(100, 140), (240, 120)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    data = calibration_arrays(cfg, str(tmp_path), 0, 32)
    pre = build_inference_preprocess(cfg)
    for i in range(2):
        t, _ = pre(str(tmp_path / f"{i}.png"))
        h, w = t.shape[1:]
        assert tuple(data["image_sizes"][i]) == (h, w)
        assert torch.equal(torch.from_numpy(data["images"][i, :, :h, :w]), t.float())
    assert data["images"].shape[2] % 32 == 0 and data["images"].shape[3] % 32 == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    with pytest.raises(CalibrationError, match="No images found"):
        calibration_arrays(cfg, str(empty), 8, 32)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(CalibrationError, match=r"broken\.jpg"):
        calibration_arrays(cfg, str(bad), 8, 32)
    with pytest.raises(CalibrationError, match="does not exist"):
        calibration_arrays(cfg, str(tmp_path / "missing"), 8, 32)
    assert os.path.isdir(tmp_path)
