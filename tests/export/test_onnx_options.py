"""End-to-end ONNX export of every built-in post-processing option equals eager PyTorch.

The exported graph is the model's own code (``RetinaNet.forward_features`` + the
post-processor's ``forward_static``), so each option is checked where the two paths differ:
the eager path runs the compiled decode / NMS kernels (or the generic ``box_coder.decode``
path), the graph runs ``TopK``, the box coder's ``decode`` and ``NonMaxSuppression``.
Custom box coders and post-processors either export through the same path or are refused
with a message naming what they lack.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from .conftest import RANDOM_MODEL_SCORE_THRESH, condition_random_model_, model_testutils, quickstart_cfg, random_images

SIZES = [(160, 160), (120, 200), (96, 144)]

OPTIONS = {
    "agnostic": ["MODEL.POSTPROCESSOR.NMS_TYPE", "agnostic"],
    "legacy_odtk_coder": ["MODEL.RETINANET.BOX_CODER_NAME", "LegacyDeltaXYWHBoxCoder", "MODEL.ANCHOR_GENERATOR.ROUND", True],
    "strides_from_image": ["MODEL.ANCHOR_GENERATOR.STRIDES_FROM_IMAGE", True, "MODEL.ANCHOR_GENERATOR.OFFSET", 0.5],
}


def _model(*opts):
    from retinakit.modeling import build_model

    cfg = quickstart_cfg("MODEL.RETINANET.SCORE_THRESH_TEST", RANDOM_MODEL_SCORE_THRESH, *opts)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    condition_random_model_(model)
    return cfg, model


def _export_and_compare(cfg, model, path, agnostic: bool = False, example_batch: int = 2) -> None:
    from retinakit.export import export_onnx, load_predictor, model_metadata

    from .test_onnx_export import _torch_predictor

    export_onnx(model, str(path), mode="e2e", example_size=(example_batch, 160, 160), metadata=model_metadata(cfg, model))
    images = random_images(SIZES, seed=7)
    ref = _torch_predictor(cfg, model)(images)
    out = load_predictor(str(path))(images)
    tu = model_testutils()
    pp = model.postprocessor
    nms = tu.NmsSettings(pp.score_thresh, pp.nms_thresh, pp.max_detections, class_agnostic=agnostic)
    for a, b in zip(ref, out):
        assert a.image_size == b.image_size
        tu.assert_same_detections(tu.Detections.of(b), tu.Detections.of(a), nms, score_tol=1e-4, box_rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_e2e_export_equals_eager(option, tmp_path):
    cfg, model = _model(*OPTIONS[option])
    if option == "legacy_odtk_coder":
        assert getattr(model.box_coder, "fused_decode_params", None) is None  # eager takes the generic decode
    _export_and_compare(cfg, model, tmp_path / "m.onnx", agnostic=option == "agnostic")


def test_forward_static_equals_forward_for_each_option():
    """Without ONNX: the static path run eagerly gives the eager detections (every option, batch of 3)."""
    from retinakit.structures import ImageList

    tu = model_testutils()
    for opts in [[], *OPTIONS.values(), ["MODEL.POSTPROCESSOR.FILTER_EMPTY_BOXES", False]]:
        _, model = _model(*opts)
        il: ImageList = model.preprocessor(random_images(SIZES, seed=9))
        sizes = torch.tensor([list(s) for s in il.image_sizes], dtype=torch.float32)
        with torch.no_grad():
            cls_logits, box_deltas, anchors = model.forward_features(il.tensor)
            ref = model.postprocessor(cls_logits, box_deltas, anchors, il.image_sizes)
            num, boxes, scores, classes = model.postprocessor.forward_static(cls_logits, box_deltas, anchors, sizes)
        pp = model.postprocessor
        nms = tu.NmsSettings(pp.score_thresh, pp.nms_thresh, pp.max_detections, class_agnostic=pp.nms_type == "agnostic")
        for i, r in enumerate(ref):
            n = int(num[i])
            got = tu.Detections(boxes[i, :n], scores[i, :n], classes[i, :n].long())
            tu.assert_same_detections(got, tu.Detections.of(r), nms, score_tol=1e-5, box_rtol=1e-5)
            assert (classes[i, n:] == -1).all() and (scores[i, n:] == 0).all()


class ScaledOffsetCoder:
    """A custom coder: corner offsets in units of the anchor size (no exp), written for ``[..., 4]``."""

    def encode(self, anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        size = (anchors[..., 2:] - anchors[..., :2]).repeat(*([1] * (anchors.dim() - 1)), 2)
        return (boxes - anchors) / size

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        size = (anchors[..., 2:] - anchors[..., :2]).repeat(*([1] * (anchors.dim() - 1)), 2)
        return anchors.float() + deltas.float() * size


class RowsOnlyCoder(ScaledOffsetCoder):
    """A custom coder that only handles ``[R, 4]`` (indexes columns of a 2-D tensor)."""

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        if deltas.dim() != 2:
            raise IndexError("too many indices for tensor")
        return super().decode(deltas, anchors)


def _with_coder(model: nn.Module, coder) -> nn.Module:
    model.box_coder = coder
    model.postprocessor.box_coder = coder
    return model


@pytest.mark.slow
def test_custom_box_coder_exports_through_its_decode(tmp_path):
    cfg, model = _model()
    # Traced from a batch of 1 (export_onnx traces 2 so the batch stays dynamic), run on 3 images.
    _export_and_compare(cfg, _with_coder(model, ScaledOffsetCoder()), tmp_path / "custom.onnx", example_batch=1)


def test_custom_box_coder_without_batched_decode_is_refused(tmp_path):
    from retinakit.export import export_onnx

    _, model = _model()
    with pytest.raises(ValueError, match=r"RowsOnlyCoder\.decode failed on them.*\[\.\.\., 4\].*mode='heads'"):
        export_onnx(_with_coder(model, RowsOnlyCoder()), str(tmp_path / "m.onnx"), mode="e2e")


class PlainPostProcessor(nn.Module):
    """Meets the PostProcessor protocol but has no static path."""

    def forward(self, cls_logits, box_deltas, anchors, image_sizes):  # pragma: no cover - never run
        raise AssertionError


def test_postprocessor_without_static_path_is_refused_and_heads_export_still_works(tmp_path):
    from retinakit.export import export_onnx

    _, model = _model()
    model.postprocessor = PlainPostProcessor()
    with pytest.raises(ValueError, match=r"PlainPostProcessor.*lacks.*forward_static.*mode='heads'"):
        export_onnx(model, str(tmp_path / "m.onnx"), mode="e2e")
    export_onnx(model, str(tmp_path / "heads.onnx"), mode="heads", example_size=(1, 128, 128))
