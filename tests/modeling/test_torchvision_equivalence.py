"""retinakit with converted torchvision weights gives torchvision's detections.

torchvision's RetinaNet (v1 and v2) is randomly initialised and perturbed (no network in
tests), converted with tools/convert_weights.py, loaded with the matching config and run on
two images of different sizes: same classes, boxes within 1e-3 relative, scores within 1e-4.
"""
import pytest
import torch

torchvision = pytest.importorskip("torchvision")
from torchvision.models.detection import retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2  # noqa: E402

from retinakit.checkpoint.model_loading import load_model_weights  # noqa: E402
from retinakit.config import get_cfg  # noqa: E402
from retinakit.modeling import build_model  # noqa: E402

NUM_CLASSES = 7
MIN_SIZE, MAX_SIZE = 224, 320


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter and BN statistic away from its initialisation, and make the
    classifier confident enough that hundreds of candidates pass the 0.05 threshold."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # 10% of each tensor's spread (biases: +-0.01)
            scale = 0.1 * p.std() if p.numel() > 1 and p.std() > 0 else 0.01
            p.add_(torch.randn(p.shape, generator=g) * scale)
        # Real BN statistics (from a random batch) keep activations at a realistic scale.
        bns = [m for m in model.backbone.body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.backbone.body.train()
        model.backbone.body(torch.randn(4, 3, 128, 128, generator=g))
        model.backbone.body.eval()
        head = model.head
        head.classification_head.cls_logits.bias.copy_(torch.randn(head.classification_head.cls_logits.bias.shape, generator=g) - 2.0)
        head.regression_head.bbox_reg.weight.mul_(5)


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
    g = torch.Generator().manual_seed(7)
    images = [torch.randint(0, 256, (3, 200, 300), generator=g, dtype=torch.uint8),
              torch.randint(0, 256, (3, 330, 250), generator=g, dtype=torch.uint8)]
    with torch.no_grad():
        expected = tv([im.float() / 255 for im in images])
        got = ours([{"image": im, "height": im.shape[1], "width": im.shape[2]} for im in images])
    for exp, res in zip(expected, got):
        inst = res["instances"]
        assert len(exp["boxes"]) > 20, "the perturbed model should produce detections"
        assert len(inst) == len(exp["boxes"])
        _assert_same_detections(inst.pred_boxes.tensor, inst.scores, inst.pred_classes,
                                exp["boxes"], exp["scores"], exp["labels"])


def _assert_same_detections(boxes, scores, classes, exp_boxes, exp_scores, exp_classes):
    """Every detection has a distinct counterpart with the same class, score within 1e-4 and
    box within 1e-3 (relative). Detections whose scores tie within 1e-4 may come in either order."""
    unused = torch.ones(len(exp_boxes), dtype=torch.bool)
    tol = 1e-3 * exp_boxes.abs().clamp(min=1.0)
    for b, s, c in zip(boxes, scores, classes):
        ok = unused & (exp_classes == c) & ((exp_scores - s).abs() <= 1e-4) & ((exp_boxes - b).abs() <= tol).all(dim=1)
        assert ok.any(), f"no torchvision detection matches class {int(c)} score {float(s):.6f} box {b.tolist()}"
        unused[ok.nonzero()[0, 0]] = False
