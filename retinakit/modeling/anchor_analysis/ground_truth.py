"""Ground-truth boxes of a dataset as the anchors see them: resized like the data pipeline,
with the padded input size of their image."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["GroundTruth", "collect_ground_truth"]


@dataclass
class GroundTruth:
    """Non-crowd GT boxes after resizing, with the padded input size of their image.

    ``boxes [G, 4]`` XYXY float32 in resized-image pixels; ``padded_hw [G, 2]`` int64.
    """

    boxes: torch.Tensor
    padded_hw: torch.Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def _short_sizes(cfg: Any, mode: str) -> tuple[list[int], int]:
    if mode == "test":
        return [int(cfg.INPUT.MIN_SIZE_TEST)], int(cfg.INPUT.MAX_SIZE_TEST)
    if mode != "train":
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}.")
    sizes = [int(s) for s in cfg.INPUT.MIN_SIZE_TRAIN]
    if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range" and len(sizes) == 2:
        sizes = sorted({sizes[0], (sizes[0] + sizes[1]) // 2, sizes[1]})
    return sizes, int(cfg.INPUT.MAX_SIZE_TRAIN)


def _resized_hw(h: int, w: int, short: int, max_size: int, in_model: bool) -> tuple[int, int]:
    """Output size of the data pipeline's resize, or of the model's (``INPUT.RESIZE_IN_MODEL``)."""
    if short <= 0:
        return h, w
    if not in_model:
        from ...data.transforms import resized_shape

        return resized_shape(h, w, short, max_size)
    scale = min(short / min(h, w), max_size / max(h, w))
    if math.isclose(scale, 1.0):
        return h, w
    return math.floor(h * scale), math.floor(w * scale)


def collect_ground_truth(
    cfg: Any, dataset_dicts: Sequence[dict[str, Any]], size_divisibility: int, *, mode: str = "train",
    max_images: int | None = None, seed: int = 0,
) -> GroundTruth:
    """GT boxes of ``dataset_dicts`` (XYXY, ``iscrowd`` left out) at every input size of ``mode``.

    ``mode="train"``: each image once per ``INPUT.MIN_SIZE_TRAIN`` choice (low/middle/high
    for "range" sampling); ``"test"``: at ``MIN_SIZE_TEST``. Flips are ignored. With
    ``max_images`` a fixed random subset (``seed``) of the images is used.
    """
    dicts = list(dataset_dicts)
    if max_images is not None and 0 < max_images < len(dicts):
        idx = torch.randperm(len(dicts), generator=torch.Generator().manual_seed(seed))[:max_images]
        dicts = [dicts[i] for i in sorted(idx.tolist())]
    shorts, max_size = _short_sizes(cfg, mode)
    d = max(int(size_divisibility), 1)
    boxes, padded = [], []
    for rec in dicts:
        h, w = rec.get("height"), rec.get("width")
        if not h or not w:
            raise ValueError(f"Dataset dict of image {rec.get('image_id', '?')} has no height/width; load it with retinakit.data.")
        annos = [a for a in rec.get("annotations", []) if not a.get("iscrowd", 0)]
        if not annos:
            continue
        b = torch.tensor([a["bbox"] for a in annos], dtype=torch.float64).reshape(-1, 4)
        for short in shorts:
            oh, ow = _resized_hw(int(h), int(w), short, max_size, bool(cfg.INPUT.RESIZE_IN_MODEL))
            r = b * torch.tensor([ow / w, oh / h, ow / w, oh / h], dtype=torch.float64)
            r[:, 0::2] = r[:, 0::2].clamp(0, ow)
            r[:, 1::2] = r[:, 1::2].clamp(0, oh)
            r = r[(r[:, 2] > r[:, 0]) & (r[:, 3] > r[:, 1])]
            boxes.append(r.float())
            padded.append(torch.tensor([[-(-oh // d) * d, -(-ow // d) * d]], dtype=torch.int64).expand(len(r), 2))
    if not boxes:
        return GroundTruth(torch.zeros(0, 4), torch.zeros(0, 2, dtype=torch.int64))
    return GroundTruth(torch.cat(boxes), torch.cat(padded))
