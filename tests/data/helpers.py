"""Helpers: small COCO datasets written into tmp dirs (never downloaded)."""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image


def write_image(path: str, h: int, w: int, seed: int = 0, fmt: str | None = None) -> np.ndarray:
    """A random RGB image saved at ``path``; returns its ``uint8 [h, w, 3]`` pixels."""
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return arr


def make_coco(
    root: str,
    sizes: list[tuple] = ((40, 60), (50, 30), (32, 32)),
    cat_ids: tuple = (3, 7, 11),
    boxes_per_image: int = 3,
    seed: int = 0,
    mutate: Callable[[dict[str, Any]], None] | None = None,
    write_files: bool = True,
) -> str:
    """Write PNG images + a COCO JSON (non-contiguous category ids) under ``root``; return the JSON path."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    images, anns = [], []
    for i, (h, w) in enumerate(sizes):
        name = f"im{i}.png"
        if write_files:
            write_image(os.path.join(root, "img", name), h, w, seed=i)
        images.append({"id": 100 + i, "file_name": name, "height": h, "width": w})
        for _ in range(boxes_per_image):
            bw, bh = rng.uniform(2, w / 2), rng.uniform(2, h / 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            anns.append({
                "id": len(anns) + 1, "image_id": 100 + i, "category_id": int(rng.choice(cat_ids)),
                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0,
            })
    if anns:
        anns[-1]["iscrowd"] = 1
    data = {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in cat_ids]}
    if mutate:
        mutate(data)
    path = os.path.join(root, "ann.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


