"""COCO box evaluation on pycocotools (or faster-coco-eval when asked and installed).

Metrics are COCO's: AP (IoU .50:.95), AP50, AP75, APs, APm, APl and per-class AP, as
fractions in [0, 1] exactly as pycocotools reports them (-1 where a metric has no ground
truth, e.g. APs without small objects). Detections are written to
``OUTPUT_DIR/coco_instances_results.json`` in the COCO results format with the dataset's
ORIGINAL category ids, so running pycocotools on that file gives the same numbers.

The six summary numbers are computed from ``COCOeval.eval["precision"]`` by
:func:`summary_metrics` (pycocotools' own arithmetic) at the largest ``maxDets`` for every
metric: pycocotools' ``summarize`` computes AP at a hard-coded 100 detections and reports -1
when ``max_dets_per_image`` is not 100. With faster-coco-eval the precision arrays equal
pycocotools' except that its C++ ``accumulate`` divides ``tp / (tp + fp)`` without
pycocotools' ``np.spacing(1)`` in the denominator: where ``tp + fp == 1`` the precision is
``1.0`` instead of ``1 - 2**-52``. The metrics may therefore differ in the last bit
(at most ~2.3e-16), never more (tested).

Besides COCO's metrics, the results hold recall per box size at a few score thresholds
(``recall`` and ``num_gt``, see :mod:`retinakit.evaluation.recall`), so a user sees whether
small objects are found only at low scores and which score threshold to deploy with.
"""
from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..utils import comm
from .evaluator import DatasetEvaluator
from .recall import check_recall_settings, format_recall_table, found_scores, recall_by_size

__all__ = ["COCOEvaluator", "dataset_dicts_to_coco", "instances_to_coco_json", "summary_metrics"]

logger = logging.getLogger(__name__)

METRIC_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
# (IoU threshold or None for .50:.95, area range label) of each summary metric.
_METRIC_SPECS = {
    "AP": (None, "all"),
    "AP50": (0.5, "all"),
    "AP75": (0.75, "all"),
    "APs": (None, "small"),
    "APm": (None, "medium"),
    "APl": (None, "large"),
}


def _mean_precision(ev: Any, iou: float | None, area: str) -> float:
    """Mean of the valid (> -1) precisions at ``iou`` (all IoUs if None), ``area``, max dets.

    The same numpy operations, in the same order, as pycocotools' ``summarize`` (so the
    result is bitwise the same), but always at ``params.maxDets[-1]``.
    """
    p = ev.params
    s = ev.eval["precision"]  # [T IoUs, R recalls, K classes, A areas, M maxDets]
    if iou is not None:
        s = s[np.where(np.isclose(p.iouThrs, iou))[0]]
    s = s[:, :, :, [list(p.areaRngLbl).index(area)], [len(p.maxDets) - 1]]
    valid = s[s > -1]
    return float(np.mean(valid)) if len(valid) else -1.0


def summary_metrics(ev: Any) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl of an accumulated ``COCOeval`` (pycocotools or faster-coco-eval)."""
    return {name: _mean_precision(ev, iou, area) for name, (iou, area) in _METRIC_SPECS.items()}


def instances_to_coco_json(instances: Any, image_id: Any, to_dataset_id: dict[int, int] | None) -> list[dict[str, Any]]:
    """Rows ``{image_id, category_id, bbox [x, y, w, h], score}`` of one image's detections.

    ``instances``: Instances with ``pred_boxes`` (Boxes, ``[N, 4]`` xyxy), ``scores`` ``[N]``,
    ``pred_classes`` ``[N]`` (contiguous ids, mapped back with ``to_dataset_id``).
    """
    n = len(instances)
    if n == 0:
        return []
    boxes = instances.pred_boxes.tensor.detach().float().cpu().clone()
    boxes[:, 2:] -= boxes[:, :2]
    scores = instances.scores.detach().float().cpu().tolist()
    classes = instances.pred_classes.detach().cpu().tolist()
    rows = []
    for box, score, cls in zip(boxes.tolist(), scores, classes):
        cat = to_dataset_id[int(cls)] if to_dataset_id is not None else int(cls)
        rows.append({"image_id": image_id, "category_id": cat, "bbox": box, "score": float(score)})
    return rows


def dataset_dicts_to_coco(dicts: list[dict[str, Any]], class_names: list[str], to_dataset_id: dict[int, int]) -> dict[str, Any]:
    """A COCO ground-truth dict from dataset dicts (``bbox`` absolute xyxy, contiguous ``category_id``)."""
    images, anns = [], []
    for d in dicts:
        images.append({"id": d["image_id"], "width": d["width"], "height": d["height"], "file_name": d.get("file_name", "")})
        for a in d.get("annotations", []):
            x0, y0, x1, y1 = [float(v) for v in a["bbox"]]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": d["image_id"],
                    "category_id": to_dataset_id[int(a["category_id"])],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float(a.get("area", (x1 - x0) * (y1 - y0))),
                    "iscrowd": int(a.get("iscrowd", 0)),
                }
            )
    cats = [{"id": to_dataset_id[i], "name": n} for i, n in enumerate(class_names)]
    return {"images": images, "annotations": anns, "categories": cats}


def _coco_api(use_fast_impl: bool) -> tuple:
    """(COCO, COCOeval) classes: faster_coco_eval's when asked for and installed."""
    if use_fast_impl:
        try:
            from faster_coco_eval import COCO, COCOeval_faster

            return COCO, COCOeval_faster
        except ImportError:
            logger.warning("faster-coco-eval is not installed; using pycocotools.")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


