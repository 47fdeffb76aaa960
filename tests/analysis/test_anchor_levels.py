"""Pyramid-level advice (retinakit.analysis.anchors.levels) on generated COCO datasets, checked
against a brute-force IoU count over anchors laid out independently in the test, an analytic
FLOP count of the head, and models built from the printed overrides."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from retinakit.analysis.anchors import advise_levels, anchor_coverage
from retinakit.config import ConfigError, get_cfg
from retinakit.data import load_coco_json
from retinakit.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec, build_model

SIZE = 128  # tiny square images: no resize, padded size 128


def tiny_cfg(*overrides):
    """R-18 FPN with narrow channels, P3-P7, images kept at 128 px."""
    cfg = get_cfg()
    cfg.merge_from_list([
        "MODEL.RESNETS.DEPTH", 18, "MODEL.FPN.OUT_CHANNELS", 16, "MODEL.BACKBONE.FREEZE_AT", 0,
        "MODEL.RETINANET.NUM_CLASSES", 2, "MODEL.RETINANET.NUM_CONVS", 2,
        "INPUT.MIN_SIZE_TRAIN", f"({SIZE},)", "INPUT.MAX_SIZE_TRAIN", SIZE, "INPUT.MIN_SIZE_TEST", SIZE, "INPUT.MAX_SIZE_TEST", SIZE,
        *overrides,
    ])
    return cfg


def write_coco(path, n_images: int, lo: float, hi: float, seed: int) -> list[dict]:
    """A COCO JSON of ``n_images`` 128x128 images with 6 boxes each, sides log-uniform in [lo, hi]
    (aspect ratio within 0.7-1.4); returns the dataset dicts the library loads from it."""
    g = torch.Generator().manual_seed(seed)
    images, annos = [], []
    for i in range(n_images):
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": SIZE, "width": SIZE})
        for _ in range(6):
            side = math.exp(float(torch.empty(()).uniform_(math.log(lo), math.log(hi), generator=g)))
            r = math.exp(float(torch.empty(()).uniform_(math.log(0.7), math.log(1.4), generator=g)))
            w, h = side / math.sqrt(r), side * math.sqrt(r)
            x, y = float(torch.rand((), generator=g)) * (SIZE - w), float(torch.rand((), generator=g)) * (SIZE - h)
            annos.append({"id": len(annos) + 1, "image_id": i + 1, "category_id": 1, "bbox": [x, y, w, h], "iscrowd": 0})
    path.write_text(json.dumps({"images": images, "annotations": annos, "categories": [{"id": 1, "name": "obj"}]}))
    return load_coco_json(str(path), str(path.parent), check_image_files=False)


@pytest.fixture(scope="module")
def small_objects(tmp_path_factory):
    """Boxes of 4-24 px."""
    return write_coco(tmp_path_factory.mktemp("levels") / "small.json", 30, 4.0, 24.0, seed=0)


def reference_anchors(strides, sizes, octaves, ratios) -> torch.Tensor:
    """Every anchor of a 128x128 input, laid out here from the definition: centres at
    ``(i, j) * stride`` (offset 0) on a ``ceil(128 / stride)`` grid; per centre every size x octave
    scale x ratio (h/w) with area ``(size * scale)^2``."""
    out = []
    for s, level_sizes in zip(strides, sizes):
        n = math.ceil(SIZE / s)
        shapes = [(a * o / math.sqrt(r), a * o * math.sqrt(r)) for a in level_sizes for o in octaves for r in ratios]
        for iy in range(n):
            for ix in range(n):
                cx, cy = ix * s, iy * s
                out += [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2] for w, h in shapes]
    return torch.tensor(out, dtype=torch.float64)


def brute_force_coverage(dicts, anchors: torch.Tensor) -> tuple[float, float, int]:
    """(coverage, coverage of boxes < 32 px, boxes within 1e-6 of the 0.5 threshold) over every anchor."""
    boxes = torch.tensor([a["bbox"] for d in dicts for a in d["annotations"]], dtype=torch.float64)
    best = box_iou(boxes, anchors).max(1).values
    size = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    covered = best >= 0.5
    return float(covered.double().mean()), float(covered[size < 32].double().mean()), int(((best - 0.5).abs() < 1e-6).sum())


def option(advice, name):
    return next(o for o in advice.options if o.name == name)


def check_against_reference(cfg, dicts, opt) -> None:
    """The option's coverage (overall and small) equals the brute-force count over independent anchors."""
    gen = build_model(cfg).anchor_generator
    ref = reference_anchors(opt.strides, opt.sizes, list(cfg.MODEL.ANCHOR_GENERATOR.OCTAVE_SCALES),
                            list(cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0]))
    cov, small, ties = brute_force_coverage(dicts, ref)
    n = opt.report.num_boxes
    assert opt.report.coverage == pytest.approx(cov, abs=(ties + 0.01) / n)  # float32 mean; less than one box apart
    assert opt.small_coverage() == pytest.approx(small, abs=(ties + 0.01) / n)  # float32 mean; less than one box apart
    assert opt.anchors_per_image == len(ref) == sum(
        math.ceil(SIZE / s) ** 2 * a for s, a in zip(opt.strides, gen.num_anchors))


