"""COCO 2017 detection, registered as ``coco_2017_train`` / ``coco_2017_val`` (files not included).

Expected layout under ``$RETINAKIT_DATASETS`` (default ``./datasets``)::

    coco/annotations/instances_train2017.json   coco/train2017/*.jpg
    coco/annotations/instances_val2017.json     coco/val2017/*.jpg
"""
from __future__ import annotations

import os
from typing import Any

from ..catalog import DatasetCatalog, MetadataCatalog
from ..coco import load_coco_json, read_coco_categories
from ..errors import DatasetError

__all__ = ["COCO_SPLITS", "coco_root", "register_all_coco"]

COCO_SPLITS = {
    "coco_2017_train": ("coco/annotations/instances_train2017.json", "coco/train2017"),
    "coco_2017_val": ("coco/annotations/instances_val2017.json", "coco/val2017"),
}


def coco_root() -> str:
    """``$RETINAKIT_DATASETS`` or ``./datasets``."""
    return os.environ.get("RETINAKIT_DATASETS") or "datasets"


def _paths(rel_json: str, rel_images: str) -> tuple[str, str]:
    js, images = os.path.join(coco_root(), rel_json), os.path.join(coco_root(), rel_images)
    if not os.path.isfile(js):
        raise DatasetError(
            f"COCO annotation file {js} not found. Download COCO 2017 and arrange it as "
            f"<root>/{rel_json} and <root>/{rel_images}/, then set RETINAKIT_DATASETS=<root> "
            "(default ./datasets); or give DATASETS.TRAIN_JSON/TRAIN_IMAGES directly."
        )
    return js, images


def _register(name: str, rel_json: str, rel_images: str) -> None:
    def load(**policies: Any) -> list:
        return load_coco_json(*_paths(rel_json, rel_images), name, **policies)

    def categories(meta: Any) -> None:
        classes, id_map = read_coco_categories(_paths(rel_json, rel_images)[0])
        meta.thing_classes, meta.thing_dataset_id_to_contiguous_id = classes, id_map
        meta.thing_contiguous_id_to_dataset_id = {v: k for k, v in id_map.items()}

    def paths(meta: Any) -> None:
        meta.json_file, meta.image_root = _paths(rel_json, rel_images)

    load.accepts_policies = True  # type: ignore[attr-defined]
    load.accepts_cache = True  # type: ignore[attr-defined]  # cache_dir=, serialized= (load_coco_json)
    DatasetCatalog.register(name, load, override=True)
    MetadataCatalog.remove(name)
    meta = MetadataCatalog.get(name)
    meta.evaluator_type = "coco"
    meta.set_lazy(categories, ["thing_classes", "thing_dataset_id_to_contiguous_id", "thing_contiguous_id_to_dataset_id"])
    meta.set_lazy(paths, ["json_file", "image_root"])


def register_all_coco() -> None:
    """Register :data:`COCO_SPLITS` (paths resolved on first use)."""
    for name, (js, images) in COCO_SPLITS.items():
        _register(name, js, images)
