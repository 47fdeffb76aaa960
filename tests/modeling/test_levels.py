"""A stride-4 level (P2): the presets build six levels with the right anchors, P2 anchors take
the small boxes in training, and level lists that cannot work are config errors naming the keys."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torchvision.ops import box_iou

from retinakit.config import ConfigError, get_cfg
from retinakit.modeling import BACKBONE_REGISTRY, Backbone, build_model
from retinakit.modeling.backbone import FPN
from retinakit.structures import Boxes, Instances

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:  # the R10 preset imports projects.ResNet10.resnet10
    sys.path.insert(0, ROOT)
R18_P2 = os.path.join(ROOT, "configs", "small_objects", "retinanet_R18_FPN_P2.yaml")
R10_P2 = os.path.join(ROOT, "configs", "small_objects", "retinanet_R10_FPN_P2_shapes_small.yaml")
LEVELS = ["p2", "p3", "p4", "p5", "p6", "p7"]


def _cfg(path: str, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])
    return cfg


def _reference_anchors(h: int, w: int, stride: int, sizes: list[float], ratios: list[float]) -> torch.Tensor:
    """Pure-python anchors ``[h*w*A, 4]``: location-major, then ratio, then size (centres at ``i * stride``)."""
    out = []
    for i in range(h):
        for j in range(w):
            for r in ratios:
                for s in sizes:
                    aw, ah = s / r**0.5, s * r**0.5
                    cx, cy = j * stride, i * stride
                    out.append([cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("path", [R18_P2, R10_P2], ids=["R18", "R10"])
def test_preset_builds_six_levels_with_p2_anchors(path):
    cfg = _cfg(path)
    model = build_model(cfg).eval()
    shapes = model.backbone.output_shape()
    assert model.head_in_features == LEVELS
    assert [shapes[f].stride for f in LEVELS] == [4, 8, 16, 32, 64, 128]
    images = model.preprocess_image([{"image": torch.zeros(3, 128, 96, dtype=torch.uint8)}])
    with torch.no_grad():
        cls_logits, box_deltas, anchors = model.inference_outputs(images)
    assert [tuple(c.shape[-2:]) for c in cls_logits][:2] == [(32, 24), (16, 12)]
    base = float(cfg.MODEL.ANCHOR_GENERATOR.SIZES[0][0])
    sizes = [base * o for o in cfg.MODEL.ANCHOR_GENERATOR.OCTAVE_SCALES]
    ref = _reference_anchors(32, 24, 4, sizes, list(cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0]))
    torch.testing.assert_close(anchors[0].double(), ref, rtol=0, atol=1e-4)
    assert len(anchors) == 6 and len(box_deltas) == 6


def test_p2_anchors_take_the_small_boxes():
    """A 6 px box is foreground only on P2 anchors, among them its best anchor (reference IoU)."""
    model = build_model(_cfg(R10_P2)).eval()
    images = model.preprocess_image([{"image": torch.zeros(3, 64, 64, dtype=torch.uint8)}])
    with torch.no_grad():
        _, _, anchors = model.inference_outputs(images)
    gt = torch.tensor([[41.0, 21.0, 47.0, 27.0]])
    labels, _ = model.label_anchors(anchors, [Instances((64, 64), gt_boxes=Boxes(gt), gt_classes=torch.tensor([2]))])
    n_p2 = anchors[0].shape[0]
    fg = (labels[0] == 2).nonzero().flatten()
    assert len(fg) > 0 and bool((fg < n_p2).all()), "a 6 px box must be matched on P2 only"
    best = box_iou(gt.double(), torch.cat(anchors).double())[0].argmax()
    assert int(best) in fg.tolist()


def test_p2_without_res2_in_the_fpn_names_the_keys():
    with pytest.raises(ConfigError) as e:
        build_model(_cfg(R18_P2, "MODEL.FPN.IN_FEATURES", "['res3', 'res4', 'res5']"))
    msg = str(e.value)
    assert "MODEL.RETINANET.IN_FEATURES" in msg and "['p2']" in msg and "stride 4" in msg
    assert "add 'res2' to MODEL.FPN.IN_FEATURES" in msg and "\n" not in msg


def test_fpn_input_the_resnet_does_not_output_names_the_keys():
    with pytest.raises(ConfigError) as e:
        build_model(_cfg(R18_P2, "MODEL.RESNETS.OUT_FEATURES", "['res3', 'res4', 'res5']"))
    msg = str(e.value)
    assert "MODEL.FPN.IN_FEATURES names ['res2']" in msg and "MODEL.RESNETS.OUT_FEATURES" in msg
    with pytest.raises(ConfigError, match=r"MODEL\.RESNET10\.OUT_FEATURES"):
        build_model(_cfg(R10_P2, "MODEL.RESNET10.OUT_FEATURES", "['res3', 'res4', 'res5']"))


class _Stride8Net(Backbone):
    """A bottom-up network without a stride-4 output: c3, c4, c5 of strides 8, 16, 32."""

    out_features_key = "MODEL.TEST_STRIDE8.OUT_FEATURES"

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 8, stride=8)
        self.c4 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.c5 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self._out_features = ["c3", "c4", "c5"]
        self._out_feature_channels = dict.fromkeys(self._out_features, 8)
        self._out_feature_strides = {"c3": 8, "c4": 16, "c5": 32}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        c3 = self.stem(x)
        c4 = self.c4(c3)
        return {"c3": c3, "c4": c4, "c5": self.c5(c4)}


if "build_test_stride8_backbone" not in BACKBONE_REGISTRY:

    @BACKBONE_REGISTRY.register()
    def build_test_stride8_backbone(cfg, input_shape=None):
        return _Stride8Net()


def test_backbone_without_stride4_output_says_p2_is_unavailable():
    cfg = _cfg(R18_P2, "MODEL.BACKBONE.NAME", "build_retinanet_fpn_backbone", "MODEL.FPN.BOTTOM_UP", "build_test_stride8_backbone",
               "MODEL.FPN.IN_FEATURES", "['c3', 'c4', 'c5']")
    with pytest.raises(ConfigError) as e:
        build_model(cfg)
    msg = str(e.value)
    assert "p2 (stride 4)" in msg and "none of stride 4" in msg and "MODEL.TEST_STRIDE8.OUT_FEATURES" in msg
    assert "remove ['p2'] from MODEL.RETINANET.IN_FEATURES" in msg
    # The same network under the FPN with P3-P7 builds.
    cfg.merge_from_list(["MODEL.RETINANET.IN_FEATURES", "['p3', 'p4', 'p5', 'p6', 'p7']",
                         "MODEL.ANCHOR_GENERATOR.SIZES", "[[32], [64], [128], [256], [512]]"])
    assert isinstance(build_model(cfg).backbone, FPN)


def test_anchor_sizes_must_give_one_list_per_level():
    with pytest.raises(ConfigError) as e:
        build_model(_cfg(R18_P2, "MODEL.ANCHOR_GENERATOR.SIZES", "[[32], [64], [128], [256], [512]]"))
    msg = str(e.value)
    assert "MODEL.ANCHOR_GENERATOR.SIZES has 5 lists" in msg and "MODEL.RETINANET.IN_FEATURES has 6 levels" in msg
    assert "[[16], [32], [64], [128], [256], [512]]" in msg
    with pytest.raises(ConfigError, match=r"ASPECT_RATIOS has 2 lists.*6 levels"):
        build_model(_cfg(R18_P2, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[1.0], [0.5, 2.0]]"))
    # A single list applies to every level.
    model = build_model(_cfg(R18_P2, "MODEL.ANCHOR_GENERATOR.SIZES", "[[16]]"))
    assert model.anchor_generator.num_anchors == [9] * 6


def test_train_net_reports_the_level_error_before_training(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", R10_P2,
                        "MODEL.ANCHOR_GENERATOR.SIZES", "[[32], [64], [128], [256], [512]]", "MODEL.DEVICE", "cpu",
                        "OUTPUT_DIR", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "MODEL.ANCHOR_GENERATOR.SIZES" in r.stderr and "MODEL.RETINANET.IN_FEATURES" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout and "Starting training" not in r.stdout