class COCOEvaluator(DatasetEvaluator):
    """Evaluate boxes with COCO AP.

    Args:
        dataset_name: a registered dataset; its metadata's ``json_file`` is the ground truth
            (without one, the dataset dicts are converted).
        output_dir: where ``coco_instances_results.json`` is written ('' = not written).
        distributed: gather detections of all processes on the main one.
        json_file: ground-truth COCO JSON (instead of ``dataset_name``).
        contiguous_id_to_dataset_id: maps predicted class ids to the JSON's category ids
            (default: from the metadata, else the sorted category ids of the JSON).
        max_dets_per_image: COCOeval's maxDets (the last of [1, 10, max]); every summary
            metric and the per-class AP are taken at this many detections per image.
        use_fast_impl: use faster-coco-eval (C++ evaluate/accumulate) if installed, else
            pycocotools with a warning; the numbers equal pycocotools' up to the last bit
            (see the module docstring).
        recall_score_thresholds: score thresholds of the recall-per-size report (results
            ``recall/<t>/<bin>``; empty: no report). See :mod:`retinakit.evaluation.recall`.
        recall_size_edges: sqrt(area) edges in pixels of the report's finer size bins.
    """

    def __init__(
        self,
        dataset_name: str | None = None,
        output_dir: str = "",
        *,
        distributed: bool = True,
        json_file: str | None = None,
        contiguous_id_to_dataset_id: dict[int, int] | None = None,
        max_dets_per_image: int = 100,
        use_fast_impl: bool = False,
        recall_score_thresholds: Sequence[float] = (0.05, 0.3, 0.5),
        recall_size_edges: Sequence[float] = (8, 16, 32),
    ) -> None:
        check_recall_settings(recall_score_thresholds, recall_size_edges, ("recall_score_thresholds", "recall_size_edges"))
        self._recall_thresholds = [float(t) for t in recall_score_thresholds]
        self._recall_edges = [float(e) for e in recall_size_edges]
        self._distributed = distributed
        self._output_dir = output_dir
        self._max_dets = max_dets_per_image
        self._COCO, self._COCOeval = _coco_api(use_fast_impl)
        self._to_dataset_id = contiguous_id_to_dataset_id
        self._class_names: list[str] | None = None
        gt_source = json_file or self._json_from_catalog(dataset_name)
        with contextlib.redirect_stdout(io.StringIO()):
            self._coco_gt = self._COCO(gt_source) if isinstance(gt_source, str) else self._coco_from_dict(gt_source)
        cats = sorted(self._coco_gt.getCatIds())
        if self._to_dataset_id is None:
            self._to_dataset_id = dict(enumerate(cats))
        if self._class_names is None:
            ids = [self._to_dataset_id[i] for i in range(len(self._to_dataset_id))]
            self._class_names = [self._coco_gt.cats[c].get("name", str(c)) for c in ids]
        self._predictions: list[dict[str, Any]] = []

    def _coco_from_dict(self, data: dict[str, Any]) -> Any:
        coco = self._COCO()
        coco.dataset = data
        coco.createIndex()
        return coco

    def _json_from_catalog(self, name: str | None) -> Any:
        if name is None:
            raise ValueError("COCOEvaluator needs dataset_name or json_file.")
        from ..data import DatasetCatalog, MetadataCatalog

        meta = MetadataCatalog.get(name)
        mapping = getattr(meta, "thing_dataset_id_to_contiguous_id", None)
        if mapping and self._to_dataset_id is None:
            self._to_dataset_id = {v: k for k, v in mapping.items()}
        json_file = getattr(meta, "json_file", None)
        if json_file and os.path.exists(json_file):
            return json_file
        classes = list(meta.thing_classes)
        to_id = self._to_dataset_id or {i: i for i in range(len(classes))}
        self._to_dataset_id = to_id
        self._class_names = classes
        logger.info(f"Dataset {name} has no json_file; converting its dataset dicts to COCO format.")
        return dataset_dicts_to_coco(DatasetCatalog.get(name), classes, to_id)

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for inp, out in zip(inputs, outputs):
            rows = instances_to_coco_json(out["instances"], inp["image_id"], self._to_dataset_id)
            self._predictions.append({"image_id": inp["image_id"], "rows": rows})

    def _gathered(self) -> list[dict[str, Any]] | None:
        if not self._distributed or comm.get_world_size() == 1:
            return self._predictions
        parts = comm.gather(self._predictions, dst=0)
        return list(itertools.chain(*parts)) if comm.is_main_process() else None

    def evaluate(self) -> dict[str, Any]:
        preds = self._gathered()
        if preds is None:
            return {}
        rows = [r for p in preds for r in p["rows"]]
        image_ids = sorted({p["image_id"] for p in preds})
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            path = os.path.join(self._output_dir, "coco_instances_results.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(rows, f)
            logger.info(f"Wrote {len(rows)} detections of {len(image_ids)} images to {path}")
        results: dict[str, Any] = dict(self._coco_eval(rows, image_ids))
        if self._recall_thresholds:
            results.update(self._size_recall(rows, image_ids))
        return OrderedDict(bbox=results)

    def _size_recall(self, rows: list[dict[str, Any]], image_ids: list[Any]) -> dict[str, Any]:
        """``{"recall": {"<t>": {bin: recall}}, "num_gt": {bin: boxes}}`` and a table in the log."""
        areas, scores = found_scores(self._coco_gt.dataset.get("annotations", []), rows, image_ids, self._max_dets)
        out = recall_by_size(areas, scores, self._recall_thresholds, self._recall_edges)
        logger.info(
            "Recall per box size (IoU >= 0.5, one detection per box; bins by sqrt(area) in px, boxes per bin in brackets):\n"
            + format_recall_table(out)
        )
        return out

    def _coco_eval(self, rows: list[dict[str, Any]], image_ids: list[Any]) -> dict[str, float]:
        if not rows:
            logger.warning("No detections at all: every AP is 0.")
            return dict.fromkeys(METRIC_NAMES, 0.0)
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = self._coco_gt.loadRes(copy.deepcopy(rows))
            ev = self._COCOeval(self._coco_gt, coco_dt, "bbox")
            ev.params.imgIds = image_ids
            ev.params.maxDets = [1, 10, self._max_dets]
            ev.evaluate()
            ev.accumulate()
        results = summary_metrics(ev)
        logger.info(
            f"COCO box evaluation ({self._COCOeval.__module__}, maxDets={self._max_dets}): "
            + ", ".join(f"{k}={v:.4f}" for k, v in results.items())
        )
        results.update(self._per_class(ev))
        return results

    def _per_class(self, ev: Any) -> dict[str, float]:
        """AP per class (IoU .50:.95, area all, max dets) and a table in the log."""
        precision = ev.eval["precision"]  # [T IoUs, R recalls, K classes, A areas, M maxDets]
        cat_ids = list(ev.params.catIds)
        out: dict[str, float] = {}
        for k, name in enumerate(self._class_names or []):
            cat = self._to_dataset_id[k]
            if cat not in cat_ids:
                continue
            p = precision[:, :, cat_ids.index(cat), 0, -1]
            p = p[p > -1]
            out[f"AP-{name}"] = float(np.mean(p)) if p.size else float("nan")
        self._log_table(out)
        return out

    @staticmethod
    def _log_table(per_class: dict[str, float]) -> None:
        from tabulate import tabulate

        items = [(k[3:], f"{v:.3f}") for k, v in per_class.items()]
        cols = 3
        flat = list(itertools.chain(*items))
        rows = [flat[i : i + 2 * cols] for i in range(0, len(flat), 2 * cols)]
        logger.info("Per-class AP:\n" + tabulate(rows, headers=["category", "AP"] * cols, tablefmt="pipe"))