def analytic_head_gflops(strides, channels: int, num_convs: int, anchors: int, classes: int) -> float:
    """2 FLOPs per multiply-add of the head's 3x3 convs: two towers of ``num_convs`` C->C convs,
    then C->A*K and C->A*4, on every level (biases not counted)."""
    macs_per_location = 9 * channels * (2 * num_convs * channels + anchors * classes + anchors * 4)
    return sum(2 * macs_per_location * math.ceil(SIZE / s) ** 2 for s in strides) / 1e9


def test_small_objects_get_p2_with_a_verified_gain(small_objects):
    cfg = tiny_cfg("MODEL.ANCHOR_GENERATOR.SIZES", "[[16],[32],[64],[128],[256]]")
    advice = advise_levels(cfg, small_objects, max_images=None)
    configured, rec = advice.options[0], advice.recommended
    assert advice.p2_note == "" and 4 in rec.strides and rec.head_in_features[0] == "p2"
    assert rec.small_coverage() >= configured.small_coverage() + 0.2
    assert "p7" not in rec.head_in_features  # no box is best matched on the top level: P2 comes without it
    # the printed overrides build a model whose anchor generator has the recommended levels and sizes
    tuned = cfg.clone()
    tuned.merge_from_list(advice.overrides())
    model = build_model(tuned)
    assert model.head_in_features == rec.head_in_features
    assert [s.stride for s in (model.backbone.output_shape()[f] for f in rec.head_in_features)] == rec.strides
    assert model.anchor_generator.strides == rec.strides and model.anchor_generator.sizes == rec.sizes
    assert tuned.MODEL.RESNETS.OUT_FEATURES[0] == "res2" and tuned.MODEL.FPN.IN_FEATURES[0] == "res2"
    # the gain, recounted over every anchor of each option by brute force
    check_against_reference(cfg, small_objects, configured)
    check_against_reference(tuned, small_objects, rec)
    assert anchor_coverage(tuned, small_objects, method="bruteforce").coverage == pytest.approx(rec.report.coverage)
    # cost: the head's FLOPs counted on the built head equal the analytic count of its convs
    for o in (configured, rec):
        assert o.head_gflops == pytest.approx(analytic_head_gflops(o.strides, 16, 2, 9, 2), rel=1e-9)
    assert rec.extra_head_gflops == pytest.approx(rec.head_gflops - configured.head_gflops)
    assert rec.extra_model_gflops > 0 and "per GFLOP" in advice.reason


