"""Anchor coverage and anchor search, checked against brute-force IoU (torchvision.ops.box_iou)."""
from __future__ import annotations

import logging
import math

import pytest
import torch
from torchvision.ops import box_iou

from retinakit.analysis.anchors import (
    AnchorSetup,
    anchor_coverage,
    best_iou_grid,
    check_anchor_coverage,
    collect_ground_truth,
    kmeans_aspect_ratios,
    suggest_anchors,
)
from retinakit.config import ConfigError, get_cfg
from retinakit.data.transforms import DetectionTransform
from retinakit.modeling import ANCHOR_GENERATOR_REGISTRY, DefaultAnchorGenerator, build_model
from retinakit.structures import Boxes


def small_cfg(**overrides):
    """R-18 FPN with narrow channels (cheap to build), P3-P7, train size 256."""
    cfg = get_cfg()
    cfg.merge_from_list([
        "MODEL.RESNETS.DEPTH", 18, "MODEL.FPN.OUT_CHANNELS", 16, "MODEL.BACKBONE.FREEZE_AT", 0,
        "INPUT.MIN_SIZE_TRAIN", "(256,)", "INPUT.MAX_SIZE_TRAIN", 400,
        "INPUT.MIN_SIZE_TEST", 256, "INPUT.MAX_SIZE_TEST", 400,
    ])
    for k, v in overrides.items():
        cfg.merge_from_list([k, v])
    return cfg


def random_dicts(n: int, seed: int, min_side: float = 3.0, max_side: float = 120.0, crowd: bool = False):
    """Dataset dicts (XYXY boxes) of images of various sizes, boxes of log-uniform sides."""
    g = torch.Generator().manual_seed(seed)
    dicts = []
    for i in range(n):
        h, w = [(150, 330), (330, 170), (256, 256)][i % 3]  # few sizes: the reference runs the backbone per size
        annos = []
        for _ in range(int(torch.randint(0, 7, (1,), generator=g))):
            side = torch.exp(torch.empty(2).uniform_(math.log(min_side), math.log(max_side), generator=g))
            bw, bh = min(float(side[0]), w - 1.0), min(float(side[1]), h - 1.0)
            x0 = float(torch.rand((), generator=g)) * (w - bw)
            y0 = float(torch.rand((), generator=g)) * (h - bh)
            annos.append({"bbox": [x0, y0, x0 + bw, y0 + bh], "category_id": 0, "iscrowd": 0})
        if crowd:
            annos.append({"bbox": [0.0, 0.0, w / 2, h / 2], "category_id": 0, "iscrowd": 1})
        dicts.append({"image_id": i, "height": h, "width": w, "annotations": annos})
    return dicts


def reference_best_iou(setup: AnchorSetup, gt) -> torch.Tensor:
    """Best IoU per box over every anchor of its image: real backbone forward + torchvision IoU."""
    best = torch.zeros(len(gt), dtype=torch.float64)
    anchors_of = {}
    for i in range(len(gt)):
        ph, pw = gt.padded_hw[i].tolist()
        if (ph, pw) not in anchors_of:
            with torch.no_grad():
                feats = setup.backbone(torch.zeros(1, 3, ph, pw))
            anchors_of[ph, pw] = torch.cat(setup.generator([feats[f] for f in setup.in_features], (ph, pw))).double()
        best[i] = box_iou(gt.boxes[i : i + 1].double(), anchors_of[ph, pw]).max()
    return best


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"MODEL.ANCHOR_GENERATOR.OFFSET": 0.5, "MODEL.ANCHOR_GENERATOR.ROUND": True},
        {"MODEL.ANCHOR_GENERATOR.STRIDES_FROM_IMAGE": True, "MODEL.ANCHOR_GENERATOR.SIZES": "[[8,11],[16,22],[32,44],[64,88],[128,176]]",
         "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": "[[0.3,1.0,3.0]]"},
    ],
)
def test_grid_and_bruteforce_equal_torchvision_reference(overrides):
    cfg = small_cfg(**overrides)
    setup = AnchorSetup.from_config(cfg)
    gt = collect_ground_truth(cfg, random_dicts(12, seed=1), setup.size_divisibility)
    assert len(gt) > 20
    ref = reference_best_iou(setup, gt)
    for method in ("grid", "bruteforce"):
        report = anchor_coverage(cfg, random_dicts(12, seed=1), method=method, setup=setup)
        torch.testing.assert_close(report.best_iou.double(), ref, atol=1e-5, rtol=0)
        near = (ref - 0.5).abs() < 1e-5  # a tie with the threshold may round either way
        assert torch.equal((report.best_iou >= 0.5)[~near], (ref >= 0.5)[~near])


