"""Batching mapped images into an ``ImageList`` (what the model does with a loader's batch)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..structures import ImageList

__all__ = ["batch_images"]


def batch_images(
    batch: Sequence[Any], size_divisibility: int = 0, pad_value: float = 0.0, dtype: torch.dtype | None = None
) -> ImageList:
    """``list[dict]`` from a loader (or ``[3, H_i, W_i]`` tensors) -> ``ImageList``
    ``[N, 3, H, W]`` padded at the bottom/right, ``H``/``W`` rounded up to a multiple of
    ``size_divisibility`` (the backbone's, e.g. 32 for FPN P3-P5, 128 with P7).
    ``dtype`` converts the images (e.g. ``torch.float32``); normalisation is not applied."""
    images = [b["image"] if isinstance(b, dict) else b for b in batch]
    if dtype is not None:
        images = [im.to(dtype) for im in images]
    return ImageList.from_tensors(images, size_divisibility, pad_value)
