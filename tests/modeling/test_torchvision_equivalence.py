"""retinakit with converted torchvision weights gives torchvision's detections.

torchvision's RetinaNet (v1 and v2) is randomly initialised and perturbed (no network in
tests), converted with tools/convert_weights.py, loaded with the matching config and run on
two images of different sizes (no padding): the same detections (class, score within 1e-4, box within 1e-4
of the image scale), except the few whose NMS decision is within a rounding margin of a
threshold (tests/modeling/rk_model_testutils.py).

The perturbed model is well-conditioned so that float rounding (oneDNN's ISA, thread count)
cannot change which candidates survive: residual branches damped and batch norms calibrated
(features O(1)), class logits spread over locations (scores rarely tied) with few enough
candidates above the 0.05 threshold that the per-level top-1000 cut is not reached, box deltas
small (boxes near their anchors instead of stretched to the image border).
"""
import pytest
import torch

torchvision = pytest.importorskip("torchvision")
from torchvision.models.detection import retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2  # noqa: E402
from torchvision.models.resnet import Bottleneck  # noqa: E402

from retinakit.checkpoint.model_loading import load_model_weights  # noqa: E402
from retinakit.config import get_cfg  # noqa: E402
from retinakit.modeling import build_model  # noqa: E402

from rk_model_testutils import Detections, NmsSettings, assert_same_detections, condition_heads_  # noqa: E402 # isort: skip

NUM_CLASSES = 7
MIN_SIZE, MAX_SIZE = 224, 320


TV_NMS = NmsSettings(score_thresh=0.05, nms_thresh=0.5, max_detections=300)  # torchvision's defaults


def _images(seed: int = 7) -> list[torch.Tensor]:
    """An upscaled (x2) and a downscaled (x0.8) image, both resized to 224x320: a multiple of 32,
    so no padding (a constant padded region gives exactly tied scores at many locations)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, 112, 160), generator=g, dtype=torch.uint8),
            torch.randint(0, 256, (3, 280, 400), generator=g, dtype=torch.uint8)]


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter away from its initialisation, calibrate the backbone's batch norms
    with damped residual branches, and spread the class logits and box deltas."""
    g = torch.Generator().manual_seed(seed)
    body = model.backbone.body
    with torch.no_grad():
        for p in model.parameters():  # 10% of each tensor's spread (biases: +-0.01)
            scale = 0.1 * p.std() if p.numel() > 1 and p.std() > 0 else 0.01
            p.add_(torch.randn(p.shape, generator=g) * scale)
        for block in body.modules():  # damped residual branches: features stay O(1) with depth
            if isinstance(block, Bottleneck):
                block.bn3.weight.mul_(0.3)
        # Real BN statistics (from a random batch) keep activations at a realistic scale.
        for m in body.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        body.train()
        body(torch.randn(4, 3, 128, 128, generator=g))
        body.eval()
        model.eval()
        calib = [im.float() / 255 for im in _images(seed=seed + 100)]
        head = model.head
        condition_heads_(head.classification_head.cls_logits, head.regression_head.bbox_reg, lambda: model(calib),
                         seed=seed, logit_std=1.0, logit_mean=-5.5)


def _build_pair(version: str, seed: int):
    torch.manual_seed(seed)
    factory = retinanet_resnet50_fpn if version == "v1" else retinanet_resnet50_fpn_v2
    tv = factory(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, min_size=MIN_SIZE, max_size=MAX_SIZE)
    _perturb(tv, seed)
    tv.eval()
    name = "retinanet_R_50_FPN_torchvision.yaml" if version == "v1" else "retinanet_R_50_FPN_v2_torchvision.yaml"
    cfg = get_cfg()
    cfg.merge_from_file(f"configs/COCO-Detection/{name}")
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.RETINANET.NUM_CLASSES", NUM_CLASSES,
        "INPUT.MIN_SIZE_TEST", MIN_SIZE, "INPUT.MAX_SIZE_TEST", MAX_SIZE,
    ])
    ours = build_model(cfg).eval()
    report = load_model_weights(ours, tv.state_dict(), source="torchvision model")
    assert report.converted_from == "torchvision"
    assert report.missing == []
    return tv, ours


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_same_detections_as_torchvision(version):
    tv, ours = _build_pair(version, seed=0 if version == "v1" else 1)
    images = _images()
    with torch.no_grad():
        expected = tv([im.float() / 255 for im in images])
        got = ours([{"image": im, "height": im.shape[1], "width": im.shape[2]} for im in images])
    for exp, res in zip(expected, got):
        ref = Detections(exp["boxes"], exp["scores"], exp["labels"])
        assert len(ref) > 20, "the perturbed model should produce detections"
        assert_same_detections(Detections.of(res["instances"]), ref, TV_NMS, score_tol=1e-4, box_rtol=1e-4)