def test_best_iou_grid_edge_cases():
    # a box beyond the last grid centre (clamped index), an empty box list
    cell = [torch.tensor([[-4.0, -4.0, 4.0, 4.0]])]
    grid = torch.tensor([[[2.0, 2.0]]])
    stride = torch.tensor([[[8.0, 8.0]]])
    box = torch.tensor([[20.0, 20.0, 28.0, 28.0]])  # centre 24: nearest valid centre is 8
    got = best_iou_grid(box, grid, stride, cell, 0.0)
    anchors = torch.tensor([[x - 4, y - 4, x + 4, y + 4] for y in (0.0, 8.0) for x in (0.0, 8.0)])
    assert float(got) == pytest.approx(float(box_iou(box, anchors).max()))
    assert best_iou_grid(torch.zeros(0, 4), grid[:0], stride[:0], cell, 0.0).shape == (0,)


def test_ground_truth_follows_the_data_pipeline_resize():
    cfg = small_cfg(**{"INPUT.MIN_SIZE_TRAIN": "(200, 256)", "INPUT.RANDOM_FLIP": "none"})
    dicts = random_dicts(6, seed=2, crowd=True)
    gt = collect_ground_truth(cfg, dicts, 32)
    transform = DetectionTransform.from_config(cfg, is_train=True)
    expected, padded = [], []
    for d in dicts:
        boxes = torch.tensor([a["bbox"] for a in d["annotations"] if not a["iscrowd"]]).reshape(-1, 4)
        if not len(boxes):
            continue
        for short in (200, 256):
            transform.min_sizes = [short]
            p = transform.sample_params(d["height"], d["width"])
            expected.append(transform.apply_boxes(boxes, (d["height"], d["width"]), p))
            padded += [[math.ceil(p.out_size[0] / 32) * 32, math.ceil(p.out_size[1] / 32) * 32]] * len(boxes)
    torch.testing.assert_close(gt.boxes, torch.cat(expected), atol=1e-3, rtol=0)
    assert gt.padded_hw.tolist() == padded
    assert len(collect_ground_truth(cfg, dicts, 32, max_images=2)) < len(gt)


def test_ground_truth_follows_the_model_resize():
    """INPUT.RESIZE_IN_MODEL: sizes from the real preprocessor (interpolation floors), boxes scaled as the model does."""
    cfg = small_cfg(**{"INPUT.MIN_SIZE_TRAIN": "(200, 256)", "INPUT.RESIZE_IN_MODEL": True})
    dicts = random_dicts(6, seed=8, crowd=True)
    gt = collect_ground_truth(cfg, dicts, 32)
    model = build_model(cfg).train()
    expected, padded = [], []
    for d in dicts:
        boxes = torch.tensor([a["bbox"] for a in d["annotations"] if not a["iscrowd"]]).reshape(-1, 4)
        if not len(boxes):
            continue
        for short in (200, 256):
            model.preprocessor.min_size_train = [short]
            images = model.preprocess_image([{"image": torch.zeros(3, d["height"], d["width"], dtype=torch.uint8)}])
            (oh, ow), b = images.image_sizes[0], Boxes(boxes.clone())
            b.scale(ow / d["width"], oh / d["height"])
            expected.append(b.tensor)
            padded += [list(images.tensor.shape[-2:])] * len(boxes)
    assert {tuple(p) for p in padded} != {(256, 416)}  # several padded sizes: the check is not vacuous
    torch.testing.assert_close(gt.boxes, torch.cat(expected), atol=1e-3, rtol=0)
    assert gt.padded_hw.tolist() == padded


