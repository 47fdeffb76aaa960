"""Accuracy and latency of deployed models on a COCO-format validation set (``deploy --verify``)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..structures import Instances

__all__ = ["ValSet", "VerifyResult", "coco_ap", "evaluate", "format_table", "load_valset", "max_box_diff"]


@dataclass
class ValSet:
    """Validation images with their COCO ids; ``to_dataset_id`` maps class index -> category id."""

    json_file: str
    files: list[str]
    image_ids: list[Any]
    to_dataset_id: dict[int, int]


@dataclass
class VerifyResult:
    backend: str
    precision: str
    latency_ms: float  # median batch-1 latency per image (preprocessing included)
    latency_spread_ms: float  # inter-quartile range
    ap: float  # COCO AP@[.5:.95] in percent
    detections: list[Instances] = field(repr=False, default_factory=list)
    delta_ap: float | None = None
    max_box_diff: float | None = None
    status: str = "ok"


def load_valset(images_dir: str, json_file: str, limit: int = 0) -> ValSet:
    """Read the COCO JSON; every listed image must exist under ``images_dir``."""
    from ..data.coco import read_coco_categories
    from ..data.errors import DatasetError

    if not os.path.isfile(json_file):
        raise DatasetError(f"Annotation file '{json_file}' does not exist.")
    if not os.path.isdir(images_dir):
        raise DatasetError(f"Image folder '{images_dir}' does not exist.")
    with open(json_file) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DatasetError(f"'{json_file}' is not valid JSON: {e}.") from None
    _, id_map = read_coco_categories(json_file)
    images = data.get("images") or []
    if limit > 0:
        images = images[:limit]
    files = [os.path.join(images_dir, im["file_name"]) for im in images]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise DatasetError(f"{len(missing)} image(s) listed in '{json_file}' are not in '{images_dir}', e.g. '{missing[0]}'.")
    if not files:
        raise DatasetError(f"'{json_file}' lists no images.")
    return ValSet(json_file, files, [im["id"] for im in images], {k: i for i, k in id_map.items()})


def _to_coco(dets: Sequence[Instances], val: ValSet) -> list[dict[str, Any]]:
    rows = []
    for inst, img_id in zip(dets, val.image_ids):
        b = inst.pred_boxes.tensor.numpy().astype(float)
        for (x0, y0, x1, y1), s, c in zip(b, inst.scores.numpy().tolist(), inst.pred_classes.numpy().tolist()):
            rows.append({"image_id": img_id, "category_id": val.to_dataset_id[int(c)], "bbox": [x0, y0, x1 - x0, y1 - y0], "score": s})
    return rows


def coco_ap(dets: Sequence[Instances], val: ValSet) -> float:
    """COCO box AP@[.5:.95] (percent) of ``dets`` (one ``Instances`` per image of ``val``)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rows = _to_coco(dets, val)
    if not rows:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(val.json_file)
        ev = COCOeval(gt, gt.loadRes(rows), "bbox")
        ev.params.imgIds = list(val.image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]) * 100.0


def evaluate(predictor: Any, val: ValSet, warmup: int = 2) -> VerifyResult:
    """Run ``predictor`` image by image (batch 1) over ``val``: AP and latency."""
    for f in val.files[:warmup]:
        predictor([f])
    dets, times = [], []
    for f in val.files:
        t0 = time.perf_counter()
        dets.extend(predictor([f]))
        times.append((time.perf_counter() - t0) * 1000.0)
    q = np.percentile(times, [25, 75])
    backend = predictor.backend
    return VerifyResult(backend.name, backend.precision, statistics.median(times), float(q[1] - q[0]), coco_ap(dets, val), dets)


def max_box_diff(ref: Sequence[Instances], other: Sequence[Instances], min_score: float = 0.3, min_iou: float = 0.5) -> float:
    """Largest coordinate difference (px) between each reference detection (score >= ``min_score``)
    and the best-overlapping detection of the same class in ``other`` (IoU >= ``min_iou``)."""
    from ..structures import pairwise_iou

    worst = 0.0
    for a, b in zip(ref, other):
        keep = a.scores >= min_score
        ab, ac = a.pred_boxes.tensor[keep], a.pred_classes[keep]
        if len(ab) == 0 or len(b) == 0:
            continue
        bb = b.pred_boxes.tensor
        iou = pairwise_iou(ab, bb)
        iou[ac[:, None] != b.pred_classes[None, :]] = -1
        best, idx = iou.max(dim=1)
        ok = best >= min_iou
        if ok.any():
            worst = max(worst, float((ab[ok] - bb[idx[ok]]).abs().max()))
    return worst


def format_table(results: Sequence[VerifyResult]) -> str:
    """Plain-text table: backend, precision, latency, AP, ΔAP vs PyTorch, max box diff, status."""
    from tabulate import tabulate

    rows = [
        [r.backend, r.precision, f"{r.latency_ms:.1f} ± {r.latency_spread_ms / 2:.1f}", f"{r.ap:.2f}",
         "-" if r.delta_ap is None else f"{r.delta_ap:+.2f}", "-" if r.max_box_diff is None else f"{r.max_box_diff:.3f}", r.status]
        for r in results
    ]
    headers = ["backend", "precision", "latency ms/img (median ± IQR/2)", "AP", "ΔAP vs PyTorch", "max box diff px", "status"]
    return tabulate(rows, headers=headers)
