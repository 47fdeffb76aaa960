"""Load a COCO detection JSON into dataset dicts, validating every entry; register it."""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, overload

from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .coco_fast import annotations_fast, parse_categories_fast, parse_fast
from .coco_validate import (
    bbox_to_xyxy,
    check_annotation_ids,
    check_category,
    check_image,
    check_top_level,
)
from .errors import BadImageError, DatasetError, ProblemLog
from .image_header import jpeg_size
from .image_io import image_size, size_mismatch
from .records_cache import CACHE_VERSION, CachedRecords, entry_path, files_fingerprint, read_entry, write_entry
from .serialize import SerializedList

__all__ = ["load_coco_json", "read_coco_categories", "register_coco_instances"]

logger = logging.getLogger(__name__)


def _read_bytes(json_file: str) -> bytes:
    if not os.path.isfile(json_file):
        raise DatasetError(f"COCO JSON file {json_file} does not exist. Check the path given when registering the dataset.")
    try:
        with open(json_file, "rb") as f:
            return f.read()
    except OSError as e:
        raise DatasetError(f"Cannot read COCO JSON file {json_file}: {e}.") from e


def _parse_json(raw: bytes, json_file: str) -> dict[str, Any]:
    """The reference parse (stdlib json) with the top-level checks."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{json_file} is not valid JSON: {e}. Fix the file (is it truncated?).") from e
    except UnicodeDecodeError as e:
        raise DatasetError(f"Cannot read COCO JSON file {json_file}: {e}.") from e
    err = check_top_level(data)
    if err:
        raise DatasetError(f"{json_file}: {err}.")
    return data


def _read_json(json_file: str) -> dict[str, Any]:
    return _parse_json(_read_bytes(json_file), json_file)


def _categories(data: dict[str, Any], json_file: str) -> tuple[list[str], dict[int, int]]:
    """``(thing_classes, dataset_id -> contiguous_id)``; contiguous ids follow sorted dataset ids."""
    seen: dict[int, Any] = {}
    for cat in data["categories"]:
        err = check_category(cat, seen)
        if err:
            raise DatasetError(f"{json_file}: {err}. Fix the 'categories' list.")
        seen[cat["id"]] = cat
    if not seen:
        raise DatasetError(f"{json_file}: the 'categories' list is empty; list every class as {{\"id\": 1, \"name\": \"...\"}}.")
    ids = sorted(seen)
    return [str(seen[i].get("name", i)) for i in ids], {i: k for k, i in enumerate(ids)}


def read_coco_categories(json_file: str) -> tuple[list[str], dict[int, int]]:
    """Class names and the dataset-id -> contiguous-id map of a COCO JSON file."""
    raw = _read_bytes(json_file)
    cats = parse_categories_fast(raw)
    return _categories({"categories": cats} if cats is not None else _parse_json(raw, json_file), json_file)


def _image_sizes(
    records: list[dict], check_files: bool, bad: ProblemLog, json_file: str, fingerprint: bool = False
) -> tuple[list[dict], list[str], str]:
    """Fill missing height/width from file headers; with ``check_files`` check every file.
    Returns the kept records, the paths of the files whose headers were read and, with
    ``fingerprint``, their :func:`files_fingerprint` taken *before* reading them (a file that
    changes while it is probed then makes the cache entry stale instead of wrong), else ""."""
    todo = [r for r in records if check_files or not r.get("height") or not r.get("width")]
    paths = [r["file_name"] for r in todo]
    stamp = files_fingerprint(paths) if fingerprint else ""

    def probe(r: dict) -> tuple[dict, Any]:
        try:
            return r, jpeg_size(r["file_name"]) or image_size(r["file_name"], f"image id {r['image_id']} of {json_file}")
        except BadImageError as e:
            return r, e

    workers = min(16, (os.cpu_count() or 2) * 4)
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(probe, todo)) if len(todo) > 64 else [probe(r) for r in todo]
    dropped = set()
    for r, res in results:
        if isinstance(res, BadImageError):
            bad.report("unreadable image file", str(res))
            dropped.add(id(r))
            continue
        h, w = res
        msg = size_mismatch(r["file_name"], f"image id {r['image_id']} of {json_file}", (h, w), (r.get("height"), r.get("width")))
        if msg:
            bad.report("size disagrees with file", msg)
            dropped.add(id(r))
            continue
        r["height"], r["width"] = h, w
    return [r for r in records if id(r) not in dropped], paths, stamp


def _images(
    data: dict[str, Any], image_root: str, json_file: str, bad_image: ProblemLog, check_files: bool, fingerprint: bool
) -> tuple[list[dict], list[str], str]:
    records, seen = [], {}
    for img in data["images"]:
        err = check_image(img)
        if err:
            bad_image.report("invalid image entry", f"{json_file}: {err}")
            continue
        if img["id"] in seen:
            raise DatasetError(
                f"{json_file}: duplicate image id {img['id']} ({seen[img['id']]} and {img['file_name']}). "
                "Image ids must be unique; give each image its own id (annotations refer to images by id)."
            )
        seen[img["id"]] = img["file_name"]
        records.append(
            {
                "file_name": os.path.join(image_root, img["file_name"]),
                "image_id": img["id"],
                "height": img.get("height"),
                "width": img.get("width"),
            }
        )
    return _image_sizes(records, check_files, bad_image, json_file, fingerprint)


def _annotation(
    ann: Any, json_file: str, images: dict[Any, dict], id_map: dict[int, int], declared: set, seen: set,
) -> tuple[dict | None, str, str]:
    """One annotation -> (record, "", "") or (None, kind, message)."""
    err = check_annotation_ids(ann)
    if err:
        return None, "invalid entry", f"{json_file}: {err}"
    where = f"{json_file}: annotation id {ann['id']} (image id {ann['image_id']})"
    if ann["id"] in seen:
        return None, "duplicate annotation id", f"{where}: duplicate annotation id; annotation ids must be unique"
    seen.add(ann["id"])
    if ann["image_id"] not in images:
        if ann["image_id"] in declared:
            return None, "image dropped", ""
        return None, "unknown image", f"{where}: refers to an image id that is not in 'images'; add the image or remove the annotation"
    if ann["category_id"] not in id_map:
        return None, "unknown category", (
            f"{where}: category_id {ann['category_id']!r} is not in 'categories' (ids {sorted(id_map)[:20]}); "
            "add the category or fix the annotation"
        )
    rec = images[ann["image_id"]]
    xyxy, err = bbox_to_xyxy(ann["bbox"], rec["height"], rec["width"])
    if err:
        return None, "bad box", f"{where}: {err}; fix or remove this annotation"
    out = {"bbox": xyxy, "category_id": id_map[ann["category_id"]], "iscrowd": int(ann.get("iscrowd", 0)), "id": ann["id"]}
    return out, "", ""


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while millions of small dicts and lists are built (they
    form no cycles; each collection would walk all of them: about 40% of a COCO-sized load)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _annotations_reference(
    data: dict[str, Any], json_file: str, records: list[dict], id_map: dict[int, int], bad_ann: ProblemLog
) -> int:
    """Fill ``records[k]["annotations"]`` entry by entry; returns the number of annotations
    of images dropped by the ``ON_BAD_IMAGE`` skip policy."""
    by_id = {r["image_id"]: r for r in records}
    declared = {img.get("id") for img in data["images"] if isinstance(img, dict)}
    for r in records:
        r["annotations"] = []
    seen: set = set()
    with_images = 0
    for ann in data["annotations"]:
        out, kind, msg = _annotation(ann, json_file, by_id, id_map, declared, seen)
        if out is not None:
            by_id[ann["image_id"]]["annotations"].append(out)
        elif msg:
            bad_ann.report(kind, msg)
        else:
            with_images += 1
    return with_images


def _validate(
    json_file: str, image_root: str, on_bad_annotation: str, on_bad_image: str, check_image_files: bool,
    fingerprint: bool = False,
) -> tuple[list[dict], CachedRecords]:
    """Parse and check the file (fast path when it is clean, else the reference path); the
    records and the cache header (without the key and the JSON's stat, filled by the caller;
    the probed files' fingerprint only with ``fingerprint``)."""
    bad_image = ProblemLog(on_bad_image, "images", "DATALOADER.ON_BAD_IMAGE", BadImageError)
    bad_ann = ProblemLog(on_bad_annotation, "annotations", "DATALOADER.ON_BAD_ANNOTATION")
    raw = _read_bytes(json_file)
    fast = parse_fast(raw)
    if fast is None:
        logger.info("%s is not of the fast path's strict types (or has NaN/Infinity literals): checking it entry by entry.", json_file)
    data = _parse_json(raw, json_file) if fast is None else {"images": fast.images, "categories": fast.categories}
    del raw
    classes, id_map = _categories(data, json_file)
    records, probed, stamp = _images(data, image_root, json_file, bad_image, check_image_files, fingerprint)
    per_record = annotations_fast(fast.annotations, records, id_map) if fast is not None else None
    with_images = 0
    if per_record is not None:
        for r, anns in zip(records, per_record):
            r["annotations"] = anns
    else:
        if fast is not None:
            logger.info("%s has annotations the fast checks do not accept: checking them one by one.", json_file)
            data = _parse_json(_read_bytes(json_file), json_file)
        with_images = _annotations_reference(data, json_file, records, id_map, bad_ann)
    summaries = [
        bad_image.summary(json_file, f" with their {with_images} annotations" if with_images else ""),
        bad_ann.summary(json_file),
    ]
    meta = CachedRecords(
        version=CACHE_VERSION, key={}, json_size=0, json_mtime_ns=0, probed=probed, probed_fingerprint=stamp,
        classes=classes, id_map=sorted(id_map.items()), summaries=[line for line in summaries if line],
    )
    return records, meta


def _load_records(
    json_file: str, image_root: str, on_bad_annotation: str, on_bad_image: str, check_image_files: bool, cache_dir: str | None
) -> tuple[SerializedList, CachedRecords]:
    """Records (JSON-codec) and header, from the cache entry when it is current, else
    validated (and written to the cache when ``cache_dir`` is given)."""
    key = {
        "json_file": os.path.abspath(json_file), "image_root": os.path.abspath(image_root),
        "on_bad_annotation": on_bad_annotation, "on_bad_image": on_bad_image, "check_image_files": bool(check_image_files),
    }
    path = entry_path(cache_dir, key) if cache_dir else None
    hit = read_entry(path, key) if path and os.path.isfile(json_file) else None
    if hit is not None:
        for line in hit[1].summaries:
            logger.warning("%s (from the dataset cache %s)", line, path)
        logger.info("Read %d validated images of %s from the dataset cache %s", len(hit[0]), json_file, path)
        return hit
    before = os.stat(json_file) if os.path.isfile(json_file) else None
    records, meta = _validate(json_file, image_root, on_bad_annotation, on_bad_image, check_image_files,
                              fingerprint=bool(path and before is not None))
    serialized = SerializedList(records, codec="json")
    del records
    if path and before is not None:
        meta.key, meta.json_size, meta.json_mtime_ns = key, before.st_size, before.st_mtime_ns
        if write_entry(path, serialized, meta):
            logger.info("Wrote the validated records of %s to the dataset cache %s", json_file, path)
    return serialized, meta


@overload
def load_coco_json(
    json_file: str, image_root: str, dataset_name: str | None = ..., *, on_bad_annotation: str = ..., on_bad_image: str = ...,
    check_image_files: bool = ..., cache_dir: str | None = ..., serialized: Literal[False] = ...,
) -> list[dict]: ...
@overload
def load_coco_json(
    json_file: str, image_root: str, dataset_name: str | None = ..., *, on_bad_annotation: str = ..., on_bad_image: str = ...,
    check_image_files: bool = ..., cache_dir: str | None = ..., serialized: Literal[True],
) -> SerializedList: ...
def load_coco_json(
    json_file: str,
    image_root: str,
    dataset_name: str | None = None,
    *,
    on_bad_annotation: str = "error",
    on_bad_image: str = "error",
    check_image_files: bool = True,
    cache_dir: str | None = None,
    serialized: bool = False,
) -> list[dict] | SerializedList:
    """Parse and validate a COCO detection JSON; return detectron2-style dataset dicts.

    Each dict: ``file_name`` (joined with ``image_root``), ``image_id``, ``height``, ``width``
    (read from the file header when absent), ``annotations``: list of ``{"bbox": [x0, y0,
    x1, y1] absolute float clipped to the image, "category_id": contiguous id, "iscrowd",
    "id"}``. Images without annotations are kept. ``on_bad_annotation`` / ``on_bad_image``:
    "error" raises :class:`DatasetError` naming file, ids, problem and fix; "skip" drops,
    counts and logs one summary line. ``check_image_files`` reads every image header
    (existence, readability, size agrees with the JSON). With ``dataset_name``, its metadata
    gets ``thing_classes`` and ``thing_dataset_id_to_contiguous_id``.

    ``cache_dir``: keep the validated dicts in a file there (:mod:`.records_cache`), keyed
    by the JSON file, the image root and the three options; a later call with the same
    inputs reads it instead of parsing and probing again (a changed JSON file or image file
    makes the entry stale). ``serialized``: return the dicts as a JSON-codec
    :class:`~retinakit.data.serialize.SerializedList` (one buffer, what the loaders use)
    instead of a list.
    """
    with _gc_paused():
        records, meta = _load_records(json_file, image_root, on_bad_annotation, on_bad_image, check_image_files, cache_dir)
        out = records if serialized else list(records)
    if dataset_name is not None:
        _set_categories(MetadataCatalog.get(dataset_name), list(meta.classes), dict(meta.id_map))
    logger.info("Loaded %d images from %s", len(records), json_file)
    return out


def _set_categories(meta: Metadata, classes: list[str], id_map: dict[int, int]) -> None:
    meta.thing_classes = classes
    meta.thing_dataset_id_to_contiguous_id = id_map
    meta.thing_contiguous_id_to_dataset_id = {v: k for k, v in id_map.items()}


def register_coco_instances(
    name: str,
    metadata: dict[str, Any],
    json_file: str,
    image_root: str,
    *,
    on_bad_annotation: str = "error",
    on_bad_image: str = "error",
    check_image_files: bool = True,
    cache_dir: str | None = None,
) -> None:
    """Register a COCO detection dataset as ``name`` in DatasetCatalog and MetadataCatalog.

    Nothing is read now. ``DatasetCatalog.get(name)`` calls :func:`load_coco_json`; the
    metadata gets ``json_file``, ``image_root``, ``evaluator_type="coco"`` plus ``metadata``,
    and ``thing_classes`` / ``thing_dataset_id_to_contiguous_id`` are read from the JSON's
    categories on first access. Policies can also be given per call (the config's
    ``DATALOADER.ON_BAD_*`` override them in ``get_detection_dataset_dicts``). ``cache_dir``:
    ``DatasetCatalog.get(name)`` keeps the validated dicts there (see :func:`load_coco_json`;
    the loaders built from a config use ``DATASETS.CACHE_DIR``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_coco_instances: name must be a non-empty string, got {name!r}.")
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)

    def load(**overrides: Any) -> list[dict]:
        kwargs = {
            "on_bad_annotation": on_bad_annotation, "on_bad_image": on_bad_image, "check_image_files": check_image_files,
            "cache_dir": cache_dir,
        }
        kwargs.update(overrides)
        return load_coco_json(json_file, image_root, name, **kwargs)

    load.accepts_policies = True  # type: ignore[attr-defined]
    load.accepts_cache = True  # type: ignore[attr-defined]  # cache_dir=, serialized= (load_coco_json)
    DatasetCatalog.register(name, load)
    meta = MetadataCatalog.get(name)
    meta.set(json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata)
    if "thing_classes" not in metadata:
        meta.set_lazy(
            lambda m: _set_categories(m, *read_coco_categories(json_file)),
            ["thing_classes", "thing_dataset_id_to_contiguous_id", "thing_contiguous_id_to_dataset_id"],
        )