def test_report_buckets_and_table():
    cfg = small_cfg()
    report = anchor_coverage(cfg, random_dicts(20, seed=3), label="cfg")
    rows = {r[0]: r for r in report.rows()}
    assert rows["all"][1] == report.num_boxes
    assert rows["small"][1] + rows["medium"][1] + rows["large"][1] == report.num_boxes
    small = report.box_size < 32
    assert rows["small"][2] == pytest.approx(float((report.best_iou[small] >= 0.5).float().mean()))
    assert rows["all"][3] == pytest.approx(report.mean_best_iou)
    text = report.table(report)
    assert "coverage (cfg)" in text and "small" in text and "[8, 16)" in text
    assert report.anchors_per_location == [9] * 5


def test_kmeans_recovers_aspect_ratio_clusters():
    g = torch.Generator().manual_seed(0)
    boxes = []
    for r in (0.25, 1.0, 4.0):
        w = torch.exp(torch.empty(200).uniform_(2, 4, generator=g))
        h = w * r * torch.exp(torch.empty(200).normal_(0, 0.05, generator=g))
        boxes.append(torch.stack([torch.zeros(200), torch.zeros(200), w, h], 1))
    got = kmeans_aspect_ratios(torch.cat(boxes), 3)
    assert got == pytest.approx([0.25, 1.0, 4.0], rel=0.05)


def test_suggest_raises_coverage_with_same_anchor_count():
    cfg = small_cfg()
    dicts = random_dicts(60, seed=4, min_side=5, max_side=30)  # small objects, default anchors start at 32
    s = suggest_anchors(cfg, dicts, max_evals=600)
    assert s.after.coverage > s.before.coverage + 0.2
    assert s.after.anchors_per_location == s.before.anchors_per_location
    # the printed values, pasted into the config, give that coverage with the model's own generator
    tuned = cfg.clone()
    tuned.merge_from_list(s.overrides())
    again = anchor_coverage(tuned, dicts, method="bruteforce")
    assert again.coverage == pytest.approx(s.after.coverage, abs=1e-6)
    assert "SIZES: [[" in s.yaml() and "OCTAVE_SCALES" in s.yaml()
    flat = [v for level in s.sizes for v in level]
    assert flat == sorted(flat)


def test_check_anchor_coverage_warns_only_when_poor(caplog):
    dicts = random_dicts(10, seed=5, min_side=4, max_side=10)
    with caplog.at_level(logging.WARNING):
        report = check_anchor_coverage(small_cfg(), dicts, min_coverage=0.9)
    assert report.coverage < 0.9 and "Poor anchor coverage" in caplog.text and "--suggest" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_anchor_coverage(small_cfg(), dicts, min_coverage=0.0)
    assert "Poor anchor coverage" not in caplog.text


class _JitteredGenerator(torch.nn.Module):
    """A non-grid anchor generator: the default anchors shifted by 3 px (brute force only)."""

    def __init__(self, cfg, input_shapes):
        super().__init__()
        self.inner = DefaultAnchorGenerator(cfg, input_shapes)
        self.num_anchors = self.inner.num_anchors

    def forward(self, features, image_size):
        return [a + 3.0 for a in self.inner(features, image_size)]


def test_custom_generator_uses_bruteforce_and_bad_inputs_have_clear_messages():
    ANCHOR_GENERATOR_REGISTRY.register(_JitteredGenerator, override=True)
    cfg = small_cfg(**{"MODEL.ANCHOR_GENERATOR.NAME": "_JitteredGenerator"})
    dicts = random_dicts(4, seed=6)
    report = anchor_coverage(cfg, dicts)
    setup = AnchorSetup.from_config(cfg)
    gt = collect_ground_truth(cfg, dicts, setup.size_divisibility)
    torch.testing.assert_close(report.best_iou.double(), reference_best_iou(setup, gt), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="DefaultAnchorGenerator"):
        suggest_anchors(cfg, dicts)
    with pytest.raises(ValueError, match="height/width"):
        collect_ground_truth(small_cfg(), [{"image_id": 7, "annotations": []}], 32)
    with pytest.raises(ValueError, match="no \\(non-crowd\\) ground-truth"):
        suggest_anchors(small_cfg(), [{"image_id": 1, "height": 50, "width": 50, "annotations": []}])
    with pytest.raises(ValueError, match="mode"):
        collect_ground_truth(small_cfg(), random_dicts(1, seed=0), 32, mode="val")
