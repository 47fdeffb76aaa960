"""End-to-end and heads-only ONNX exports equal the PyTorch model (onnxruntime on CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from .conftest import RANDOM_MODEL_SCORE_THRESH, model_testutils, ort_run, random_images


def _torch_predictor(cfg, model):
    from retinakit.data import build_inference_preprocess
    from retinakit.export import Predictor
    from retinakit.export.predictor import TorchBackend

    return Predictor(TorchBackend(model), build_inference_preprocess(cfg))


def assert_same_detections(a, b, rel=1e-4, score_tol=1e-4):
    """``b`` has ``a``'s image size and detections: same class, score within ``score_tol``, box
    within ``rel`` x the largest coordinate, except the few NMS near-ties (rk_model_testutils)."""
    tu = model_testutils()
    assert a.image_size == b.image_size
    nms = tu.NmsSettings(score_thresh=RANDOM_MODEL_SCORE_THRESH, nms_thresh=0.5, max_detections=100)
    tu.assert_same_detections(tu.Detections.of(b), tu.Detections.of(a), nms, score_tol=score_tol, box_rtol=rel)


@pytest.mark.parametrize("sizes", [[(160, 160)], [(160, 160), (120, 200), (200, 90)]], ids=["batch1", "batch3"])
def test_e2e_onnx_equals_pytorch(random_setup, e2e_onnx, sizes):
    from retinakit.export import load_predictor

    cfg, model = random_setup
    images = random_images(sizes)
    ref = _torch_predictor(cfg, model)(images)
    out = load_predictor(e2e_onnx)(images)
    assert [r.image_size for r in out] == [tuple(s) for s in sizes]
    for a, b in zip(ref, out):
        assert_same_detections(a, b)


def test_e2e_graph_is_standard_onnx(e2e_onnx):
    import onnx

    from retinakit.export import read_metadata

    m = onnx.load(e2e_onnx)
    ops = {n.op_type for n in m.graph.node}
    assert {"NonMaxSuppression", "TopK"} <= ops
    assert all(n.domain in ("", "ai.onnx") for n in m.graph.node), "custom-domain op in the graph"
    assert m.ir_version <= 10
    assert [o.name for o in m.graph.output] == ["num_dets", "boxes", "scores", "classes"]
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for i, d in enumerate(dims) if i != 1), "batch/height/width must be dynamic"
    onnx.checker.check_model(m)
    meta = read_metadata(e2e_onnx)
    assert meta["mode"] == "e2e" and meta["size_divisibility"] >= 32 and "config" in meta


def test_e2e_fixed_outputs_and_padding_value(e2e_onnx):
    """Padding content does not matter (masked in the graph); padding rows are zero / -1."""
    rng = np.random.default_rng(0)
    img = (rng.random((1, 3, 160, 192)) * 255).astype(np.float32)
    sizes = np.array([[150.0, 170.0]], np.float32)
    noisy = img.copy()
    noisy[:, :, 150:, :] = 255.0
    noisy[:, :, :, 170:] = 17.0
    a, b = ort_run(e2e_onnx, img, sizes), ort_run(e2e_onnx, noisy, sizes)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    num, boxes, scores, classes = a
    assert boxes.shape == (1, 100, 4) and num.dtype == np.int32 and classes.dtype == np.int32
    n = int(num[0])
    assert (classes[0, n:] == -1).all() and (scores[0, n:] == 0).all()
    assert boxes[0, :n, 2].max() <= 170.0 and boxes[0, :n, 3].max() <= 150.0


def test_heads_only_equals_head_outputs(random_setup, heads_onnx):
    from retinakit.structures import ImageList

    _, model = random_setup
    images = random_images([(160, 160), (128, 96)], seed=3)
    il = model.preprocessor(list(images))
    with torch.no_grad():
        cls_ref, box_ref, _ = model.inference_outputs(il)
    padded = torch.zeros(2, 3, *il.tensor.shape[-2:])
    for i, x in enumerate(images):
        padded[i, :, : x.shape[1], : x.shape[2]] = x.float()
    sizes = np.array([list(s) for s in il.image_sizes], np.float32)
    outs = ort_run(heads_onnx, padded.numpy(), sizes)
    n = len(cls_ref)
    assert len(outs) == 2 * n
    for ref, got in zip(list(cls_ref) + list(box_ref), outs):
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-3, atol=1e-3)
    assert isinstance(il, ImageList)


def test_soft_nms_needs_heads_mode(tmp_path):
    from retinakit.export import export_onnx
    from retinakit.modeling import build_model

    from .conftest import quickstart_cfg

    model = build_model(quickstart_cfg("MODEL.POSTPROCESSOR.NMS_TYPE", "soft")).eval()
    with pytest.raises(ValueError, match="heads"):
        export_onnx(model, str(tmp_path / "m.onnx"), mode="e2e")


def test_custom_postprocessor_is_refused_for_end_to_end_export():
    from torch import nn

    from retinakit.config import get_cfg
    from retinakit.export.modules import EndToEndModule
    from retinakit.modeling import build_model
    from retinakit.modeling.postprocess import RetinaNetPostProcessor

    class MyPostProcessor(RetinaNetPostProcessor):
        def forward(self, *args):  # pragma: no cover - never run
            raise AssertionError

    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RETINANET.NUM_CLASSES", 2])
    model = build_model(cfg).eval()
    model.postprocessor = MyPostProcessor(box_coder=model.box_coder)
    assert isinstance(model.postprocessor, nn.Module)
    with pytest.raises(ValueError, match=r"MyPostProcessor.*mode='heads'"):
        EndToEndModule(model)
