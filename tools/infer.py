#!/usr/bin/env python
"""Batched inference with any deployed retinakit model: PyTorch .pth, ONNX, or TensorRT engine.

    python tools/infer.py --model FILE [--config-file CFG] (--images DIR | --video FILE)
        --output detections.json [--visualize DIR] [--annotations JSON] [--batch-size N]
        [--device cpu|cuda] [--score-thresh 0.3]

Writes COCO results JSON (image_id, category_id, bbox [x, y, w, h], score). Image ids and
category ids come from --annotations when given (which also prints COCO AP); otherwise
images are numbered in sorted file order (video frames by frame index) and categories are
the class index + 1. --visualize writes one PNG per image (or frame) with the detections
drawn. A .pth model needs --config-file; ONNX models and engines carry their metadata.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EXIT_USER_ERROR = 2
logger = logging.getLogger("retinakit.infer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=".pth (with --config-file), .onnx, .plan or .engine")
    p.add_argument("--config-file", default="", help="config of a .pth checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of images")
    src.add_argument("--video", help="video file (needs torchvision's video reader / PyAV)")
    p.add_argument("--output", required=True, help="COCO results JSON to write")
    p.add_argument("--visualize", default="", help="folder for PNGs with drawn detections")
    p.add_argument("--annotations", default="", help="COCO JSON of the images: ids and COCO evaluation")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--score-thresh", type=float, default=0.3, help="minimum score drawn by --visualize")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for a .pth model")
    return p.parse_args(argv)


class UserError(Exception):
    """Bad arguments or inputs: one message, exit code 2."""


def image_items(args: argparse.Namespace) -> tuple[list[tuple[Any, Any, str]], Any | None]:
    """``[(image id, source, name)]`` and the validation set (with --annotations)."""
    from retinakit.export import list_images
    from retinakit.export.verify import load_valset

    if args.annotations:
        val = load_valset(args.images, args.annotations)
        return [(i, f, os.path.basename(f)) for i, f in zip(val.image_ids, val.files)], val
    files = list_images(args.images)
    return [(k + 1, f, os.path.relpath(f, args.images)) for k, f in enumerate(files)], None


def video_frames(path: str) -> Iterator[tuple[int, Any, str]]:
    """``(frame index, HWC uint8 RGB array, name)`` of a video file."""
    if not os.path.isfile(path):
        raise UserError(f"Video file '{path}' does not exist.")
    try:
        import av
    except ImportError:
        raise UserError("Reading videos needs PyAV: pip install av.") from None
    import av

    with av.open(path) as container:
        for i, frame in enumerate(container.decode(video=0)):
            yield i, frame.to_ndarray(format="rgb24"), f"frame_{i:06d}.png"


def _batches(items: Any, n: int) -> Iterator[list]:
    batch: list = []
    for it in items:
        batch.append(it)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def draw(image: Any, inst: Any, names: list[str] | None, score_thresh: float, out_path: str) -> None:
    """Write ``image`` (path or HWC RGB array) with boxes of ``inst`` above ``score_thresh`` as PNG."""
    import numpy as np
    from PIL import Image, ImageDraw

    from retinakit.data import read_image

    arr = read_image(image, "RGB") if isinstance(image, str) else np.asarray(image)
    im = Image.fromarray(arr)
    d = ImageDraw.Draw(im)
    for (x0, y0, x1, y1), s, c in zip(inst.pred_boxes.tensor.tolist(), inst.scores.tolist(), inst.pred_classes.tolist()):
        if s < score_thresh:
            continue
        d.rectangle([x0, y0, x1, y1], outline=(255, 64, 0), width=2)
        label = names[c] if names and c < len(names) else str(c)
        d.text((x0 + 2, y0 + 1), f"{label} {s:.2f}", fill=(255, 255, 0))
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    im.save(out_path)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from retinakit.export import load_predictor
    from retinakit.export.verify import coco_ap

    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1.")
    predictor = load_predictor(args.model, config_file=args.config_file or None, opts=args.opts, device=args.device)
    val = None
    if args.images:
        items, val = image_items(args)
        total: int | None = len(items)
    else:
        items, total = video_frames(args.video), None
    to_cat = val.to_dataset_id if val else None
    names = predictor.class_names
    rows, all_dets = [], []
    with tqdm(total=total, unit="img", desc="inference") as bar:
        for batch in _batches(items, args.batch_size):
            dets = predictor([src for _, src, _ in batch])
            for (img_id, src, name), inst in zip(batch, dets):
                all_dets.append(inst)
                for (x0, y0, x1, y1), s, c in zip(inst.pred_boxes.tensor.tolist(), inst.scores.tolist(), inst.pred_classes.tolist()):
                    cat = to_cat[c] if to_cat else c + 1
                    rows.append({"image_id": img_id, "category_id": cat, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": s})
                if args.visualize:
                    draw(src, inst, names, args.score_thresh, os.path.join(args.visualize, os.path.splitext(name)[0] + ".png"))
            bar.update(len(batch))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(rows, f)
    print(f"wrote {len(rows)} detections of {len(all_dets)} images to {args.output}")
    if val is not None:
        print(f"COCO box AP: {coco_ap(all_dets, val):.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    from retinakit.config import ConfigError
    from retinakit.data.errors import BadImageError, DatasetError
    from retinakit.export import (
        CalibrationError,
        MissingDependencyError,
        PredictorError,
    )

    try:
        return run(args)
    except (UserError, ConfigError, DatasetError, BadImageError, CalibrationError, MissingDependencyError, PredictorError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
