"""The typed component contracts: box coder, matcher and post-processor Protocols.

Built-in components meet their Protocol; a registered component that misses a method fails
when it is built, with a message naming the method; the matcher Protocol carries the anchors
per level, so an ATSS-style matcher plugs into the meta-architecture unchanged; the
crowd-ignore IoU is an explicit setting of the meta-architecture.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import pytest
import torch
from torch import Tensor
from torchvision.ops import box_iou

from retinakit.config import get_cfg
from retinakit.modeling import (
    BOX_CODER_REGISTRY,
    MATCHER_REGISTRY,
    POSTPROCESSOR_REGISTRY,
    DeltaXYWHBoxCoder,
    IoUMatcher,
    LegacyDeltaXYWHBoxCoder,
    build_model,
)
from retinakit.modeling.protocols import BoxCoder, FusedDecodeBoxCoder, Matcher, MatchInputs, PostProcessor, fused_decode_params
from retinakit.structures import Boxes, Instances
from retinakit.utils.registry import Registry, protocol_methods

IMAGE = (128, 160)
LEVEL_SHAPES = [(IMAGE[0] // s, IMAGE[1] // s) for s in (8, 16, 32, 64, 128)]


def small_cfg(**overrides: object):
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RETINANET.NUM_CLASSES", 3,
                         "MODEL.FPN.OUT_CHANNELS", 32])
    for k, v in overrides.items():
        cfg.merge_from_list([k.replace("__", "."), v])
    return cfg


@contextlib.contextmanager
def registered(registry: Registry, obj: object, name: str) -> Iterator[None]:
    """Register ``obj`` as ``name`` for the duration of a test."""
    registry.register(obj, name=name)
    try:
        yield
    finally:
        registry._obj_map.pop(name)


def level_anchors(model) -> list[Tensor]:
    """Per level ``[H_l*W_l*A, 4]`` anchors of a ``IMAGE``-sized input."""
    return model.anchor_generator([torch.zeros(1, 1, h, w) for h, w in LEVEL_SHAPES], IMAGE)


def gt(boxes: list[list[float]], classes: list[int], ignore: list[bool] | None = None) -> Instances:
    fields = dict(gt_boxes=Boxes(torch.tensor(boxes)), gt_classes=torch.tensor(classes))
    if ignore is not None:
        fields["gt_ignore"] = torch.tensor(ignore)
    return Instances(IMAGE, **fields)


# ------------------------------------------------------------------ built-ins meet their Protocols
def test_builtin_components_meet_their_protocols() -> None:
    model = build_model(small_cfg())
    assert isinstance(model.box_coder, FusedDecodeBoxCoder) and isinstance(model.matcher, Matcher)
    assert isinstance(model.postprocessor, PostProcessor)
    legacy = LegacyDeltaXYWHBoxCoder()
    assert isinstance(legacy, BoxCoder) and not isinstance(legacy, FusedDecodeBoxCoder)
    assert fused_decode_params(legacy) is None
    assert fused_decode_params(DeltaXYWHBoxCoder(weights=(1, 2, 3, 4), scale_clamp=2.0)) == ((1.0, 2.0, 3.0, 4.0), 2.0)
    assert set(protocol_methods(FusedDecodeBoxCoder)) == {"encode", "decode", "fused_decode_params"}
    assert set(protocol_methods(Matcher)) == {"match"} and set(protocol_methods(PostProcessor)) == {"__call__"}


def test_iou_matcher_match_equals_thresholding_the_iou_matrix() -> None:
    """``match(MatchInputs)`` = the IoU matcher on torchvision's IoU of the concatenated levels."""
    g = torch.Generator().manual_seed(0)
    levels = [torch.rand(n, 2, generator=g).repeat(1, 2) * 100 + torch.tensor([0.0, 0.0, 20.0, 30.0]) for n in (40, 10)]
    levels.append(torch.tensor([[5.5, 5.0, 40.5, 50.0], [50.0, 10.0, 92.0, 80.0], [30.0, 30.0, 60.0, 60.0]]))  # near the gt
    gt_boxes = torch.tensor([[5.0, 5.0, 40.0, 50.0], [50.0, 10.0, 90.0, 80.0], [0.0, 0.0, 1.0, 1.0]])
    m = IoUMatcher(thresholds=[0.3, 0.5], labels=[0, -1, 1])
    inputs = MatchInputs(anchors=levels, gt_boxes=gt_boxes)
    matches, labels = m.match(inputs)
    iou = box_iou(gt_boxes, torch.cat(levels))
    torch.testing.assert_close(inputs.iou(), iou)
    ref_matches, ref_labels = m(iou)
    assert torch.equal(matches, ref_matches) and torch.equal(labels, ref_labels)
    assert inputs.num_anchors_per_level() == [40, 10, 3] and labels.dtype == torch.int8 and matches.shape == (53,)
    strict = IoUMatcher(thresholds=[0.3, 0.5], labels=[0, -1, 1], allow_low_quality_matches=False)
    best, best_gt = iou.max(dim=0)
    by_hand = torch.where(best < 0.3, 0, torch.where(best < 0.5, -1, 1)).to(torch.int8)
    strict_matches, strict_labels = strict.match(MatchInputs(anchors=levels, gt_boxes=gt_boxes))
    assert torch.equal(strict_labels, by_hand) and torch.equal(strict_matches, best_gt)
    assert {-1, 0, 1} <= set(by_hand.tolist())


