"""Statistics of dataset dicts: images, boxes per class, box-size histogram."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

__all__ = ["SIZE_BINS", "dataset_statistics", "format_statistics"]

# Box size = sqrt(area) in pixels of the original image; COCO's small/medium/large split at 32 and 96.
SIZE_BINS = (0, 8, 16, 32, 64, 96, 128, 256, 512, math.inf)


def dataset_statistics(dicts: Sequence[dict], class_names: Sequence[str]) -> dict[str, Any]:
    """Counts over ``dicts``: ``images``, ``negatives`` (no boxes), ``boxes``, ``crowd``,
    ``per_class`` ({name: boxes}), ``size_hist`` ([(lo, hi, count)] of sqrt(area)),
    ``coco_sizes`` ({"small", "medium", "large"}), ``max_boxes_per_image``."""
    per_class: Counter = Counter()
    hist = [0] * (len(SIZE_BINS) - 1)
    coco = Counter()
    crowd = negatives = most = 0
    for d in dicts:
        annos = d.get("annotations", [])
        negatives += not annos
        most = max(most, len(annos))
        for a in annos:
            if a.get("iscrowd", 0):
                crowd += 1
                continue
            x0, y0, x1, y1 = a["bbox"]
            side = math.sqrt(max(x1 - x0, 0) * max(y1 - y0, 0))
            k = a["category_id"]
            per_class[class_names[k] if 0 <= k < len(class_names) else str(k)] += 1
            hist[next(i for i in range(len(hist)) if side < SIZE_BINS[i + 1])] += 1
            coco["small" if side < 32 else "medium" if side < 96 else "large"] += 1
    return {
        "images": len(dicts),
        "negatives": negatives,
        "boxes": sum(per_class.values()),
        "crowd": crowd,
        "max_boxes_per_image": most,
        "per_class": {n: per_class.get(n, 0) for n in class_names},
        "size_hist": [(SIZE_BINS[i], SIZE_BINS[i + 1], c) for i, c in enumerate(hist)],
        "coco_sizes": {k: coco.get(k, 0) for k in ("small", "medium", "large")},
    }


def format_statistics(stats: dict[str, Any], title: str = "") -> str:
    """A plain-text report of :func:`dataset_statistics`."""
    lines = [title] if title else []
    lines.append(
        f"images: {stats['images']} ({stats['negatives']} without boxes), boxes: {stats['boxes']} "
        f"(+{stats['crowd']} crowd/ignore), at most {stats['max_boxes_per_image']} per image"
    )
    width = max([len(n) for n in stats["per_class"]] + [5])
    lines.append("boxes per class:")
    lines += [f"  {n:<{width}} {c:>8}" for n, c in stats["per_class"].items()]
    lines.append("box size sqrt(area) in px:")
    top = max([c for _, _, c in stats["size_hist"]] + [1])
    for lo, hi, c in stats["size_hist"]:
        label = f"[{lo:g}, {hi:g})" if hi != math.inf else f"[{lo:g}, inf)"
        lines.append(f"  {label:<12} {c:>8} {'#' * round(40 * c / top)}")
    cs = stats["coco_sizes"]
    lines.append(f"COCO sizes: small (<32) {cs['small']}, medium (32-96) {cs['medium']}, large (>=96) {cs['large']}")
    return "\n".join(lines)