def test_yaml_and_json_of_the_advice(small_objects, tmp_path):
    cfg = tiny_cfg("MODEL.ANCHOR_GENERATOR.SIZES", "[[16],[32],[64],[128],[256]]")
    advice = advise_levels(cfg, small_objects, max_images=None)
    yaml_file = tmp_path / "levels.yaml"
    yaml_file.write_text(advice.yaml() + "\n")
    tuned = cfg.clone()
    tuned.merge_from_file(str(yaml_file))
    gen = build_model(tuned).anchor_generator
    assert gen.strides == advice.recommended.strides and gen.sizes == advice.recommended.sizes
    data = json.loads(json.dumps(advice.to_json()))
    assert {"test_size", "rule", "p2_available", "p2_note", "options", "recommended", "reason", "overrides", "yaml"} <= set(data)
    assert data["test_size"] == [SIZE, SIZE] and data["p2_available"] and data["rule"]["min_gain"] == 0.05
    names = [o["name"] for o in data["options"]]
    assert names[0] == "configured" and data["recommended"] in names and "add p2" in names
    for o in data["options"]:
        assert {"head_in_features", "strides", "sizes", "coverage", "small_coverage", "buckets", "anchors_per_image",
                "head_gflops", "extra_head_gflops", "model_gflops", "extra_model_gflops", "best_level_boxes",
                "lost_boxes", "overrides"} <= set(o)
        assert {b["bucket"] for b in o["buckets"]} >= {"all", "small", "[0, 8)", "[8, 16)", "[16, 24)"}


def test_unused_top_levels_are_dropped_when_coverage_is_unchanged(small_objects):
    # boxes of 4-24 px only: P6/P7 (anchors of 128 px and more) match no box. With finer levels
    # ruled out (min_gain above 1), the advice is the largest drop that keeps every covered box.
    cfg = tiny_cfg("MODEL.ANCHOR_GENERATOR.SIZES", "[[16],[32],[64],[128],[256]]")
    advice = advise_levels(cfg, small_objects, max_images=None, min_gain=1.01)
    configured, rec = advice.options[0], advice.recommended
    assert 4 not in rec.strides and rec.head_in_features == configured.head_in_features[:len(rec.head_in_features)]
    assert "p7" not in rec.head_in_features and configured.best_level_boxes["p7"] == 0
    assert rec.lost_boxes == 0 and rec.extra_model_gflops < 0 and rec.anchors_per_image < configured.anchors_per_image
    assert "cover no box that the others miss" in advice.reason
    tuned = cfg.clone()
    tuned.merge_from_list(advice.overrides())
    check_against_reference(tuned, small_objects, rec)
    assert rec.report.coverage == configured.report.coverage
    # drops are measured until the first one that loses boxes, which is never recommended
    drops = [o for o in advice.options if o.name.startswith("configured, drop")]
    assert drops and all(o.lost_boxes == 0 for o in drops[:-1])
    assert all(o is not rec for o in advice.options if o.lost_boxes)


def test_large_boxes_get_no_p2(tmp_path):
    dicts = write_coco(tmp_path / "large.json", 20, 40.0, 110.0, seed=2)
    advice = advise_levels(tiny_cfg(), dicts, max_images=None)
    assert any(4 in o.strides for o in advice.options)  # P2 was measured ...
    assert 4 not in advice.recommended.strides  # ... and not recommended
    assert "no small boxes" in advice.reason


