"""A fixed random COCO ground truth and detections (non-consecutive category ids)."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from retinakit.structures import Boxes, Instances

CAT_IDS = [3, 7, 11, 20]
NAMES = ["circle", "square", "triangle", "star"]


def make_gt_and_dets(seed: int = 0, n_images: int = 30) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(n_images):
        img_id = 100 + i * 3
        w, h = int(rng.integers(200, 640)), int(rng.integers(200, 640))
        images.append({"id": img_id, "width": w, "height": h, "file_name": f"{img_id}.png"})
        for _ in range(int(rng.integers(0, 6))):
            bw, bh = float(rng.uniform(4, w / 2)), float(rng.uniform(4, h / 2))
            x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            cat = int(rng.choice(CAT_IDS))
            crowd = int(rng.random() < 0.05)
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat, "bbox": [x, y, bw, bh],
                         "area": bw * bh, "iscrowd": crowd})
            if rng.random() < 0.85:  # a noisy detection of it
                j = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
                c = cat if rng.random() < 0.9 else int(rng.choice(CAT_IDS))
                dets.append({"image_id": img_id, "category_id": c, "bbox": [x + j[0], y + j[1], max(bw + j[2], 1), max(bh + j[3], 1)],
                             "score": float(rng.uniform(0.3, 1.0))})
        for _ in range(int(rng.integers(0, 4))):  # false positives
            bw, bh = float(rng.uniform(4, 80)), float(rng.uniform(4, 80))
            dets.append({"image_id": img_id, "category_id": int(rng.choice(CAT_IDS)),
                         "bbox": [float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh)), bw, bh],
                         "score": float(rng.uniform(0.05, 0.7))})
    gt = {"images": images, "annotations": anns, "categories": [{"id": c, "name": n} for c, n in zip(CAT_IDS, NAMES)]}
    return gt, dets


def write_gt(path: str, gt: dict[str, Any]) -> str:
    with open(path, "w") as f:
        json.dump(gt, f)
    return path


def model_outputs(gt: dict[str, Any], dets: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) as a retinakit model would produce them (contiguous class ids)."""
    to_contig = {c: i for i, c in enumerate(CAT_IDS)}
    inputs, outputs = [], []
    for img in gt["images"]:
        rows = [d for d in dets if d["image_id"] == img["id"]]
        inst = Instances((img["height"], img["width"]))
        xywh = torch.tensor([r["bbox"] for r in rows], dtype=torch.float32).reshape(-1, 4)
        inst.pred_boxes = Boxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1))
        inst.scores = torch.tensor([r["score"] for r in rows], dtype=torch.float32)
        inst.pred_classes = torch.tensor([to_contig[r["category_id"]] for r in rows], dtype=torch.int64)
        inputs.append({"image_id": img["id"], "height": img["height"], "width": img["width"]})
        outputs.append({"instances": inst})
    return inputs, outputs


def evaluate_in_process(gt_file: str, out_dir: str, result_file: str) -> None:
    """DDP worker: each rank processes its share of the images; rank 0 saves the results."""
    from retinakit.evaluation import COCOEvaluator
    from retinakit.utils import comm

    with open(gt_file) as f:
        gt = json.load(f)
    _, dets = make_gt_and_dets()
    inputs, outputs = model_outputs(gt, dets)
    r, w = comm.get_rank(), comm.get_world_size()
    ev = COCOEvaluator(json_file=gt_file, output_dir=out_dir)
    ev.reset()
    ev.process(inputs[r::w], outputs[r::w])
    res = ev.evaluate()
    if comm.is_main_process():
        with open(result_file, "w") as f:
            json.dump(res, f)
    else:
        assert res == {}


def make_hard_gt_and_dets(seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The fixture plus the cases where COCO implementations could part ways.

    Tied scores (rounded to one decimal), 150 detections on one image (more than maxDets),
    ground-truth boxes exactly at the small/medium (32²) and medium/large (96²) area limits,
    a crowd box, and detections on an image without ground truth.
    """
    gt, dets = make_gt_and_dets(seed=seed, n_images=25)
    rng = np.random.default_rng(seed + 1000)
    for d in dets:
        if rng.random() < 0.4:
            d["score"] = round(d["score"], 1)
    first = gt["images"][0]["id"]
    for _ in range(150):
        xy = rng.uniform(0, 100, 2).tolist()
        dets.append({"image_id": first, "category_id": CAT_IDS[0], "bbox": [*xy, 20.0, 20.0], "score": 0.5})
    limits = [(CAT_IDS[0], [10.0, 10.0, 32.0, 32.0], 0), (CAT_IDS[1], [50.0, 10.0, 96.0, 96.0], 0),
              (CAT_IDS[2], [5.0, 120.0, 60.0, 60.0], 1)]
    for cat, box, crowd in limits:
        gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": first, "category_id": cat,
                                  "bbox": box, "area": box[2] * box[3], "iscrowd": crowd})
    empty = {"id": 9001, "width": 300, "height": 300, "file_name": "9001.png"}
    gt["images"].append(empty)
    dets += [{"image_id": 9001, "category_id": c, "bbox": [20.0, 20.0, 50.0, 40.0], "score": 0.6} for c in CAT_IDS]
    return gt, dets
