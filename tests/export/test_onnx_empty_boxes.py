"""End-to-end ONNX and eager PyTorch agree on MODEL.POSTPROCESSOR.FILTER_EMPTY_BOXES.

The random quickstart model gets head biases that give anchors 0-3 at every location class-0
scores of 1.0 and inf / huge box deltas, so their clipped boxes are empty; with the filter on
neither path returns them (and the rest equals eager), with it off both do.
"""
from __future__ import annotations

import copy

import pytest
import torch

from .conftest import random_images

SIZES = [(160, 160), (120, 200)]


def _saturate(model: torch.nn.Module, num_classes: int) -> torch.nn.Module:
    model = copy.deepcopy(model)
    head = model.head
    with torch.no_grad():
        for a in range(4):
            head.cls_score.bias[a * num_classes] += 30.0
        bias = head.bbox_pred.bias
        bias[0 * 4 + 0] = float("inf")  # dx: clipped onto the right edge
        bias[1 * 4 + 1] = -1e30  # dy: clipped onto the top edge
        bias[2 * 4 + 2] = float("-inf")  # dw: zero width
        bias[3 * 4 + 3] = -1e4  # dh: exp underflows, zero height
    return model


def _export(cfg, model, path):
    from retinakit.export import export_onnx, load_predictor, model_metadata

    export_onnx(model, str(path), mode="e2e", example_size=(2, 160, 160), metadata=model_metadata(cfg, model))
    return load_predictor(str(path))


def _nonempty(inst) -> torch.Tensor:
    t = inst.pred_boxes.tensor
    return (t[:, 2] > t[:, 0]) & (t[:, 3] > t[:, 1])


@pytest.mark.parametrize("filter_empty", [True, False])
@pytest.mark.slow
def test_e2e_onnx_and_eager_agree_on_empty_boxes(random_setup, tmp_path, filter_empty):
    from .test_onnx_export import _torch_predictor, assert_same_detections

    cfg, base = random_setup
    cfg = cfg.clone()
    cfg.merge_from_list(["MODEL.POSTPROCESSOR.FILTER_EMPTY_BOXES", filter_empty])
    model = _saturate(base, cfg.MODEL.RETINANET.NUM_CLASSES)
    model.postprocessor.filter_empty_boxes = filter_empty
    images = random_images(SIZES, seed=3)
    ref = _torch_predictor(cfg, model)(images)
    out = _export(cfg, model, tmp_path / "model.onnx")(images)
    for a, b in zip(ref, out):
        if filter_empty:
            assert _nonempty(a).all() and _nonempty(b).all()
            assert_same_detections(a, b)
        else:  # both keep the empty score-1.0 boxes (torchvision's behaviour)
            for inst in (a, b):
                assert (~_nonempty(inst)).sum() > 0 and (inst.scores[~_nonempty(inst)] > 0.999).all()
