"""The small-objects P2 preset through the real trainer and evaluation: a few iterations of
DefaultTrainer on a tiny small-object split of the built-in shapes generator, gradients reach
the P2-only layers, then COCO evaluation of the trained model on a held-out split."""
from __future__ import annotations

import json
import math
import os
import sys

import pytest
import torch

from retinakit.config import get_cfg
from retinakit.data.datasets import SPECS, ShapesSpec, generate_shapes
from retinakit.engine import DefaultTrainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # the preset imports projects.ResNet10.resnet10
    sys.path.insert(0, REPO)
P2_CONFIG = os.path.join(REPO, "configs", "small_objects", "retinanet_R10_FPN_P2_shapes_small.yaml")


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _small_objects(name: str, root: str, num_images: int, seed: int) -> str:
    """A split like shapes_small (objects of 4-24 px at 256 px), at 128 px to keep the test short."""
    base = SPECS["shapes_small_train"]
    spec = ShapesSpec(num_images=num_images, image_size=128, min_object=base.min_object, max_object_frac=24 / 128,
                      max_objects=base.max_objects, seed=seed)
    return generate_shapes(name, spec, root=root)


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> tuple[str, str]:
    root = str(tmp_path_factory.mktemp("shapes_small_tiny"))
    return _small_objects("p2_train", root, 8, 31), _small_objects("p2_val", root, 4, 32)


def test_p2_preset_trains_and_evaluates(tmp_path, splits):
    train, val = splits
    boxes = [a["bbox"] for a in _read_json(os.path.join(train, "annotations.json"))["annotations"]]
    assert boxes and max(max(b[2], b[3]) for b in boxes) <= 24.5
    cfg = get_cfg()
    cfg.merge_from_file(P2_CONFIG)
    cfg.merge_from_list([
        "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
        "DATASETS.TRAIN_JSON", os.path.join(train, "annotations.json"), "DATASETS.TRAIN_IMAGES", os.path.join(train, "images"),
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
        "MODEL.DEVICE", "cpu", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
        "MODEL.RETINANET.TOPK_CANDIDATES_TEST", "100", "SEED", "5",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "0",
        "SOLVER.LOG_PERIOD", "1", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path),
    ])
    trainer = DefaultTrainer(cfg)
    model = trainer.model
    assert model.head_in_features[0] == "p2"
    # The lateral conv of res2 feeds P2 only: it changes only if P2's losses reach it.
    p2_lateral = model.backbone.lateral_convs[0].conv.weight.detach().clone()
    trainer.train()
    assert trainer.iter == cfg.SOLVER.MAX_ITER
    assert not torch.equal(p2_lateral, model.backbone.lateral_convs[0].conv.weight.detach())
    with open(os.path.join(str(tmp_path), "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    losses = [r["total_loss"] for r in rows if "total_loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)

    cfg.merge_from_list(["DATASETS.TEST_JSON", os.path.join(val, "annotations.json"), "DATASETS.TEST_IMAGES", os.path.join(val, "images")])
    results = DefaultTrainer.test(cfg, model)
    ap = results["bbox"]["AP"]
    assert math.isfinite(ap) and 0.0 <= ap <= 100.0
    detections = _read_json(os.path.join(str(tmp_path), "inference", "cfg_test", "coco_instances_results.json"))
    assert detections, "the evaluated P2 model returned no detections (threshold 0)"
    assert {d["image_id"] for d in detections} <= {i["id"] for i in _read_json(os.path.join(val, "annotations.json"))["images"]}
