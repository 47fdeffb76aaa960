"""Checks of the entries of a COCO detection JSON. Each returns an error message or None.

Only ``images[].{id,file_name}``, ``annotations[].{id,image_id,category_id,bbox}`` and
``categories[].{id}`` are required; everything else is optional.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

__all__ = ["bbox_to_xyxy", "check_annotation_ids", "check_category", "check_image", "check_top_level"]

_TOP_LEVEL = ("images", "annotations", "categories")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_id(v: Any) -> bool:
    return _is_int(v) or (isinstance(v, str) and v != "")


def check_top_level(data: Any) -> str | None:
    """The file must be an object with the lists ``images``, ``annotations``, ``categories``."""
    if not isinstance(data, dict):
        return f"the top level must be a JSON object with keys {list(_TOP_LEVEL)}, got a {type(data).__name__}"
    missing = [k for k in _TOP_LEVEL if k not in data]
    if missing:
        return (
            f"missing top-level key(s) {missing} (found {sorted(data)}); a COCO detection file needs "
            '"images", "annotations" and "categories" (use "annotations": [] for a file without boxes)'
        )
    for k in _TOP_LEVEL:
        if not isinstance(data[k], list):
            return f'top-level key "{k}" must be a list, got a {type(data[k]).__name__}'
    return None


def check_category(cat: Any, seen: dict[Any, Any]) -> str | None:
    if not isinstance(cat, dict) or not _is_int(cat.get("id")):
        return f"category entry {cat!r} needs an integer 'id'"
    if cat["id"] in seen:
        return f"duplicate category id {cat['id']} (entries {seen[cat['id']]!r} and {cat!r}); category ids must be unique"
    name = cat.get("name", str(cat["id"]))
    if not isinstance(name, str):
        return f"category id {cat['id']} has a non-string 'name' {name!r}"
    return None


def check_image(img: Any) -> str | None:
    """Entry checks of one ``images[]`` element (not the file on disk)."""
    if not isinstance(img, dict):
        return f"image entry {img!r} must be an object with 'id' and 'file_name'"
    if not _is_id(img.get("id")):
        return f"image entry {_short(img)} needs an integer 'id', got {img.get('id')!r}"
    fn = img.get("file_name")
    if not isinstance(fn, str) or not fn:
        return f"image id {img['id']} needs a non-empty string 'file_name', got {fn!r}"
    for key in ("width", "height"):
        if key in img and img[key] is not None and not (_is_int(img[key]) and img[key] > 0):
            return f"image id {img['id']} ({fn}) has an invalid '{key}' {img[key]!r}; it must be a positive integer or absent"
    return None


def check_annotation_ids(ann: Any) -> str | None:
    if not isinstance(ann, dict):
        return f"annotation entry {ann!r} must be an object"
    missing = [k for k in ("id", "image_id", "category_id", "bbox") if k not in ann]
    if missing:
        return f"annotation {_short(ann)} lacks the required key(s) {missing}"
    if not _is_id(ann["id"]):
        return f"annotation {_short(ann)} has an invalid 'id' {ann['id']!r}; it must be an integer"
    crowd = ann.get("iscrowd", 0)
    if isinstance(crowd, bool) or crowd not in (0, 1):
        return f"annotation id {ann['id']} (image id {ann['image_id']}) has 'iscrowd' {crowd!r}; it must be 0 or 1"
    return None


def bbox_to_xyxy(bbox: Any, height: int, width: int) -> tuple[list[float] | None, str | None]:
    """COCO ``[x, y, w, h]`` -> ``[x0, y0, x1, y1]`` clipped to the image; or an error message."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None, f"bbox {bbox!r} must be a list of 4 numbers [x, y, width, height]"
    if not all(isinstance(v, Real) and not isinstance(v, bool) for v in bbox):
        return None, f"bbox {bbox!r} contains a non-numeric value"
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, f"bbox {bbox!r} contains NaN or infinity"
    if w < 0 or h < 0:
        return None, f"bbox {bbox!r} has a negative width or height (COCO boxes are [x, y, width, height], not [x0, y0, x1, y1])"
    if w == 0 or h == 0:
        return None, f"bbox {bbox!r} has zero width or height"
    width, height = float(width), float(height)  # the clipped corners are floats too
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x1 <= x0 or y1 <= y0:
        return None, f"bbox {bbox!r} lies entirely outside the image of size {width}x{height} (width x height)"
    return [x0, y0, x1, y1], None


def _short(entry: dict[str, Any], keys: Sequence[str] = ("id", "image_id", "file_name")) -> str:
    shown = {k: entry[k] for k in keys if k in entry}
    return repr(shown or entry)[:200]
