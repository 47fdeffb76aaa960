"""Calibration images for INT8: found in a folder, prepared with the inference preprocessing.

The images go through :func:`retinakit.data.build_inference_preprocess` (the resize the test
loader and every predictor use) and are padded bottom/right into one canvas whose size is a
multiple of the backbone's size divisibility, exactly as predictors feed the exported graph.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from ..utils.errors import UserInputError

__all__ = ["IMAGE_EXTENSIONS", "CalibrationError", "calibration_arrays", "list_images", "pad_batch"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class CalibrationError(ValueError, UserInputError):
    """Calibration cannot run (no images, unreadable image, ...)."""


def list_images(folder: str) -> list[str]:
    """Sorted image files (by extension) in ``folder`` (recursive); errors when there are none."""
    if not folder or not os.path.isdir(folder):
        raise CalibrationError(f"Image folder '{folder}' does not exist or is not a directory.")
    files, skipped = [], 0
    for root, _, names in os.walk(folder):
        for n in names:
            if n.lower().endswith(IMAGE_EXTENSIONS):
                files.append(os.path.join(root, n))
            else:
                skipped += 1
    if skipped:
        logger.warning(f"Ignored {skipped} file(s) in '{folder}' that are not images ({', '.join(IMAGE_EXTENSIONS)}).")
    if not files:
        raise CalibrationError(
            f"No images found in '{folder}' (looked for {', '.join(IMAGE_EXTENSIONS)}). "
            "Give a folder of representative images from the deployment domain."
        )
    return sorted(files)


def pad_batch(tensors: list[torch.Tensor], divisibility: int) -> tuple[np.ndarray, np.ndarray]:
    """``uint8 [3, h_i, w_i]`` list -> ``images [N, 3, H, W]`` float32 (zero padded), ``sizes [N, 2]`` float32."""
    div = max(1, int(divisibility))
    h = max(int(t.shape[1]) for t in tensors)
    w = max(int(t.shape[2]) for t in tensors)
    h, w = -(-h // div) * div, -(-w // div) * div
    out = np.zeros((len(tensors), 3, h, w), dtype=np.float32)
    sizes = np.zeros((len(tensors), 2), dtype=np.float32)
    for i, t in enumerate(tensors):
        out[i, :, : t.shape[1], : t.shape[2]] = t.numpy()
        sizes[i] = (t.shape[1], t.shape[2])
    return out, sizes


def calibration_arrays(cfg: Any, folder: str, num_images: int, divisibility: int) -> dict[str, np.ndarray]:
    """Inputs of the exported graph for ``num_images`` images of ``folder`` (evenly spaced if more).

    Returns ``{"images": [N, 3, H, W] float32, "image_sizes": [N, 2] float32}``.
    """
    from ..data import build_inference_preprocess

    files = list_images(folder)
    if num_images > 0 and len(files) > num_images:
        idx = np.linspace(0, len(files) - 1, num_images).round().astype(int)
        files = [files[i] for i in idx]
    pre = build_inference_preprocess(cfg)
    tensors = []
    for f in files:
        try:
            tensors.append(pre(f)[0])
        except Exception as e:  # noqa: BLE001 - reported with the file name
            raise CalibrationError(f"Cannot read calibration image '{f}': {e}") from None
    images, sizes = pad_batch(tensors, divisibility)
    logger.info(f"Calibration: {len(files)} images from '{folder}', canvas {images.shape[2]}x{images.shape[3]}.")
    return {"images": images, "image_sizes": sizes}