# ------------------------------------------------------------------ build-time checks
class NoDecodeCoder:
    def __init__(self, cfg=None) -> None:
        pass

    def encode(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        return boxes - anchors


class IoUOnlyMatcher:
    """The pre-Protocol calling convention (an IoU matrix): no ``match``."""

    def __init__(self, cfg=None) -> None:
        pass

    def __call__(self, quality: Tensor) -> tuple[Tensor, Tensor]:
        return IoUMatcher()(quality)


def not_callable_postprocessor(cfg, box_coder) -> object:
    return object()


@pytest.mark.parametrize("registry,key,obj,missing,protocol", [
    (BOX_CODER_REGISTRY, "MODEL.RETINANET.BOX_CODER_NAME", NoDecodeCoder, "decode", "BoxCoder"),
    (MATCHER_REGISTRY, "MODEL.RETINANET.MATCHER_NAME", IoUOnlyMatcher, "match", "Matcher"),
    (POSTPROCESSOR_REGISTRY, "MODEL.POSTPROCESSOR.NAME", not_callable_postprocessor, "__call__", "PostProcessor"),
])
def test_build_fails_naming_the_missing_method(registry, key, obj, missing, protocol) -> None:
    name = f"_TestBroken{protocol}"
    with registered(registry, obj, name):
        cfg = small_cfg()
        cfg.merge_from_list([key, name])
        with pytest.raises(TypeError) as e:
            build_model(cfg)
    msg = str(e.value)
    assert f"missing method(s) {missing}" in msg and protocol in msg and name in msg


def test_keyword_built_retinanet_checks_its_components() -> None:
    """``RetinaNet(**kwargs)`` (no config) checks the same Protocols."""
    from retinakit.modeling import RetinaNet

    kwargs = RetinaNet.from_config(small_cfg())
    kwargs["matcher"] = IoUOnlyMatcher()
    with pytest.raises(TypeError, match=r"MATCHER component \(IoUOnlyMatcher\).*missing method\(s\) match"):
        RetinaNet(**kwargs)


def test_registry_check_protocol_lists_every_missing_method() -> None:
    class Shape(Protocol):
        def area(self) -> float: ...

        def perimeter(self, scale: float) -> float: ...

    reg = Registry("SHAPE", protocol=Shape)

    @reg.register()
    class Square:
        def __init__(self) -> None:
            self.perimeter = 4.0  # an attribute, not a method

    with pytest.raises(TypeError) as e:
        reg.build("Square")
    assert "missing method(s) area, perimeter" in str(e.value) and "perimeter(scale)" in str(e.value)
    assert Registry("FREE").check_protocol(3) == 3  # no protocol: nothing to check


# ------------------------------------------------------------------ an ATSS-style matcher fits the Protocol
class TopKCentreMatcher:
    """ATSS-style: per ground truth, the ``k`` anchors of each level closest to its centre are
    candidates; those with IoU >= mean + std of the candidates' IoU and their centre inside the
    box are foreground (the highest-IoU ground truth wins); all others background."""

    def __init__(self, cfg=None, k: int = 4) -> None:
        self.k = k
        self.seen_levels: list[int] = []

    def match(self, inputs: MatchInputs) -> tuple[Tensor, Tensor]:
        self.seen_levels = inputs.num_anchors_per_level()
        anchors, gt_boxes = inputs.all_anchors(), inputs.gt_boxes
        num = anchors.shape[0]
        if gt_boxes.shape[0] == 0:
            return torch.zeros(num, dtype=torch.int64), torch.zeros(num, dtype=torch.int8)
        iou = inputs.iou()
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2
        dist = torch.cdist((gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2, centres)  # [G, R]
        candidate = torch.zeros_like(iou, dtype=torch.bool)
        start = 0
        for n in self.seen_levels:
            idx = dist[:, start:start + n].topk(min(self.k, n), dim=1, largest=False).indices + start
            candidate.scatter_(1, idx, True)
            start += n
        cand_iou = torch.where(candidate, iou, torch.nan)
        thresh = cand_iou.nanmean(dim=1) + torch.sqrt(torch.nanmean((cand_iou - cand_iou.nanmean(dim=1, keepdim=True)) ** 2, dim=1))
        inside = ((centres[None] > gt_boxes[:, None, :2]) & (centres[None] < gt_boxes[:, None, 2:])).all(dim=-1)
        positive = candidate & inside & (iou >= thresh[:, None])
        best_iou, matches = torch.where(positive, iou, -1.0).max(dim=0)
        return matches, (best_iou >= 0).to(torch.int8)


def test_atss_style_matcher_plugs_into_retinanet() -> None:
    with registered(MATCHER_REGISTRY, TopKCentreMatcher, "_TestTopKCentreMatcher"):
        model = build_model(small_cfg(MODEL__RETINANET__MATCHER_NAME="_TestTopKCentreMatcher"))
    anchors = level_anchors(model)
    boxes = [[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 150.0, 110.0]]
    labels, matched = model.label_anchors(anchors, [gt(boxes, [0, 2])])
    assert model.matcher.seen_levels == [a.shape[0] for a in anchors]  # the matcher saw the levels
    ref_matches, ref_labels = TopKCentreMatcher().match(MatchInputs(anchors, torch.tensor(boxes)))
    expected = torch.where(ref_labels == 1, torch.tensor([0, 2])[ref_matches], 3)
    assert torch.equal(labels[0], expected)
    for j in (0, 1):  # every box has foreground anchors, at most k per level
        assert 0 < int(((ref_labels == 1) & (ref_matches == j)).sum()) <= 4 * len(anchors)
    assert torch.equal(matched[0][ref_labels == 1], torch.tensor(boxes)[ref_matches[ref_labels == 1]])
    model.train()
    image = torch.randint(0, 256, (3, *IMAGE), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    losses = model([{"image": image, "instances": gt(boxes, [0, 2])}])
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_box_reg"] > 0


# ------------------------------------------------------------------ crowd-ignore IoU is explicit
def test_crowd_ignore_iou_comes_from_the_config_not_the_matcher() -> None:
    model = build_model(small_cfg(MODEL__RETINANET__IOU_THRESHOLDS=[0.3, 0.5]))
    assert model.crowd_ignore_iou == 0.3
    model.matcher.thresholds = [float("-inf"), 0.45, 0.5, float("inf")]  # not read for crowds
    anchors = level_anchors(model)
    real, crowd = [10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 150.0, 110.0]
    labels = model.label_anchors(anchors, [gt([real, crowd], [0, 2], [False, True])])[0][0]
    plain = model.label_anchors(anchors, [gt([real], [0])])[0][0]
    crowd_iou = box_iou(torch.tensor([crowd]), torch.cat(anchors))[0]
    near = (crowd_iou >= 0.3) & (plain != 0)
    assert torch.equal(labels, torch.where(near, -1, plain)) and bool(near.any())
    model.crowd_ignore_iou = 0.2
    labels_02 = model.label_anchors(anchors, [gt([real, crowd], [0, 2], [False, True])])[0][0]
    assert torch.equal(labels_02, torch.where((crowd_iou >= 0.2) & (plain != 0), -1, plain))
    assert (labels_02 == -1).sum() > (labels == -1).sum()
