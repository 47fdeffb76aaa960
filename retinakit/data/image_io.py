"""Reading images: EXIF orientation applied; grayscale, palette, RGBA, CMYK, 16-bit -> 8-bit RGB."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadImageError

__all__ = ["EXIF_ORIENTATION_TAG", "image_size", "read_image", "to_rgb_array"]

EXIF_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # transpose / rotate 90 / transverse / rotate 270


def _where(file_name: str, context: str) -> str:
    return f"Image {file_name}" + (f" ({context})" if context else "")


def _open(file_name: str, context: str) -> Image.Image:
    if not os.path.isfile(file_name):
        raise BadImageError(
            f"{_where(file_name, context)} does not exist. Check the image root directory and the "
            "'file_name' entry in the JSON, or remove the image from the JSON."
        )
    try:
        return Image.open(file_name)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise BadImageError(
            f"{_where(file_name, context)} cannot be read as an image: {e}. "
            "Replace the file with a valid image or remove it from the JSON."
        ) from e


def image_size(file_name: str, context: str = "") -> tuple[int, int]:
    """``(height, width)`` from the file header only (no decoding), after EXIF orientation."""
    with _open(file_name, context) as img:
        w, h = img.size
        try:
            orientation = img.getexif().get(EXIF_ORIENTATION_TAG, 1)
        except Exception:  # noqa: BLE001 - a broken EXIF block of any kind: the decoder ignores it too
            orientation = 1
    return (w, h) if orientation in _SWAPPING_ORIENTATIONS else (h, w)


def _sixteen_bit_to_uint8(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float64)
    if img.mode in ("F",):
        top = max(float(arr.max()), 1.0) if arr.size else 1.0
        scale = 255.0 / top if top > 255 else (255.0 if top <= 1.0 else 1.0)
    else:
        scale = 255.0 / 65535.0 if (arr.size and arr.max() > 255) else 1.0
    return np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """A PIL image of any mode -> ``uint8 [H, W, 3]`` RGB array.

    16-bit/32-bit grayscale is scaled to 0-255 (not clipped); alpha is dropped;
    palette images are expanded; CMYK/YCbCr/LAB converted.
    """
    if img.mode == "RGB":
        return np.array(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        gray = _sixteen_bit_to_uint8(img)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return np.array(img.convert("RGB"))


def read_image(file_name: str, format: str = "RGB", context: str = "") -> np.ndarray:
    """Decode ``file_name`` into a ``uint8 [H, W, 3]`` array in ``format`` ("RGB" or "BGR").

    EXIF orientation is applied. A missing, unreadable, truncated or corrupt file raises
    :class:`BadImageError` naming the file and ``context`` (e.g. "image id 7 of train.json").
    """
    if format not in ("RGB", "BGR"):
        raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {format!r}.")
    img = _open(file_name, context)
    try:
        with img:
            img.load()
            img = ImageOps.exif_transpose(img) or img
            arr = to_rgb_array(img)
    except BadImageError:
        raise
    except Exception as e:  # truncated data, decoder errors, bad EXIF ...
        raise BadImageError(
            f"{_where(file_name, context)} is truncated or corrupt ({type(e).__name__}: {e}). "
            "Re-export or re-download the file, or remove it from the JSON."
        ) from e
    if format == "BGR":
        arr = arr[:, :, ::-1]
    return np.ascontiguousarray(arr)
