"""Detections of a folder of images as COCO results rows (what ``tools/infer.py`` and ``retinakit infer`` write).

A row is ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``. With a COCO JSON of
the images, ids come from it (image ids, and class index -> category id); without one, images
are numbered 1, 2, ... in sorted file order and the category id is the class index + 1.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..structures import Instances

__all__ = ["batches", "coco_rows", "coco_summary", "detect_folder", "image_items", "predict_items", "write_results"]

Item = tuple[Any, Any, str]  # (image id, image path or HWC RGB array, name)


def coco_rows(img_id: Any, inst: Instances, to_cat: dict[int, int] | None) -> list[dict[str, Any]]:
    """COCO results rows of one image's detections (``to_cat`` maps class index -> category id)."""
    rows = []
    for (x0, y0, x1, y1), s, c in zip(inst.pred_boxes.tensor.tolist(), inst.scores.tolist(), inst.pred_classes.tolist()):
        cat = to_cat[c] if to_cat else c + 1
        rows.append({"image_id": img_id, "category_id": cat, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": s})
    return rows


def image_items(images: str, annotations: str = "") -> tuple[list[Item], Any | None]:
    """``[(image id, path, name)]`` of the folder ``images`` and the validation set (with ``annotations``)."""
    from .calibration import list_images
    from .verify import load_valset

    if annotations:
        val = load_valset(images, annotations)
        return [(i, f, os.path.basename(f)) for i, f in zip(val.image_ids, val.files)], val
    files = list_images(images)
    return [(k + 1, f, os.path.relpath(f, images)) for k, f in enumerate(files)], None


def batches(items: Iterable[Any], n: int) -> Iterator[list]:
    """``items`` in lists of ``n`` (the last one shorter)."""
    batch: list = []
    for it in items:
        batch.append(it)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_items(predictor: Any, items: Iterable[Item], batch_size: int, total: int | None,
                  visit: Callable[[Item, Instances], None]) -> None:
    """Run ``predictor`` on ``items`` in batches (progress bar); ``visit(item, instances)`` each."""
    from tqdm import tqdm

    with tqdm(total=total, unit="img", desc="inference") as bar:
        for batch in batches(items, batch_size):
            for item, inst in zip(batch, predictor([src for _, src, _ in batch])):
                visit(item, inst)
            bar.update(len(batch))


def detect_folder(predictor: Any, images: str, annotations: str, batch_size: int,
                  visit: Callable[[Item, Instances], None] | None = None) -> tuple[list[dict[str, Any]], list[Instances], Any]:
    """Detections of every image of ``images``: (COCO results rows, one ``Instances`` per image,
    the validation set of ``annotations`` or None). ``visit(item, instances)`` sees each image."""
    items, val = image_items(images, annotations)
    to_cat = val.to_dataset_id if val else None
    rows: list[dict[str, Any]] = []
    dets: list[Instances] = []

    def collect(item: Item, inst: Instances) -> None:
        dets.append(inst)
        rows.extend(coco_rows(item[0], inst, to_cat))
        if visit is not None:
            visit(item, inst)

    predict_items(predictor, items, batch_size, len(items), collect)
    return rows, dets, val


def write_results(path: str, rows: list[dict[str, Any]], count: int, unit: str) -> None:
    """Write the rows as JSON to ``path`` (folders created) and say so."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(rows, f)
    print(f"wrote {len(rows)} detections of {count} {unit} to {path}")


def coco_summary(rows: list[dict[str, Any]], json_file: str, image_ids: list[Any]) -> str:
    """pycocotools' box AP/AR table of ``rows`` against ``json_file`` on ``image_ids``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not rows:
        return "No detections: every COCO AP is 0."
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
        ev = COCOeval(gt, gt.loadRes(rows), "bbox")
        ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ev.summarize()
    return out.getvalue().rstrip()
