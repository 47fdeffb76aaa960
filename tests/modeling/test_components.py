"""Anchors, box coder, matcher and losses against independent references."""
import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TVImageList
from torchvision.ops import generalized_box_iou, sigmoid_focal_loss

from retinakit.modeling.anchor_generator import DefaultAnchorGenerator
from retinakit.modeling.box_coder import DeltaXYWHBoxCoder
from retinakit.modeling.losses import GIoULoss, SigmoidFocalLoss, SmoothL1Loss
from retinakit.modeling.matcher import IoUMatcher


def _reference_anchors(strides, sizes, ratios, grids, offset):
    """Straightforward loops: for each location (row-major), ratio-major then size."""
    levels = []
    for stride, level_sizes, (gh, gw) in zip(strides, sizes, grids):
        out = []
        for y in range(gh):
            for x in range(gw):
                cx, cy = (x + offset) * stride, (y + offset) * stride
                for r in ratios:
                    for s in level_sizes:
                        w, h = s / math.sqrt(r), s * math.sqrt(r)
                        out.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        levels.append(torch.tensor(out, dtype=torch.float32))
    return levels


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_anchors_match_loop_reference(offset):
    strides, grids = [8, 16], [(3, 5), (2, 3)]
    gen = DefaultAnchorGenerator(strides=strides, sizes=[[32], [64]], octave_scales=[1.0, 2 ** 0.5],
                                 aspect_ratios=[[0.5, 1.0, 2.0]], offset=offset)
    assert gen.num_anchors == [6, 6]
    feats = [torch.zeros(1, 4, *g) for g in grids]
    got = gen(feats, (24, 40))
    ref = _reference_anchors(strides, [[32, 32 * 2 ** 0.5], [64, 64 * 2 ** 0.5]], [0.5, 1.0, 2.0], grids, offset)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4)


def test_anchors_match_torchvision_rounded_rule():
    sizes = ((32, 40, 50), (64, 80, 101))
    tv = TVAnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 2)
    ours = DefaultAnchorGenerator(strides=[8, 16], sizes=[list(s) for s in sizes], octave_scales=[1.0],
                                  aspect_ratios=[[0.5, 1.0, 2.0]], round_anchors=True, strides_from_image=True)
    images = torch.zeros(1, 3, 96, 160)
    feats = [torch.zeros(1, 8, 12, 20), torch.zeros(1, 8, 6, 10)]
    expected = tv(TVImageList(images, [(96, 160)]), feats)[0]
    got = torch.cat(ours(feats, (96, 160)))
    assert torch.equal(got, expected)


def test_anchor_config_broadcast_and_errors():
    gen = DefaultAnchorGenerator(strides=[8, 16, 32], sizes=[16, 24], octave_scales=[1.0], aspect_ratios=[1.0])
    assert gen.num_anchors == [2, 2, 2]
    with pytest.raises(ValueError, match="SIZES has 2 lists"):
        DefaultAnchorGenerator(strides=[8, 16, 32], sizes=[[16], [32]])


def test_box_coder_matches_torchvision_and_round_trips():
    g = torch.Generator().manual_seed(0)
    anchors = torch.rand(200, 2, generator=g) * 500
    anchors = torch.cat([anchors, anchors + 1 + torch.rand(200, 2, generator=g) * 200], 1)
    boxes = torch.rand(200, 2, generator=g) * 500
    boxes = torch.cat([boxes, boxes + 1 + torch.rand(200, 2, generator=g) * 200], 1)
    weights = (10.0, 10.0, 5.0, 5.0)
    ours = DeltaXYWHBoxCoder(weights=weights, scale_clamp=math.log(1000.0 / 16))
    tv = TVBoxCoder(weights)
    deltas = ours.encode(anchors, boxes)
    torch.testing.assert_close(deltas, tv.encode_single(boxes, anchors), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.decode(deltas, anchors), boxes, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(ours.decode(deltas, anchors), tv.decode_single(deltas, anchors), rtol=1e-5, atol=1e-4)
    huge = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    assert torch.isfinite(ours.decode(huge, anchors[:1])).all()  # dw, dh clamped before exp
    assert ours.decode(deltas.half(), anchors).dtype == torch.float32


def test_matcher_thresholds_and_low_quality():
    iou = torch.tensor([[0.1, 0.45, 0.6, 0.3, 0.0],
                        [0.0, 0.2, 0.1, 0.35, 0.0]])
    m = IoUMatcher(thresholds=[0.4, 0.5], labels=[0, -1, 1], allow_low_quality_matches=False)
    matches, labels = m(iou)
    assert labels.tolist() == [0, -1, 1, 0, 0] and matches.tolist()[:4] == [0, 0, 0, 1]
    matches, labels = IoUMatcher(thresholds=[0.4, 0.5], labels=[0, -1, 1])(iou)
    assert labels.tolist() == [0, -1, 1, 1, 0]  # anchor 3 is gt 1's best anchor
    _, labels = IoUMatcher()(torch.zeros(0, 5))
    assert labels.tolist() == [0] * 5
    _, labels = IoUMatcher()(torch.zeros(1, 3))  # a gt overlapping nothing takes no anchor
    assert labels.tolist() == [0, 0, 0]


def test_focal_and_regression_losses_match_references():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 5, generator=g) * 3
    targets = (torch.rand(64, 5, generator=g) > 0.8).float()
    ref = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="sum")
    torch.testing.assert_close(SigmoidFocalLoss(alpha=0.25, gamma=2.0)(logits, targets), ref)
    coder = DeltaXYWHBoxCoder()
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 30.0, 25.0]])
    gt = torch.tensor([[1.0, 1.0, 12.0, 9.0], [4.0, 6.0, 28.0, 27.0]])
    pred = torch.randn(2, 4, generator=g) * 0.1
    diff = (pred - coder.encode(anchors, gt)).abs()
    beta = 0.1
    expected = torch.where(diff < beta, 0.5 * diff ** 2 / beta, diff - 0.5 * beta).sum()
    torch.testing.assert_close(SmoothL1Loss(beta=beta)(pred, anchors, gt, coder), expected)
    giou_ref = (1 - torch.diag(generalized_box_iou(coder.decode(pred, anchors), gt))).sum()
    torch.testing.assert_close(GIoULoss()(pred, anchors, gt, coder), giou_ref, rtol=1e-5, atol=1e-5)
