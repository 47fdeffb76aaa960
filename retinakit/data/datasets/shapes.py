"""Built-in synthetic dataset "shapes": PNG images + COCO JSON, generated deterministically.

Classes: circle, square, triangle, star; object sizes log-uniform from ~8 px to 40% of
the image side, some occlusion, textured backgrounds, ~4% images without objects.
Files are written on first use to ``<root>/shapes/<name>/`` where ``<root>`` is the
``root`` argument, else ``$RETINAKIT_DATASETS``, else ``~/.cache/retinakit``.
The same parameters and seed always give byte-identical files.

Registered names (nothing is generated until a dataset is requested):

* ``shapes_train`` (2000 images) / ``shapes_val`` (100): 160x160 px, 1-6 objects of 8-64 px.
* ``shapes_small_train`` (400) / ``shapes_small_val`` (100): 256x256 px, 1-10 objects of
  4-24 px (small objects: anchor tuning matters).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..catalog import DatasetCatalog, MetadataCatalog
from ..coco import load_coco_json
from .shapes_draw import CLASSES, draw_image

__all__ = ["CLASSES", "SPECS", "ShapesSpec", "generate_shapes", "register_all_shapes", "register_shapes", "shapes_root"]

GENERATOR_VERSION = 1


@dataclass(frozen=True)
class ShapesSpec:
    """Parameters of one split; ``seed`` makes splits differ (train and val never share images)."""

    num_images: int = 400
    image_size: int = 160
    min_object: float = 8.0
    max_object_frac: float = 0.4
    max_objects: int = 6
    seed: int = 0
    # "log": sizes log-uniform (as many small as large objects); "uniform": linear (fewer small).
    size_sampling: str = "log"

    def key(self) -> str:
        params = asdict(self)
        if params["size_sampling"] == "log":  # the original default: keeps existing caches valid
            params.pop("size_sampling")
        blob = json.dumps({**params, "v": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


SPECS: dict[str, ShapesSpec] = {
    "shapes_train": ShapesSpec(num_images=2000, seed=0),
    "shapes_val": ShapesSpec(num_images=100, seed=1),
    "shapes_small_train": ShapesSpec(num_images=400, image_size=256, min_object=4.0, max_object_frac=24 / 256, max_objects=10, seed=2),
    "shapes_small_val": ShapesSpec(num_images=100, image_size=256, min_object=4.0, max_object_frac=24 / 256, max_objects=10, seed=3),
}


def shapes_root(root: str | None = None) -> str:
    """``<root>/shapes``: ``root`` argument, else ``$RETINAKIT_DATASETS``, else ``~/.cache/retinakit``."""
    base = root or os.environ.get("RETINAKIT_DATASETS") or os.path.join(os.path.expanduser("~"), ".cache", "retinakit")
    return os.path.join(base, "shapes")


def _coco_json(spec: ShapesSpec, per_image: list[list]) -> dict[str, Any]:
    images, annotations = [], []
    for i, objects in enumerate(per_image):
        images.append({"id": i + 1, "file_name": f"{i:06d}.png", "width": spec.image_size, "height": spec.image_size})
        for cls, (x0, y0, x1, y1) in objects:
            w, h = x1 - x0, y1 - y0
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1, "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": 0}
            )
    categories = [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(CLASSES)]
    info = {"description": f"retinakit shapes {asdict(spec)}"}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def _write(spec: ShapesSpec, out_dir: str) -> None:
    os.makedirs(os.path.join(out_dir, "images"))
    s = spec.image_size
    per_image = []
    for i in range(spec.num_images):
        rng = np.random.default_rng([spec.seed, i])
        img, objects = draw_image(rng, s, s, spec.min_object, spec.max_object_frac * s, spec.max_objects, size_sampling=spec.size_sampling)
        img.save(os.path.join(out_dir, "images", f"{i:06d}.png"), compress_level=1)
        per_image.append(objects)
    with open(os.path.join(out_dir, "annotations.json"), "w") as f:
        json.dump(_coco_json(spec, per_image), f)


def generate_shapes(name: str, spec: ShapesSpec, root: str | None = None) -> str:
    """Make sure the files of ``spec`` exist; return their folder (``annotations.json``, ``images/``).

    Written to a temporary folder and renamed, so concurrent processes never see half a dataset.
    """
    out_dir = os.path.join(shapes_root(root), f"{name}-{spec.key()}")
    if os.path.isfile(os.path.join(out_dir, "annotations.json")):
        return out_dir
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=os.path.dirname(out_dir))
    try:
        _write(spec, os.path.join(tmp, "data"))
        try:
            os.rename(os.path.join(tmp, "data"), out_dir)
        except OSError:
            if not os.path.isfile(os.path.join(out_dir, "annotations.json")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def register_shapes(name: str, spec: ShapesSpec, root: str | None = None) -> None:
    """Register ``name`` (DatasetCatalog + MetadataCatalog); files are generated on first use.

    Metadata: ``thing_classes`` now; ``json_file`` / ``image_root`` (generating the files)
    on first access; ``evaluator_type="coco"``.
    """

    def folder() -> str:
        return generate_shapes(name, spec, root)

    def load(**policies: Any) -> list[dict]:
        d = folder()
        return load_coco_json(os.path.join(d, "annotations.json"), os.path.join(d, "images"), name, **policies)

    def paths(meta: Any) -> None:
        d = folder()
        meta.json_file, meta.image_root = os.path.join(d, "annotations.json"), os.path.join(d, "images")

    load.accepts_policies = True  # type: ignore[attr-defined]
    load.accepts_cache = True  # type: ignore[attr-defined]  # cache_dir=, serialized= (load_coco_json)
    DatasetCatalog.register(name, load, override=True)
    MetadataCatalog.remove(name)
    meta = MetadataCatalog.get(name)
    meta.set(
        thing_classes=list(CLASSES),
        thing_dataset_id_to_contiguous_id={k + 1: k for k in range(len(CLASSES))},
        thing_contiguous_id_to_dataset_id={k: k + 1 for k in range(len(CLASSES))},
        evaluator_type="coco",
    )
    meta.set_lazy(paths, ["json_file", "image_root"])


def register_all_shapes(root: str | None = None) -> None:
    """Register every name of :data:`SPECS` (called when ``retinakit.data`` is imported)."""
    for name, spec in SPECS.items():
        register_shapes(name, spec, root)
