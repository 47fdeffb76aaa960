"""Recall per box size at a few score thresholds: are small objects found, and at which score?

Definition. At a score threshold ``t`` a ground-truth box is *found* when a detection of its
class with score >= ``t`` matches it at IoU >= 0.5, matched one to one the way COCO's
evaluation matches (pycocotools ``evaluateImg`` at IoU 0.5, area "all", at most ``max_dets``
detections per image and class): per image and class, the detections are visited by
descending score (equal scores keep their input order) and each takes the still unmatched
box it overlaps most, if that IoU is >= 0.5 (between equal IoUs the later box, as pycocotools
does). Crowd boxes (``iscrowd``) are neither counted nor matched: pycocotools lets a
detection take a crowd box only when no other box is left for it, which never changes which
other boxes are found. The recall of a size bin is found boxes / boxes in the bin, pooled
over classes (COCO's AR averages classes instead); -1 for a bin without boxes.

Matching visits detections by descending score, so the boxes found at threshold ``t`` are
exactly those whose detection in one matching of all detections has score >= ``t``: one
matching serves every threshold. The lowest useful threshold is the model's own
``MODEL.RETINANET.SCORE_THRESH_TEST`` (0.05 by default): no detection scores below it.

Size bins, by the annotation's ``area`` (the one COCO's APs use; width x height when the
JSON has none): ``small`` area < 32², ``medium`` 32² <= area < 96², ``large`` area >= 96²
(half-open: pycocotools counts a box of area exactly 32² or 96² in both neighbours), and finer
bins in sqrt(area) pixels between ``edges``: (8, 16, 32) gives ``0-8px``, ``8-16px``,
``16-32px`` and ``over32px``.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "IOU_THRESHOLD",
    "check_recall_settings",
    "coco_box_iou",
    "format_recall_table",
    "found_scores",
    "greedy_match",
    "recall_by_size",
    "size_bins",
]

IOU_THRESHOLD = 0.5
# (name, lower, upper) bounds of sqrt(area) in pixels, lower <= sqrt(area) < upper.
_COCO_BINS = (("small", 0.0, 32.0), ("medium", 32.0, 96.0), ("large", 96.0, math.inf))


def check_recall_settings(
    thresholds: Sequence[float], edges: Sequence[float], keys: tuple[str, str] = ("thresholds", "edges")
) -> None:
    """Raise ``ConfigError`` naming ``keys`` (e.g. the config keys they came from) when the score
    ``thresholds`` are not numbers in [0, 1] or the size ``edges`` are not increasing positive numbers."""
    from ..config import ConfigError

    def numbers(values: Iterable[Any]) -> bool:
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)

    if not numbers(thresholds) or any(not 0.0 <= t <= 1.0 for t in thresholds):
        raise ConfigError(
            f"{keys[0]} must list score thresholds in [0, 1], e.g. [0.05, 0.3, 0.5] ([] turns the recall report off); "
            f"got {list(thresholds)!r}."
        )
    if not numbers(edges) or any(e <= 0 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ConfigError(
            f"{keys[1]} must list increasing positive box sizes in pixels (sqrt of the area), e.g. [8, 16, 32]; got {list(edges)!r}."
        )


def size_bins(edges: Sequence[float] = (8, 16, 32)) -> list[tuple[str, float, float]]:
    """``(name, lower, upper)`` of every bin: ``all``, COCO's small/medium/large, then the bins
    between ``edges``; a box belongs to a bin when ``lower <= sqrt(area) < upper``."""
    bounds = [0.0, *[float(e) for e in edges], math.inf]
    fine = [(f"{lo:g}-{hi:g}px" if math.isfinite(hi) else f"over{lo:g}px", lo, hi) for lo, hi in zip(bounds, bounds[1:])]
    return [("all", 0.0, math.inf), *_COCO_BINS, *(fine if edges else [])]


def coco_box_iou(dets: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU ``[D, G]`` of ``[D, 4]`` and ``[G, 4]`` boxes in COCO ``[x, y, w, h]``, float64, with the
    same arithmetic as pycocotools' ``bbIou`` (so a pair at IoU 0.5 falls on the same side)."""
    d, g = dets[:, None, :], gts[None, :, :]
    w = np.minimum(d[..., 0] + d[..., 2], g[..., 0] + g[..., 2]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 1] + d[..., 3], g[..., 1] + g[..., 3]) - np.maximum(d[..., 1], g[..., 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    union = d[..., 2] * d[..., 3] + g[..., 2] * g[..., 3] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def greedy_match(ious: np.ndarray, threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """``[G]`` index of the detection that matches each box (-1: none), from ``ious`` ``[D, G]``
    with detections in descending score order (see the module docstring)."""
    num_dets, num_gts = ious.shape
    matched = np.full(num_gts, -1, dtype=np.int64)
    free = np.ones(num_gts, dtype=bool)
    for d in range(num_dets):
        if not free.any():
            break
        row = np.where(free, ious[d], -1.0)
        j = num_gts - 1 - int(np.argmax(row[::-1]))  # the last of equal maxima
        if row[j] >= threshold:
            matched[j], free[j] = d, False
    return matched


def _group_gts(annotations: Iterable[Mapping[str, Any]], image_ids: set) -> dict[tuple, list[Mapping[str, Any]]]:
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for a in annotations:
        if a["image_id"] in image_ids and not a.get("iscrowd", 0):
            groups[(a["image_id"], a["category_id"])].append(a)
    return groups


def found_scores(
    annotations: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]], image_ids: Iterable[Any], max_dets: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """``(areas [N], scores [N])`` of the N non-crowd boxes of ``image_ids``: each box's area and
    the score of the detection that matches it (``-inf`` when none does).

    ``annotations``: COCO ground-truth annotations; ``rows``: COCO results rows
    (``image_id, category_id, bbox [x, y, w, h], score``).
    """
    gt_groups = _group_gts(annotations, set(image_ids))
    det_groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        det_groups[(r["image_id"], r["category_id"])].append(r)
    areas, scores = [], []
    for key, gts in gt_groups.items():
        boxes = np.asarray([a["bbox"] for a in gts], dtype=np.float64).reshape(-1, 4)
        areas.append(np.asarray([a.get("area", b[2] * b[3]) for a, b in zip(gts, boxes)], dtype=np.float64))
        found = np.full(len(gts), -np.inf)
        dets = det_groups.get(key, [])
        if dets:
            det_scores = np.asarray([d["score"] for d in dets], dtype=np.float64)
            order = np.argsort(-det_scores, kind="mergesort")[:max_dets]
            det_boxes = np.asarray([dets[i]["bbox"] for i in order], dtype=np.float64).reshape(-1, 4)
            matched = greedy_match(coco_box_iou(det_boxes, boxes))
            hit = matched >= 0
            found[hit] = det_scores[order][matched[hit]]
        scores.append(found)
    if not areas:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(areas), np.concatenate(scores)


def recall_by_size(
    areas: np.ndarray, scores: np.ndarray, thresholds: Sequence[float], edges: Sequence[float] = (8, 16, 32)
) -> dict[str, dict[str, Any]]:
    """``{"recall": {"<t>": {bin: recall}}, "num_gt": {bin: boxes}}`` from :func:`found_scores`
    (``"<t>"`` is the threshold written with ``:g``, e.g. ``"0.3"``; recall -1 for an empty bin)."""
    num_gt: dict[str, int] = {}
    masks = {}
    for name, lo, hi in size_bins(edges):
        masks[name] = (areas >= lo * lo) & (areas < hi * hi)
        num_gt[name] = int(masks[name].sum())
    recall: dict[str, dict[str, float]] = {}
    for t in sorted(thresholds):
        found = scores >= t
        recall[f"{t:g}"] = {name: float(found[m].sum() / num_gt[name]) if num_gt[name] else -1.0 for name, m in masks.items()}
    return {"recall": recall, "num_gt": num_gt}


def format_recall_table(result: Mapping[str, Mapping[str, Any]]) -> str:
    """The result of :func:`recall_by_size` as a table: one row per threshold, one column per bin
    (box count in the header)."""
    from tabulate import tabulate

    counts = result["num_gt"]
    headers = ["score >=", *(f"{name} ({n})" for name, n in counts.items())]
    rows = [[t, *("-" if v < 0 else f"{v:.3f}" for v in by_bin.values())] for t, by_bin in result["recall"].items()]
    return tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True)
