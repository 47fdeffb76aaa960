#!/usr/bin/env python
"""Draw ground-truth boxes of a dataset on its images (PNG) and print dataset statistics.

    python tools/browse_dataset.py --config-file configs/quickstart/shapes.yaml --output browse/
    python tools/browse_dataset.py --config-file CFG --output DIR --source loader --num-images 20
    python tools/browse_dataset.py --dataset shapes_small_train --output DIR

``--source annotation`` (default) draws the JSON boxes on the original images;
``--source loader`` draws what the training loader yields (after resize/flip/jitter).
Statistics (images, boxes per class, box-size histogram) cover the whole dataset.
"""
from __future__ import annotations

import argparse
import colorsys
import itertools
import logging
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from retinakit.config import get_cfg
from retinakit.data import (
    MetadataCatalog,
    build_detection_train_loader,
    get_detection_dataset_dicts,
    read_image,
)
from retinakit.data.build import get_train_dataset_names
from retinakit.data.stats import dataset_statistics, format_statistics


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default="", help="YAML config (datasets from DATASETS.TRAIN / TRAIN_JSON)")
    p.add_argument("--dataset", action="append", default=[], help="registered dataset name (repeatable; overrides the config)")
    p.add_argument("--output", required=True, help="folder for the PNG files")
    p.add_argument("--source", choices=("annotation", "loader"), default="annotation")
    p.add_argument("--num-images", type=int, default=50, help="images to draw (statistics always use all)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return p.parse_args(argv)


def _colors(n: int) -> list:
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.9, 1.0)) for i in range(n)]


def draw(image: np.ndarray, boxes, classes, ignore, names) -> Image.Image:
    """``image`` uint8 [H, W, 3] RGB; boxes XYXY; crowd/ignore boxes in grey."""
    img = Image.fromarray(image)
    d = ImageDraw.Draw(img)
    palette = _colors(len(names))
    for box, c, ig in zip(boxes, classes, ignore):
        color = (128, 128, 128) if ig else palette[int(c) % len(palette)]
        d.rectangle([float(v) for v in box], outline=color, width=1 if max(img.size) < 400 else 2)
        d.text((float(box[0]) + 1, float(box[1]) + 1), names[int(c)] + (" (ignore)" if ig else ""), fill=color)
    return img


def _from_annotations(dicts, names, out, n):
    for d in dicts[:n]:
        annos = d["annotations"]
        boxes, classes, crowd = [a["bbox"] for a in annos], [a["category_id"] for a in annos], [a["iscrowd"] for a in annos]
        img = draw(read_image(d["file_name"], "RGB"), boxes, classes, crowd, names)
        img.save(os.path.join(out, f"{d['image_id']}.png"))


def _from_loader(cfg, dicts, names, out, n):
    cfg.DATALOADER.NUM_WORKERS = 0
    done = 0
    for batch in itertools.islice(iter(build_detection_train_loader(cfg, dataset=dicts)), n):
        for x in batch:
            arr = x["image"].permute(1, 2, 0).cpu().numpy()
            arr = arr[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else arr
            inst = x["instances"]
            img = draw(np.ascontiguousarray(arr), inst.gt_boxes.tensor.tolist(), inst.gt_classes.tolist(), inst.gt_ignore.tolist(), names)
            img.save(os.path.join(out, f"{x['image_id']}_{done}.png"))
            done += 1
            if done >= n:
                return


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.dataset:
        cfg.DATASETS.TRAIN, cfg.DATASETS.TRAIN_JSON = tuple(args.dataset), ""
    names_ds = get_train_dataset_names(cfg)
    dicts = get_detection_dataset_dicts(
        names_ds, on_bad_annotation=cfg.DATALOADER.ON_BAD_ANNOTATION, on_bad_image=cfg.DATALOADER.ON_BAD_IMAGE,
    )
    classes = MetadataCatalog.get(names_ds[0]).thing_classes
    print(format_statistics(dataset_statistics(dicts, classes), f"Datasets {', '.join(names_ds)}"))
    os.makedirs(args.output, exist_ok=True)
    if args.source == "annotation":
        _from_annotations(dicts, classes, args.output, args.num_images)
    else:
        _from_loader(cfg, dicts, classes, args.output, args.num_images)
    print(f"Drew {min(args.num_images, len(dicts)) if args.source == 'annotation' else args.num_images} images into {args.output}")
    return 0


if __name__ == "__main__":
    from retinakit.config import ConfigError
    from retinakit.data import DatasetError

    try:
        sys.exit(main())
    except (DatasetError, ConfigError, KeyError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        sys.exit(1)
