"""The fast path of the COCO loader: typed parsing and array-wise annotation checks.

:func:`parse_fast` decodes a COCO JSON with msgspec into typed annotation entries, skipping
what the loader never reads (``segmentation``, ``area``, ...). Its types are strict
(integer ids, ``bbox`` of 4 numbers, ``iscrowd`` 0/1), so a file it accepts passes the entry
checks of :mod:`.coco_validate`; :func:`annotations_fast` then does the remaining checks
(unique ids, known image and category, box inside the image) on arrays and builds the
annotation dicts. Both return None whenever anything is off (a file msgspec rejects, a NaN
literal, one bad annotation): the caller then runs the reference path entry by entry, which
gives the exact messages and "skip" counts. The two paths give identical dataset dicts
(tests/data/test_coco_cache.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import msgspec
import numpy as np

__all__ = ["FastCoco", "annotations_fast", "parse_categories_fast", "parse_fast"]


class _Annotation(msgspec.Struct):
    id: int
    image_id: int | str
    category_id: int
    bbox: tuple[float, float, float, float]
    iscrowd: Literal[0, 1] = 0


class FastCoco(msgspec.Struct):
    """The three lists of a COCO file: images and categories as plain JSON values (checked
    by the reference code), annotations typed."""

    images: list[Any]
    annotations: list[_Annotation]
    categories: list[Any]


class _CategoriesOnly(msgspec.Struct):
    categories: list[Any]


_DECODER = msgspec.json.Decoder(FastCoco)
_CATEGORIES = msgspec.json.Decoder(_CategoriesOnly)


def parse_fast(raw: bytes) -> FastCoco | None:
    """The typed file, or None when the file is not valid JSON for msgspec (e.g. it has NaN
    literals) or any annotation is not of the strict types."""
    try:
        return _DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def parse_categories_fast(raw: bytes) -> list[Any] | None:
    """The ``categories`` list alone (the rest of the file is scanned, not built), or None."""
    try:
        return _CATEGORIES.decode(raw).categories
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def annotations_fast(
    anns: Sequence[_Annotation], records: Sequence[dict], id_map: dict[int, int]
) -> list[list[dict]] | None:
    """Per record (in ``records`` order), its annotation dicts in file order; None when any
    annotation fails a check (duplicate id, unknown or dropped image, unknown category,
    zero-size box, box outside its image).

    Boxes: ``[x, y, w, h]`` -> ``[x0, y0, x1, y1]`` clipped to the image, as
    :func:`~retinakit.data.coco_validate.bbox_to_xyxy` (same float64 operations).
    """
    n = len(anns)
    per_record: list[list[dict]] = [[] for _ in records]
    if n == 0:
        return per_record
    ids = [a.id for a in anns]
    if len(set(ids)) != n:
        return None
    where = {r["image_id"]: k for k, r in enumerate(records)}
    rec = np.fromiter((where.get(a.image_id, -1) for a in anns), dtype=np.int64, count=n)
    cat = np.fromiter((id_map.get(a.category_id, -1) for a in anns), dtype=np.int64, count=n)
    if (rec < 0).any() or (cat < 0).any():
        return None
    box = np.array([a.bbox for a in anns], dtype=np.float64).reshape(n, 4)
    size = np.array([(r["height"], r["width"]) for r in records], dtype=np.float64).reshape(-1, 2)[rec]
    x, y, w, h = box.T
    if not (np.isfinite(box).all() and (w > 0).all() and (h > 0).all()):
        return None
    xyxy = np.stack([
        np.minimum(np.maximum(x, 0.0), size[:, 1]), np.minimum(np.maximum(y, 0.0), size[:, 0]),
        np.minimum(np.maximum(x + w, 0.0), size[:, 1]), np.minimum(np.maximum(y + h, 0.0), size[:, 0]),
    ], axis=1)
    if not ((xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])).all():
        return None
    for r, b, c, a in zip(rec.tolist(), xyxy.tolist(), cat.tolist(), anns):
        per_record[r].append({"bbox": b, "category_id": c, "iscrowd": a.iscrowd, "id": a.id})
    return per_record
