"""A COCO-sized detection JSON for the data-load benchmark (generated, never downloaded).

:func:`write_coco_like` writes ``images`` entries with sizes, ``annotations`` with a box,
area, iscrowd and a short polygon (real files carry segmentations the loader must parse
past), categories with 80 of 90 ids (as COCO's), and, when asked, the image folder as hard
links of a few real JPEGs (so that probing every header reads real files without the disk
space of a real dataset).
"""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

__all__ = ["COCO_TRAIN2017", "write_coco_like"]

COCO_TRAIN2017 = (118_287, 828_000)  # images, boxes of the COCO train2017-sized file of issue 14
_SIZES = ((480, 640), (427, 640), (640, 480), (375, 500), (512, 512), (360, 640), (640, 427), (333, 500))


def _category_ids() -> list[int]:
    """80 ids in 1..90 with 10 gaps, as COCO's."""
    gaps = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    return [i for i in range(1, 91) if i not in gaps]


def _write_jpegs(folder: str) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for k, (h, w) in enumerate(_SIZES):
        rng = np.random.default_rng(k)
        smooth = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        arr = np.kron(smooth, np.ones((16, 16, 1), dtype=np.uint8))[:h, :w]
        path = os.path.join(folder, f"source_{k}.jpg")
        Image.fromarray(arr).save(path, quality=90)
        paths.append(path)
    return paths


def write_coco_like(root: str, num_images: int, num_annotations: int, *, with_images: bool = True, seed: int = 0) -> tuple[str, str]:
    """Write ``root/annotations.json`` (+ ``root/images/`` of hard links when ``with_images``);
    return ``(json_file, image_root)``. Every box lies inside its image; image sizes match the
    linked files, so a validating loader keeps every entry."""
    rng = np.random.default_rng(seed)
    image_root = os.path.join(root, "images")
    os.makedirs(image_root, exist_ok=True)
    sources = _write_jpegs(os.path.join(root, "sources")) if with_images else []
    kinds = rng.integers(0, len(_SIZES), size=num_images)
    images = []
    for i, k in enumerate(kinds.tolist()):
        name = f"{i + 1:012d}.jpg"
        h, w = _SIZES[k]
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w, "license": 1, "date_captured": "2013-11-14 17:02:52"})
        if with_images:
            os.link(sources[k], os.path.join(image_root, name))
    owner = rng.integers(0, num_images, size=num_annotations)
    cats = np.array(_category_ids())[rng.integers(0, 80, size=num_annotations)]
    frac = rng.uniform(0.02, 0.5, size=(num_annotations, 2))
    pos = rng.uniform(0.0, 1.0, size=(num_annotations, 2))
    crowd = rng.uniform(size=num_annotations) < 0.01
    anns = []
    for j in range(num_annotations):
        h, w = _SIZES[kinds[owner[j]]]
        bw, bh = round(float(frac[j, 0]) * w, 2), round(float(frac[j, 1]) * h, 2)
        x, y = round(float(pos[j, 0]) * (w - bw), 2), round(float(pos[j, 1]) * (h - bh), 2)
        anns.append({
            "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]],
            "area": round(bw * bh, 4), "iscrowd": int(crowd[j]), "image_id": int(owner[j]) + 1,
            "bbox": [x, y, bw, bh], "category_id": int(cats[j]), "id": j + 1,
        })
    data = {
        "info": {"description": "retinakit data-load benchmark (generated)"}, "licenses": [{"id": 1, "name": "generated"}],
        "images": images, "annotations": anns,
        "categories": [{"supercategory": "thing", "id": c, "name": f"class_{c}"} for c in _category_ids()],
    }
    json_file = os.path.join(root, "annotations.json")
    with open(json_file, "w") as f:
        json.dump(data, f)
    return json_file, image_root