class _Stride8Net(Backbone):
    """A bottom-up network whose finest output has stride 8 (``c3``, ``c4``, ``c5``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 8, stride=8)
        self.down = nn.ModuleList([nn.Conv2d(8, 8, 3, stride=2, padding=1) for _ in range(2)])
        self._out_features = ["c3", "c4", "c5"]
        self._out_feature_channels = dict.fromkeys(self._out_features, 8)
        self._out_feature_strides = {"c3": 8, "c4": 16, "c5": 32}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        c3 = self.stem(x)
        c4 = self.down[0](c3)
        return {"c3": c3, "c4": c4, "c5": self.down[1](c4)}


def build_stride8_bottom_up(cfg, input_shape: ShapeSpec | None = None) -> _Stride8Net:
    return _Stride8Net()


def test_backbone_without_stride_4_is_named(small_objects):
    BACKBONE_REGISTRY.register(build_stride8_bottom_up, override=True)
    cfg = tiny_cfg("MODEL.BACKBONE.NAME", "build_retinanet_fpn_backbone", "MODEL.FPN.BOTTOM_UP", "build_stride8_bottom_up",
                   "MODEL.FPN.IN_FEATURES", '["c3","c4","c5"]', "MODEL.ANCHOR_GENERATOR.SIZES", "[[16],[32],[64],[128],[256]]")
    advice = advise_levels(cfg, small_objects, max_images=None)
    assert "build_stride8_bottom_up" in advice.p2_note and "no stride-4 output" in advice.p2_note
    assert "c3: 8" in advice.p2_note
    assert all(4 not in o.strides for o in advice.options)
    assert advice.to_json()["p2_available"] is False


class _PyramidNet(_Stride8Net):
    """A backbone that is its own pyramid (``p3``, ``p4``, ``p5``), not an FPN over a bottom-up network."""

    def __init__(self) -> None:
        super().__init__()
        self._out_features = ["p3", "p4", "p5"]
        self._out_feature_channels = dict.fromkeys(self._out_features, 8)
        self._out_feature_strides = {"p3": 8, "p4": 16, "p5": 32}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self._out_features, super().forward(x).values()))

    @property
    def size_divisibility(self) -> int:
        return 32


def build_pyramid_backbone(cfg, input_shape: ShapeSpec | None = None) -> _PyramidNet:
    return _PyramidNet()


def test_backbone_that_is_not_an_fpn_gets_drops_only(small_objects):
    BACKBONE_REGISTRY.register(build_pyramid_backbone, override=True)
    cfg = tiny_cfg("MODEL.BACKBONE.NAME", "build_pyramid_backbone", "MODEL.RETINANET.IN_FEATURES", '["p3","p4","p5"]',
                   "MODEL.ANCHOR_GENERATOR.SIZES", "[[16],[32],[64]]")
    advice = advise_levels(cfg, small_objects, max_images=None)
    assert "'build_pyramid_backbone' is not an FPN" in advice.p2_note
    assert [o.name for o in advice.options] == ["configured", "configured, drop p5"]
    check_against_reference(cfg, small_objects, advice.options[0])


@pytest.mark.parametrize("backbone", ["resnet10", "mobilenet_v3"])
def test_p2_from_other_registered_backbones(small_objects, backbone):
    if backbone == "resnet10":
        over = ["CUSTOM_IMPORTS", '["projects.ResNet10.resnet10"]', "MODEL.BACKBONE.NAME", "build_retinanet_fpn_backbone",
                "MODEL.FPN.BOTTOM_UP", "build_resnet10_backbone", "MODEL.RESNET10.STAGE_CHANNELS", "[8,16,32,64]",
                "MODEL.RESNET10.STEM_CHANNELS", 8]
        key = "MODEL.RESNET10.OUT_FEATURES"
    else:
        if "build_retinanet_mobilenet_v3_fpn_backbone" not in BACKBONE_REGISTRY:
            pytest.skip("no MobileNetV3 backbone registered in this checkout")
        over = ["MODEL.BACKBONE.NAME", "build_retinanet_mobilenet_v3_fpn_backbone"]
        key = "MODEL.MOBILENETV3.OUT_FEATURES"
    cfg = tiny_cfg(*over, "MODEL.ANCHOR_GENERATOR.SIZES", "[[16],[32],[64],[128],[256]]")
    advice = advise_levels(cfg, small_objects, max_images=None)
    assert advice.p2_note == ""
    p2 = option(advice, "add p2")
    assert p2.strides[0] == 4 and p2.overrides[key][0] == p2.overrides["MODEL.FPN.IN_FEATURES"][0] == "res2"
    tuned = cfg.clone()
    tuned.merge_from_list([x for k, v in p2.overrides.items() for x in (k, json.dumps(v))])
    assert build_model(tuned).anchor_generator.strides == p2.strides
    check_against_reference(tuned, small_objects, p2)


def test_level_list_not_matching_the_sizes_is_a_config_error(small_objects):
    cfg = tiny_cfg("MODEL.RETINANET.IN_FEATURES", '["p3","p4","p5","p6"]')  # SIZES keeps 5 lists
    for call in (lambda: advise_levels(cfg, small_objects), lambda: anchor_coverage(cfg, small_objects)):
        with pytest.raises(ConfigError, match=r"MODEL\.ANCHOR_GENERATOR\.SIZES has 5 .*MODEL\.RETINANET\.IN_FEATURES has 4"):
            call()
